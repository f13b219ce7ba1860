"""The microphone vanishing while edgebot-speech-in runs, and coming back (the speaker's case is
tests/test_speech_out.py::test_the_speaker_vanishing_and_coming_back; the serial port's,
tests/test_serial_bridge.py::test_unplug_ends_the_question_as_cancelled_and_replug_resumes).
Real PulseAudio with a null-sink microphone, real vosk and Silero VAD, a real edgebotd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import Daemon
from voice_harness import MIC_ENV, SPEECH_IN, BridgeProc, PulseServer, collect, speech_in_config, wait_device_ready, \
    watcher
from test_speech_in import sounds  # noqa: F401 - the spoken question, as a fixture


def test_the_microphone_vanishing_and_coming_back(daemon: Daemon, pulse: PulseServer, tmp_path: Path,
                                                  sounds: dict[str, Path]) -> None:  # noqa: F811
    """Its own PulseAudio server, stopped under the running bridge and started again."""
    (tmp_path / "pa").mkdir()
    server = PulseServer(tmp_path / "pa")
    bus = watcher(daemon, "audio-device", "heard", "answer-start")
    proc = BridgeProc(SPEECH_IN, daemon, server, tmp_path, speech_in_config(extra="device_retry_max_s = 1.0\n"),
                      env=MIC_ENV)
    try:
        wait_device_ready(bus, "speech-in", proc, timeout=90)
        server.stop()
        missing = bus.expect("audio-device", timeout=30, state="missing")["data"]
        assert missing["bridge"] == "speech-in" and missing["message"]
        assert proc.proc.poll() is None  # the bridge stays up and retries
        server = PulseServer(tmp_path / "pa")
        wait_device_ready(bus, "speech-in", proc, timeout=60)
        server.play(sounds["question"])
        events = collect(bus, lambda ev: ev["type"] == "heard" and ev["data"]["final"], 60)
        heard: Any = events[-1]["data"]
        assert heard["text"].strip()
        bus.expect("answer-start", timeout=30, id=heard["id"])
    finally:
        bus.close()
        code = proc.stop()
        server.stop()
    assert code == 0, proc.log_text()[-2000:]
