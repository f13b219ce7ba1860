"""The OpenAI-compatible HTTP API against a real edgebotd on the script model, through the real
``openai`` client: answers with thinking only in ``reasoning_content``, grammar-enforced JSON,
sampling parameters, and every kind of bad request answered with the right status while the
daemon keeps serving."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import openai
import pytest

from conftest import Daemon
from edgebot.testing.script_model import DEFAULT_SCRIPT

pytest.importorskip("aiohttp")  # the `http` extra

TOKEN = "s3cret-token"
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, script_model: Path) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("edgebotd-http"), script_model,
               f'[http]\nenabled = true\nport = {port}\ntoken = "{TOKEN}"\nmax_body_bytes = 65536\n'
               f'max_prompt_chars = 20000\nmodel_name = "edgebot-test"\n')
    yield d, port
    d.stop()


@pytest.fixture
def client(api: tuple[Daemon, int]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{api[1]}/v1", api_key=TOKEN, max_retries=0, timeout=30)


def raw(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_non_streaming_answer_has_thinking_only_in_reasoning_content(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="edgebot-test", messages=QUESTION)
    msg = r.choices[0].message
    assert msg.content == DEFAULT_SCRIPT.answer_text
    assert msg.reasoning_content == DEFAULT_SCRIPT.think_text  # type: ignore[attr-defined]
    assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion"
    assert r.usage is not None and r.usage.completion_tokens == len(DEFAULT_SCRIPT.pieces)
    assert r.usage.completion_tokens_details.reasoning_tokens == len(DEFAULT_SCRIPT.think) + len(DEFAULT_SCRIPT.close)


def test_streaming_answer_and_usage(client: openai.OpenAI) -> None:
    content, reasoning, finishes, usage, roles = [], [], [], None, []
    for ch in client.chat.completions.create(model="edgebot-test", messages=QUESTION, stream=True,
                                             stream_options={"include_usage": True}):
        assert ch.object == "chat.completion.chunk"
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            roles.append(choice.delta.role)
            content.append(choice.delta.content or "")
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            finishes.append(choice.finish_reason)
            assert not (choice.delta.content and getattr(choice.delta, "reasoning_content", None))
    assert "".join(content) == DEFAULT_SCRIPT.answer_text
    assert "".join(reasoning) == DEFAULT_SCRIPT.think_text
    assert roles[0] == "assistant" and finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert usage is not None and usage.completion_tokens == len(DEFAULT_SCRIPT.pieces)


def test_history_and_system_messages_reach_the_prompt(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model="m", messages=QUESTION).usage
    history = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "<think>greet</think>Hello!"}, *QUESTION]
    r = client.chat.completions.create(model="m", messages=history)
    assert r.choices[0].message.content == DEFAULT_SCRIPT.answer_text
    # byte-level vocabulary: one token per character of the added turns (thinking dropped)
    added = len("Answer briefly.\n\n") + len("Hi") + len("Hello!")
    assert r.usage.prompt_tokens >= short.prompt_tokens + added
    assert r.usage.prompt_tokens < short.prompt_tokens + added + len("<think>greet</think>") + 12


SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}, "sure": {"type": "boolean"},
                                           "unit": {"enum": ["apples", "pears"]}},
          "required": ["answer", "sure", "unit"], "additionalProperties": False}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_validates(client: openai.OpenAI, seed: int) -> None:
    # The script model would say "The answer is 4." — only the grammar can make it write this JSON.
    r = client.chat.completions.create(
        model="m", messages=QUESTION, seed=seed, temperature=1.0, max_tokens=400,
        response_format={"type": "json_schema", "json_schema": {"name": "sum", "schema": SCHEMA, "strict": True}})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    assert r.choices[0].message.reasoning_content == DEFAULT_SCRIPT.think_text  # thinking is left free


def test_json_object_and_streamed_json_schema(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="m", messages=QUESTION, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    text = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model="m", messages=QUESTION, stream=True, seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}) if ch.choices)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_stop_max_tokens_and_seed(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="m", messages=QUESTION, stop=[" is 4", "zzz"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("The answer", "stop")
    streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model="m", messages=QUESTION, stop="swer", stream=True) if ch.choices)
    assert streamed == "The an"
    r = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=3)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("", "length")
    assert r.choices[0].message.reasoning_content == "".join(DEFAULT_SCRIPT.think[:3])
    a, b = (client.chat.completions.create(model="m", messages=QUESTION, seed=5, temperature=2.0, top_p=1.0,
                                           response_format={"type": "json_object"}) for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content  # same seed, same draw


@pytest.mark.parametrize("kwargs, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"messages": QUESTION, "temperature": 5}, "temperature"),
    ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
    ({"messages": QUESTION, "n": 2}, "n"),
    ({"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": QUESTION, "response_format": {"type": "yaml"}}, "response_format"),
    ({"messages": QUESTION, "tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools"),
    ({"messages": QUESTION, "functions": [{"name": "f"}]}, "functions"),
])
def test_bad_requests_are_400_naming_the_parameter(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", **kwargs)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"


def test_too_long_prompts_are_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:  # over [http] max_prompt_chars
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * 20001}])
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:  # within the limit, but more tokens than n_ctx (4096)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "y " * 4000}])
    assert err.value.body["code"] == "context_length_exceeded" and "4096" in err.value.body["message"]


def test_wrong_or_missing_token_is_401(api: tuple[Daemon, int]) -> None:
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{api[1]}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model="m", messages=QUESTION)
    assert err.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    status, body = raw(api[1], "GET", "/v1/models", headers={"Authorization": ""})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert raw(api[1], "GET", "/health", headers={"Authorization": ""}) == (200, {"status": "ok"})


def test_oversized_and_malformed_bodies(api: tuple[Daemon, int]) -> None:
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "z" * 70000}]}).encode()
    status, body = raw(api[1], "POST", "/v1/chat/completions", big, {"Content-Type": "application/json"})
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = raw(api[1], "POST", "/v1/chat/completions", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = raw(api[1], "POST", "/v1/chat/completions", b"[1, 2]", {"Content-Type": "application/json"})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert raw(api[1], "GET", "/v1/nothing")[0] == 404
    assert raw(api[1], "GET", "/v1/chat/completions")[0] == 405


def test_models_and_health(client: openai.OpenAI, api: tuple[Daemon, int]) -> None:
    assert [m.id for m in client.models.list().data] == ["edgebot-test"]
    assert raw(api[1], "GET", "/health") == (200, {"status": "ok"})


def test_still_serving_after_everything(client: openai.OpenAI, api: tuple[Daemon, int]) -> None:
    assert client.chat.completions.create(model="m", messages=QUESTION).choices[0].message.content == \
        DEFAULT_SCRIPT.answer_text
    bus = api[0].connect()
    try:
        text, end = bus.answer("after-http", "What is 2+2?")
        assert (text, end["data"]["reason"], end["data"]["stats"]["backend"]) == \
            (DEFAULT_SCRIPT.answer_text, "stop", "local")
        assert bus.wait_idle()["queue"]["waiting"] == 0
    finally:
        bus.close()


def test_cli_and_daemon_without_http_never_import_aiohttp() -> None:
    code = ("import sys, edgebot.cli, edgebot.daemon; "
            "sys.exit(1 if 'aiohttp' in sys.modules or 'edgebot.http.server' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
