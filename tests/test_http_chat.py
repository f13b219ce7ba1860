"""Pure parts of the HTTP layer: OpenAI messages to a conversation, request validation, and stop
strings on a streamed answer split at every possible place."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgebot.engine.prompt import Turn
from edgebot.engine.stops import StopMatcher
from edgebot.http.chat import ApiError, chunk, parse_chat


def test_messages_become_turns_with_system_first_and_thinking_dropped() -> None:
    req = parse_chat({"model": "m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "<think>they greet</think>\n\nHello!"},
        {"role": "user", "content": "2+2?"}, {"role": "user", "content": "Quickly."}]}, 1000, 4096)
    assert req.history == [Turn("Be brief.\n\nHi\nthere", "Hello!")]
    assert req.question == "2+2?\n\nQuickly."
    only = parse_chat({"messages": [{"role": "developer", "content": "Sys"}, {"role": "user", "content": "Q"}]},
                      1000, 4096)
    assert (only.history, only.question) == ([], "Sys\n\nQ")


def test_parameters_and_response_format() -> None:
    req = parse_chat({"messages": [{"role": "user", "content": "Q"}], "temperature": 0, "top_p": 0.5, "seed": -1,
                      "max_completion_tokens": 9, "stop": "END", "stream": True,
                      "stream_options": {"include_usage": True},
                      "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "integer"}}}},
                     1000, 4096)
    assert req.overrides() == {"temperature": 0.0, "top_p": 0.5, "seed": 2**31 - 1, "json_schema": '{"type": "integer"}'}
    assert (req.max_tokens, req.stop, req.stream, req.include_usage) == (9, ("END",), True, True)
    assert parse_chat({"messages": [{"role": "user", "content": "Q"}]}, 10, 4096).overrides() == {}


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "Q"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "Q"}], "max_tokens": 5000}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "Q"}], "seed": 1.5}, "seed"),
    ({"messages": [{"role": "user", "content": "Q"}], "top_p": True}, "top_p"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "12345678901"}]}, "messages"),
])
def test_bad_parameters_name_themselves(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_chat(body, 10, 4096)
    assert err.value.status == 400 and err.value.param == param


def test_a_chunk_is_one_server_sent_event() -> None:
    raw = chunk("c1", 5, "m", {"content": "é"})
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    assert json.loads(raw[6:])["choices"][0]["delta"] == {"content": "é"}
    assert json.loads(chunk("c1", 5, "m", None, stats={"prompt_tokens": 2})[6:])["usage"]["total_tokens"] == 2


@example(text="><<", cuts=[1, 2], stops=["<", "><<"])  # a later-completing stop that starts earlier wins
@given(st.text(alphabet="ab<>x", max_size=30), st.lists(st.integers(1, 30), max_size=8),
       st.lists(st.text(alphabet="ab<>", min_size=1, max_size=4), min_size=1, max_size=3))
@settings(max_examples=2000)
def test_stop_strings_split_anywhere(text: str, cuts: list[int], stops: list[str]) -> None:
    matcher = StopMatcher(stops)
    out, pos = [], 0
    for cut in sorted(cuts) + [len(text)]:
        out.append(matcher.feed(text[pos:cut]))
        pos = max(pos, cut)
    out.append(matcher.flush())
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    assert "".join(out) == (text[: min(hits)] if hits else text)
    assert matcher.hit == bool(hits)


def test_an_http_job_pushed_out_of_the_queue_is_a_429() -> None:
    from edgebot.engine.jobs import JobEnded
    from edgebot.http.server import _ended_error

    err = _ended_error(JobEnded("h1", "error", {}, "a voice question took its place", "busy"))
    assert err.status == 429 and "voice question" in err.body()["error"]["message"]
    assert _ended_error(JobEnded("h2", "error", {}, "boom", "internal")).status == 500
