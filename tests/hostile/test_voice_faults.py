"""Natural faults during speech, with real audio (issue 12, item 6): edgebotd killed while an answer
is being spoken, and speech-out killed while it speaks. PulseAudio null sinks, piper, vosk, espeak-ng
(tests/voice_harness.py); every wait is on a bus event or on sound/silence at the speaker's monitor."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Daemon
from voice_harness import (MIC_ENV, SPEAKER_ENV, SPEECH_IN, SPEECH_OUT, SPEECH_OUT_CONFIG, BridgeProc, PulseServer,
                           Recorder, collect, espeak_wav, speech_in_config, wait_device_ready, watcher)

pytestmark = pytest.mark.timeout(240)

LONG_SAY = ("This is a long announcement that keeps the robot talking for many seconds, so that something "
            "can go wrong while it is still speaking to the class, and then it goes on and on a little more.")


@pytest.fixture(scope="module")
def speaker(pulse: PulseServer) -> Iterator[Recorder]:
    rec = Recorder(pulse, "speaker.monitor")
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory, pulse: PulseServer) -> Path:
    tmp = tmp_path_factory.mktemp("sounds")
    wav = espeak_wav("하나 더하기 둘은", tmp / "question.wav")
    out = tmp / "question-padded.wav"
    subprocess.run(["sox", str(wav), str(out), "pad", "0", "1.0"], check=True, timeout=30)
    return out


@pytest.mark.parametrize("how", ["kill-9", "sigterm"])
def test_edgebotd_killed_mid_answer_stops_the_speech_and_the_next_say_is_spoken(
        tmp_path: Path, slow_loop_model: Path, script_model: Path, pulse: PulseServer, speaker: Recorder,
        how: str) -> None:
    """kill -9 (a crash, the OOM killer) or SIGTERM (`systemctl restart`, a watchdog restart) of
    edgebotd while speech-out speaks a never-ending answer: the sound stops at once (the answer is
    dead), and after edgebotd is back the robot speaks again."""
    sock = str(tmp_path / "bus.sock")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "out").mkdir()
    first = Daemon(tmp_path / "a", slow_loop_model, socket_path=sock)
    second = None
    bus = watcher(first, "audio-device", "speaking", "answer-end")
    out = BridgeProc(SPEECH_OUT, first, pulse, tmp_path / "out", SPEECH_OUT_CONFIG, env=SPEAKER_ENV)
    try:
        wait_device_ready(bus, "speech-out", out)
        client = first.connect()
        t0 = time.monotonic()
        client.ask("long-1", "Talk for a long time.", speak=True, max_tokens=4000)
        try:
            bus.expect("speaking", timeout=60, id="long-1", state="start")
        except TimeoutError:
            raise AssertionError(f"nothing was spoken; speech-out's log:\n{out.log_text()[-3000:]}") from None
        t_sound = speaker.wait_sound(t0)
        assert speaker.wait_sound(t_sound + 0.3) < t_sound + 1.5  # really talking
        t_kill = time.monotonic()
        if how == "kill-9":
            first.proc.kill()
        else:  # edgebotd first ends the answer as cancelled (how long that takes is the engine's part)
            first.proc.terminate()
            assert bus.expect("answer-end", timeout=20, id="long-1")["data"]["reason"] == "cancelled"
            t_kill = time.monotonic()
        first.proc.wait(20)
        t_last = speaker.wait_quiet(t_kill, hold_s=1.0, timeout=20)
        print(f"edgebotd {how} -> silence: {1000 * (t_last - t_kill):.0f} ms")
        assert t_last - t_kill < 1.0, f"the dead answer was still spoken {t_last - t_kill:.1f} s after the kill"
        second = Daemon(tmp_path / "b", script_model, socket_path=sock)
        bus2 = watcher(second, "speaking")
        talker = second.connect()
        deadline = time.monotonic() + 30
        while True:  # until speech-out has reconnected (its backoff is at most 5 s): `say` is acked
            t1 = time.monotonic()
            talker.send("say", text="I am back.", id="back-1")
            reply = talker.recv(10)
            assert reply is not None
            if reply["type"] == "ack":
                break
            assert reply["data"]["code"] == "not-found" and time.monotonic() < deadline, reply
            time.sleep(0.2)  # pacing between tries, not a wait for the event
        bus2.expect("speaking", timeout=30, id="back-1", state="start")
        bus2.expect("speaking", timeout=30, id="back-1", state="stop")
        assert speaker.loud_times(t1), "the robot stayed silent after edgebotd came back"
    finally:
        bus.close()
        code = out.stop()
        first.stop()  # the daemons stop even when speech-out did not exit cleanly
        if second is not None:
            second.stop()
        assert code == 0, out.log_text()[-2000:]


def test_speech_out_killed_while_speaking_leaves_speech_in_listening(
        tmp_path: Path, daemon: Daemon, pulse: PulseServer, speaker: Recorder, question: Path) -> None:
    """speech-in mutes itself while speech-out speaks; kill -9 of speech-out mid-sentence must not
    leave it muted: the next spoken question is heard."""
    (tmp_path / "out").mkdir()
    (tmp_path / "in").mkdir()
    bus = watcher(daemon, "audio-device", "heard", "speaking")
    out = BridgeProc(SPEECH_OUT, daemon, pulse, tmp_path / "out", SPEECH_OUT_CONFIG, env=SPEAKER_ENV)
    inp = BridgeProc(SPEECH_IN, daemon, pulse, tmp_path / "in", speech_in_config("always"), env=MIC_ENV)
    try:
        ready: set[str] = set()
        collect(bus, lambda ev: ev["type"] == "audio-device" and ev["data"]["state"] == "ready"
                and (ready.add(ev["data"]["bridge"]) or ready == {"speech-in", "speech-out"}), timeout=60)
        talker = daemon.connect()
        talker.send("say", text=LONG_SAY, id="long-say")
        talker.expect("ack")
        bus.expect("speaking", timeout=30, id="long-say", state="start")
        out.proc.send_signal(signal.SIGKILL)
        assert out.proc.wait(10) == -signal.SIGKILL
        assert bus.expect("speaking", timeout=10, id="long-say")["data"]["state"] == "stop"  # from edgebotd
        pulse.play(question)
        heard = bus.expect("heard", timeout=30, final=True)["data"]
        assert heard["text"], heard
    finally:
        bus.close()
        out.stop()
        assert inp.stop() == 0, inp.log_text()[-2000:]


def test_a_say_reusing_the_id_of_an_answer_being_spoken_wedges_nothing(
        tmp_path: Path, slow_loop_model: Path, pulse: PulseServer, speaker: Recorder) -> None:
    """Item 10: `say {id}` with the id of the answer speech-out is speaking is refused, and the robot
    goes on speaking what comes next."""
    d = Daemon(tmp_path, slow_loop_model)
    (tmp_path / "out").mkdir()
    bus = watcher(d, "audio-device", "speaking")
    out = BridgeProc(SPEECH_OUT, d, pulse, tmp_path / "out", SPEECH_OUT_CONFIG, env=SPEAKER_ENV)
    try:
        wait_device_ready(bus, "speech-out", out)
        client = d.connect()
        client.ask("long-1", "Talk for a long time.", speak=True, max_tokens=4000)
        bus.expect("speaking", timeout=60, id="long-1", state="start")
        client.send("say", text="Hijacked.", id="long-1")
        assert client.expect("error")["data"]["code"] == "duplicate-id"
        client.send("cancel", id="long-1")
        bus.expect("speaking", timeout=10, id="long-1", state="stop")
        t1 = time.monotonic()
        client.send("say", text="Still here.", id="after-1")
        bus.expect("speaking", timeout=30, id="after-1", state="start")
        bus.expect("speaking", timeout=30, id="after-1", state="stop")
        assert speaker.loud_times(t1)
    finally:
        bus.close()
        code = out.stop()
        d.stop()
        assert code == 0, out.log_text()[-2000:]
