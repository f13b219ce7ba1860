"""The bus codec: every message type round-trips; every kind of bad line is a typed error."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebot.bus import codec
from edgebot.bus import messages as m

SAMPLES: dict[str, m.Message] = {
    "hello": m.Hello(client="edgebot-cli", version="0.1.0", role="cli"),
    "welcome": m.Welcome(server_version="0.1.0", model="/m.gguf", session_defaults={"max_tokens": 5}),
    "ask": m.Ask(id="a1", text="什么是 2+2? <｜User｜>", session="cli:x", source="serial:ttyUSB0", speak=True,
                 think="show", max_tokens=64, think_budget=32),
    "answer-start": m.AnswerStart(id="a1", session="voice", source="voice", speak=True),
    "think-delta": m.ThinkDelta(id="a1", text="hmm"),
    "answer-delta": m.AnswerDelta(id="a1", text="四"),
    "answer-end": m.AnswerEnd(id="a1", reason="length", stats={"prompt_tokens": 3}, message="ran out"),
    "cancel": m.Cancel(session="voice"),
    "say": m.Say(text="Hello there.", id="s1"),
    "heard": m.Heard(text="안녕하세요", final=True, id="voice-1", end_of_speech=1234.5, transcript_ms=512.0),
    "listen": m.Listen(window_s=5.0),
    "audio-device": m.AudioDevice(bridge="speech-in", state="missing", device="USB",
                                  message="no input device matches 'USB'"),
    "voice-latency": m.VoiceLatency(id="voice-1", text="안녕", transcript_ms=512.0, first_token_ms=560.5,
                                    first_sentence_ms=640.0, first_audio_ms=700.2),
    "speaking": m.Speaking(state="start", id="a1"),
    "action-run": m.ActionRun(id="act-1", port="/dev/ttyUSB0", name="led", args={"state": "on"}),
    "action-result": m.ActionResult(id="act-1", ok=True, text="LED on"),
    "action": m.Action(id="act-1", name="led", args={"state": "on"}, result="ok", text="LED on", path="phrase",
                       ask="cli-1", source="cli"),
    "subscribe": m.Subscribe(types=["answer-delta", "say"]),
    "status": m.Status(),
    "status-report": m.StatusReport(server_version="0.1.0", model="m", state="ready", queue={"waiting": 0},
                                    sessions=[{"name": "voice"}], last_tokens_per_s=8.5, memory={"rss_mb": 1.0},
                                    temperature_c=51.2, clients=3, voice_latency={"first_audio_ms": 700.2}),
    "ping": m.Ping(id="p"),
    "pong": m.Pong(id="p"),
    "ack": m.Ack(of="say", delivered=1),
    "error": m.Error(code="busy", message="full", id="a1"),
    "serial-port": m.SerialPort(port="/dev/serial/by-id/usb-Arduino_Uno-if00", state="ready", firmware="uno-1.0",
                                message="board said HELLO"),
}


def test_every_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(m.BY_TYPE)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name: str) -> None:
    msg = SAMPLES[name]
    line = codec.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    envelope = json.loads(line)
    assert envelope["type"] == name and set(envelope) == {"type", "data"}
    assert codec.decode(line) == msg


@pytest.mark.parametrize("line, code", [
    (b"not json\n", "bad-json"),
    (b"\xff\xfe garbage \x00\n", "bad-json"),
    (b"[1, 2]\n", "bad-envelope"),
    (b'{"data": {}}\n', "bad-envelope"),
    (b'{"type": "ask", "data": []}\n', "bad-envelope"),
    (b'{"type": "ask", "data": {}, "extra": 1}\n', "bad-envelope"),
    (b'{"type": "teleport", "data": {}}\n', "unknown-type"),
    (b'{"type": "ask", "data": {"id": "x"}}\n', "bad-field"),
    (b'{"type": "ask", "data": {"id": "x", "text": 5}}\n', "bad-field"),
    (b'{"type": "ask", "data": {"id": "x", "text": "t", "think": "loud"}}\n', "bad-field"),
    (b'{"type": "ask", "data": {"id": "x", "text": "t", "max_tokens": true}}\n', "bad-field"),
    (b'{"type": "ask", "data": {"id": "x", "text": "t", "colour": "red"}}\n', "bad-field"),
    (b'{"type": "subscribe", "data": {"types": ["a", 3]}}\n', "bad-field"),
])
def test_bad_lines_are_typed_errors(line: bytes, code: str) -> None:
    with pytest.raises(codec.ProtocolError) as err:
        codec.decode(line)
    assert err.value.code == code and err.value.message


def test_error_names_the_ask_id_when_it_can() -> None:
    with pytest.raises(codec.ProtocolError) as err:
        codec.decode(b'{"type": "ask", "data": {"id": "q7", "text": 1}}')
    assert err.value.msg_id == "q7" and "'text' must be a string" in err.value.message


def test_int_is_accepted_where_a_float_is_expected() -> None:
    msg = codec.decode(b'{"type":"status-report","data":{"server_version":"1","model":"m","state":"ready",'
                       b'"last_tokens_per_s":8}}')
    assert isinstance(msg, m.StatusReport) and msg.last_tokens_per_s == 8.0


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    try:
        msg = codec.decode(data)
    except codec.ProtocolError as exc:
        assert exc.code in m.ERROR_CODES
    else:
        assert isinstance(msg, m.Message)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(sorted(m.BY_TYPE)), st.dictionaries(st.sampled_from(["id", "text", "session", "source",
                                                                           "speak", "think", "types", "state",
                                                                           "code", "message", "x"]), json_values))
def test_envelopes_with_random_fields_decode_or_fail_cleanly(type_name: str, data: dict) -> None:
    line = json.dumps({"type": type_name, "data": data}).encode()
    try:
        msg = codec.decode(line)
    except codec.ProtocolError as exc:
        assert exc.code in ("bad-field",)
    else:
        assert codec.decode(codec.encode(msg)) == msg
        assert {f.name for f in dataclasses.fields(msg)} >= set(data)
