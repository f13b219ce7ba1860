"""The Ollama-compatible endpoints against a real edgebotd on the script model, through the official
``ollama`` Python client: list/show/ps/version, chat and generate streamed and not, ``think`` giving
the thinking in its own field (and never in the content), ``format`` schemas honoured by the
grammar, keep_alive accepted, an unknown model and model management refused with clear errors, the
same bearer-token rule as /v1."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest

from conftest import Daemon
from edgebot.testing.broker import free_port
from edgebot.testing.script_model import DEFAULT_SCRIPT

pytest.importorskip("aiohttp")  # the `http` extra
ollama = pytest.importorskip("ollama", reason="the ollama client (dev extra) is not installed")

TOKEN = "ollama-token"
MODEL = "edgebot-test:latest"
QUESTION = [{"role": "user", "content": "What is 2+2?"}]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}, "unit": {"enum": ["apples", "pears"]}},
          "required": ["answer", "unit"], "additionalProperties": False}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, script_model: Path) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("edgebotd-ollama"), script_model,
               f'[http]\nenabled = true\nport = {port}\ntoken = "{TOKEN}"\nmodel_name = "edgebot-test"\n')
    yield d, port
    d.stop()


@pytest.fixture
def client(api: tuple[Daemon, int]) -> Any:
    return ollama.Client(host=f"http://127.0.0.1:{api[1]}", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=30)


def raw(port: int, method: str, path: str, body: Any = None, token: str = TOKEN) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def test_list_show_ps_version(client: Any, api: tuple[Daemon, int]) -> None:
    models = client.list().models
    assert [m.model for m in models] == [MODEL]
    assert models[0].size == Path(api[0].proc.args[api[0].proc.args.index("--model") + 1]).stat().st_size
    assert models[0].details.format == "gguf" and models[0].details.family == "qwen2"
    shown = client.show("edgebot-test")
    assert "thinking" in shown.capabilities and "completion" in shown.capabilities
    assert [m.model for m in client.ps().models] == [MODEL]
    status, _, body = raw(api[1], "GET", "/api/version")
    assert status == 200 and json.loads(body)["version"].count(".") == 2


def test_chat_not_streamed_hides_thinking_unless_asked(client: Any) -> None:
    r = client.chat(model=MODEL, messages=QUESTION, stream=False, keep_alive="5m")
    assert r.message.content == DEFAULT_SCRIPT.answer_text and not r.message.thinking
    assert r.done and r.done_reason == "stop"
    assert r.eval_count == len(DEFAULT_SCRIPT.pieces) and r.prompt_eval_count > 0 and r.total_duration > 0
    r = client.chat(model="edgebot-test", messages=QUESTION, stream=False, think=True)
    assert r.message.thinking == DEFAULT_SCRIPT.think_text
    assert r.message.content == DEFAULT_SCRIPT.answer_text  # no thinking, no </think> in the content


def test_chat_streamed_with_thinking(client: Any) -> None:
    parts = list(client.chat(model=MODEL, messages=QUESTION, stream=True, think=True))
    # pieces that arrive together are sent as one line, so the count depends on the machine's load
    assert len(parts) >= 2 and parts[-1].done and parts[-1].done_reason == "stop"
    assert not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts) == DEFAULT_SCRIPT.answer_text
    assert "".join(p.message.thinking or "" for p in parts) == DEFAULT_SCRIPT.think_text
    plain = list(client.chat(model=MODEL, messages=QUESTION, stream=True))  # thinking hidden without think
    assert "".join(p.message.content or "" for p in plain) == DEFAULT_SCRIPT.answer_text
    assert not any(p.message.thinking for p in plain)


def test_a_body_without_stream_is_streamed_ndjson(api: tuple[Daemon, int]) -> None:
    status, ctype, data = raw(api[1], "POST", "/api/chat", {"model": MODEL, "messages": QUESTION})
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert status == 200 and ctype.startswith("application/x-ndjson") and len(lines) >= 2
    assert "".join(x["message"]["content"] for x in lines) == DEFAULT_SCRIPT.answer_text and lines[-1]["done"]


def test_generate_streamed_and_not(client: Any) -> None:
    r = client.generate(model=MODEL, prompt="What is 2+2?", system="Answer briefly.", stream=False)
    assert r.response == DEFAULT_SCRIPT.answer_text and r.done
    parts = list(client.generate(model=MODEL, prompt="What is 2+2?", think=True, stream=True))
    assert "".join(p.response for p in parts) == DEFAULT_SCRIPT.answer_text
    assert "".join(p.thinking or "" for p in parts) == DEFAULT_SCRIPT.think_text


def test_format_schema_is_honoured(client: Any) -> None:
    # The script model would say "The answer is 4." — only the grammar makes it write this JSON.
    r = client.chat(model=MODEL, messages=QUESTION, format=SCHEMA, options={"temperature": 1.0, "seed": 3,
                                                                            "num_predict": 400})
    jsonschema.validate(json.loads(r.message.content), SCHEMA)
    r = client.generate(model=MODEL, prompt="2+2?", format="json", stream=False)
    assert isinstance(json.loads(r.response), dict)


def test_options_stop_and_num_predict(client: Any) -> None:
    r = client.chat(model=MODEL, messages=QUESTION, stream=True,
                    options={"stop": [" is 4"], "top_k": 20, "num_ctx": 2048})
    assert "".join(p.message.content for p in r) == "The answer"
    r = client.chat(model=MODEL, messages=QUESTION, stream=False, options={"num_predict": 3})
    assert r.done_reason == "length"


def test_load_and_unload_requests(client: Any) -> None:
    r = client.chat(model=MODEL, messages=[], stream=False)
    assert r.done and r.done_reason == "load"
    r = client.generate(model=MODEL, prompt="", keep_alive=0, stream=False)
    assert r.done_reason == "unload"


def test_unknown_model_and_management_are_clear_errors(client: Any, api: tuple[Daemon, int]) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="llama3:8b", messages=QUESTION, stream=False)
    assert err.value.status_code == 404 and "llama3:8b" in err.value.error and MODEL in err.value.error
    for call in (lambda: client.pull("llama3"), lambda: client.delete(MODEL),
                 lambda: client.copy(MODEL, "other")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 501 and "edgebot-cli model pull" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=MODEL, input="hi")
    assert err.value.status_code == 501


@pytest.mark.parametrize("body, words", [
    ({"model": MODEL, "messages": QUESTION, "format": "yaml"}, "format"),
    ({"model": MODEL, "messages": QUESTION, "think": "maybe"}, "think"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images"),
    ({"model": MODEL, "messages": QUESTION, "options": {"num_predict": "lots"}}, "num_predict"),
    ({"messages": QUESTION}, "model is required"),
])
def test_bad_requests_are_400_with_ollamas_error_shape(api: tuple[Daemon, int], body: dict, words: str) -> None:
    status, ctype, data = raw(api[1], "POST", "/api/chat", body)
    assert status == 400 and ctype.startswith("application/json")
    assert words in json.loads(data)["error"]


def test_same_token_rule_as_v1(api: tuple[Daemon, int]) -> None:
    for path in ("/api/tags", "/api/version"):
        status, _, data = raw(api[1], "GET", path, token="")
        assert status == 401 and "Bearer" in json.loads(data)["error"]
    status, _, _ = raw(api[1], "POST", "/api/chat", {"model": MODEL, "messages": QUESTION}, token="wrong")
    assert status == 401
