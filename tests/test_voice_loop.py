"""The whole voice loop with real parts: espeak-ng speech into the "mic" null sink -> edgebot-speech-in
-> edgebotd (script model) -> edgebot-speech-out -> the "speaker" null sink; per-turn latencies and
barge-in."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Daemon
from voice_harness import (MIC_ENV, SPEAKER_ENV, SPEECH_IN, SPEECH_OUT, SPEECH_OUT_CONFIG, BridgeProc, PulseServer,
                           Recorder, collect, espeak_wav, speech_in_config, watcher)

pytestmark = pytest.mark.timeout(180)

LONG_SAY = ("This is a long announcement that keeps the robot talking for several seconds, so that "
            "somebody can interrupt it while it is still speaking to the class.")


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory, pulse: PulseServer) -> Path:
    tmp = tmp_path_factory.mktemp("sounds")
    wav = espeak_wav("하나 더하기 둘은", tmp / "question.wav")
    out = tmp / "question-padded.wav"
    subprocess.run(["sox", str(wav), str(out), "pad", "0", "1.0"], check=True, timeout=30)
    return out


class Robot:
    """speech-in + speech-out on one edgebotd, and a watcher of everything they say."""

    def __init__(self, daemon: Daemon, pulse: PulseServer, tmp: Path, barge_in: bool) -> None:
        self.bus = watcher(daemon, "audio-device", "heard", "answer-start", "answer-end", "speaking", "cancel",
                           "voice-latency")
        (tmp / "out").mkdir()
        (tmp / "in").mkdir()
        self.out = BridgeProc(SPEECH_OUT, daemon, pulse, tmp / "out", SPEECH_OUT_CONFIG, env=SPEAKER_ENV)
        self.inp = BridgeProc(SPEECH_IN, daemon, pulse, tmp / "in", speech_in_config("always", barge_in),
                              env=MIC_ENV)
        ready: set[str] = set()
        try:
            collect(self.bus, lambda ev: ev["type"] == "audio-device" and ev["data"]["state"] == "ready"
                    and (ready.add(ev["data"]["bridge"]) or ready == {"speech-in", "speech-out"}), timeout=60)
        except BaseException:
            self._stop()
            raise

    def _stop(self) -> list[int]:
        self.bus.close()
        return [proc.stop() for proc in (self.inp, self.out)]

    def stop(self) -> None:
        """Stop both bridges (again is fine); each must exit cleanly on SIGTERM."""
        codes = self._stop()
        assert codes == [0, 0], (codes, self.inp.log_text()[-1500:], self.out.log_text()[-1500:])


@pytest.fixture(scope="module")
def speaker(pulse: PulseServer) -> Iterator[Recorder]:
    rec = Recorder(pulse, "speaker.monitor")
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def robot(daemon: Daemon, pulse: PulseServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Robot]:
    r = Robot(daemon, pulse, tmp_path_factory.mktemp("robot"), barge_in=False)
    yield r
    r.stop()


def test_speech_in_answer_out_with_per_turn_latencies(robot: Robot, pulse: PulseServer, daemon: Daemon,
                                                      question: Path, speaker: Recorder) -> None:
    _, t_played = pulse.play(question)
    events = collect(robot.bus, lambda ev: ev["type"] == "voice-latency", timeout=30)
    heard = next(e["data"] for e in events if e["type"] == "heard" and e["data"]["final"])
    start = next(e["data"] for e in events if e["type"] == "answer-start")
    assert heard["text"] and start["id"] == heard["id"] and start["source"] == "voice"
    assert any(e["type"] == "speaking" and e["data"]["state"] == "start" for e in events)
    lat = events[-1]["data"]
    assert lat["id"] == heard["id"] and lat["text"] == heard["text"]
    order = [lat["transcript_ms"], lat["first_token_ms"], lat["first_sentence_ms"], lat["first_audio_ms"]]
    assert 0 < order[0] <= order[1] <= order[2] <= order[3] < 5000, lat
    t_sound = speaker.wait_sound(t_played - 2.0)
    assert t_sound > heard["end_of_speech"]  # the answer's audio, after the question
    print(f"voice turn: {lat}; sound on the speaker monitor {1000 * (t_sound - heard['end_of_speech']):.0f} ms "
          f"after the end of speech")
    robot.bus.expect("speaking", id=heard["id"], state="stop")
    client = daemon.connect()
    client.send("status")
    report = client.expect("status-report")["data"]
    assert report["voice_latency"]["id"] == heard["id"]
    assert report["voice_latency"]["first_audio_ms"] == lat["first_audio_ms"]


def test_without_barge_in_speech_during_an_answer_is_ignored(robot: Robot, pulse: PulseServer, daemon: Daemon,
                                                             question: Path) -> None:
    client = daemon.connect()
    client.send("say", text=LONG_SAY, id="announce-1")
    robot.bus.expect("speaking", id="announce-1", state="start")
    t_played, _ = pulse.play(question)  # while it speaks
    events = collect(robot.bus, lambda ev: ev["type"] == "speaking" and ev["data"]["state"] == "stop", timeout=60)
    assert events[-1]["data"]["id"] == "announce-1"  # it finished: nobody cancelled it
    assert not [e for e in events if e["type"] in ("cancel", "answer-start")
                or (e["type"] == "heard" and e["data"]["final"])], events
    t_again, _ = pulse.play(question)  # after the answer, the microphone is live again
    heard = robot.bus.expect("heard", final=True)["data"]
    assert heard["end_of_speech"] > t_again > t_played


def test_barge_in_cancels_the_answer_and_asks_the_new_question(daemon: Daemon, pulse: PulseServer, question: Path,
                                                               speaker: Recorder, tmp_path: Path,
                                                               robot: Robot) -> None:
    robot.stop()  # one microphone, one listener: this test's robot barges in
    barging = Robot(daemon, pulse, tmp_path, barge_in=True)
    try:
        client = daemon.connect()
        client.send("say", text=LONG_SAY, id="announce-2")
        barging.bus.expect("speaking", id="announce-2", state="start")
        t_played, _ = pulse.play(question)
        events = collect(barging.bus, lambda ev: ev["type"] == "answer-start", timeout=30)
        cancel = next(e for e in events if e["type"] == "cancel")
        assert cancel["data"]["id"] == "announce-2"
        stop = next(e for e in events if e["type"] == "speaking" and e["data"]["state"] == "stop")
        assert stop["data"]["id"] == "announce-2" and events.index(cancel) < events.index(stop)
        heard = next(e["data"] for e in events if e["type"] == "heard" and e["data"]["final"])
        assert heard["text"] and events[-1]["data"]["id"] == heard["id"]  # the interruption became the question
        assert heard["end_of_speech"] > t_played
    finally:
        barging.stop()
