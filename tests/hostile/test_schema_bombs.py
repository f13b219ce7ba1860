"""Issue 12, item 1 and the regex part of item 2: what a JSON schema may ask is bounded before any
grammar is built. Each bomb once crashed edgebotd (SIGSEGV in llama.cpp's grammar parser), answered
502 after logging ~120 KB of grammar, stalled the loop for seconds or made every token cost 23.7 s;
now each is a 400 that names the limit, at once, and the daemon goes on answering. The same bounds
apply to ``[[actions]]`` parameter schemas. Against a real edgebotd with real llama.cpp."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("aiohttp")  # the `http` extra

from conftest import EDGEBOTD, Daemon
from edgebot.testing.script_model import DEFAULT_SCRIPT
from http_client import QUESTION, chat
from test_http_api import free_port


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, script_model: Path) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("edgebotd-bombs"), script_model, f"[http]\nenabled = true\nport = {port}\n")
    yield d, port
    d.stop()


def schema_request(schema: Any) -> dict[str, Any]:
    return {"model": "m", "messages": QUESTION, "max_tokens": 200,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


BOMBS = {
    "maxLength 20000 (the SIGSEGV)": ({"type": "string", "maxLength": 20000}, "maxLength"),
    "maxLength 15000 (the 502)": ({"type": "object", "properties": {"s": {"type": "string", "maxLength": 15000}}},
                                  "maxLength"),
    "minLength 100000": ({"type": "string", "minLength": 100000}, "minLength"),
    "maxItems 5000": ({"type": "array", "items": {"type": "integer"}, "maxItems": 5000}, "maxItems"),
    "minItems 5000": ({"type": "array", "items": {"type": "integer"}, "minItems": 5000}, "minItems"),
    "900 optional properties": ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(900)}},
                                "properties"),
    "nesting 60 deep": (nested(60), "nesting"),
    "enum of 5000": ({"enum": list(range(5000))}, "enum"),
    "nested quantifiers": ({"type": "string", "pattern": "^((a?){0,50}){0,50}$"}, "pattern"),
    "a repeat of 5000": ({"type": "string", "pattern": "^a{0,5000}$"}, "pattern"),
    "a 2000-character pattern": ({"type": "string", "pattern": "^" + "ab" * 1000 + "$"}, "pattern"),
    "a remote $ref": ({"$ref": "https://example.invalid/schema.json"}, "$ref"),
    "a stray ] (the converter loops forever)": ({"type": "string", "pattern": "^[]a]$"}, "pattern"),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_schema_bombs_are_400_naming_the_limit_at_once(api: tuple[Daemon, int], name: str) -> None:
    d, port = api
    schema, limit = BOMBS[name]
    start = time.monotonic()
    status, body = chat(port, schema_request(schema), timeout=30)
    took = time.monotonic() - start
    assert d.proc.poll() is None, f"edgebotd died (exit {d.proc.returncode})"
    assert status == 400, body
    err = body["error"]
    assert err["param"] == "response_format" and err["code"] == "schema_too_complex", err
    assert limit in err["message"], err["message"]
    assert took < 2.0, f"{name}: {took:.2f} s"


def test_the_daemon_answers_after_every_bomb(api: tuple[Daemon, int]) -> None:
    d, port = api
    for schema, _ in BOMBS.values():
        chat(port, schema_request(schema))
    assert d.proc.poll() is None
    status, body = chat(port, {"model": "m", "messages": QUESTION})
    assert status == 200 and body["choices"][0]["message"]["content"] == DEFAULT_SCRIPT.answer_text


def test_a_grammar_llama_cpp_refuses_is_400_and_logs_a_bounded_summary(api: tuple[Daemon, int]) -> None:
    """Within the bounds, but llama.cpp's parser refuses what the converter makes of ``\\.``: a 400
    before the job is queued (it was a 502 after the answer had started), and the log says so in a
    line, not with the whole grammar."""
    d, port = api
    before = len(d.log_text())
    schema = {"type": "object", "properties": {f"k{i}": {"type": "string", "pattern": "^[a-z]+\\.[a-z]+$"}
                                               for i in range(40)}, "required": [f"k{i}" for i in range(40)]}
    status, body = chat(port, schema_request(schema))
    assert status == 400 and body["error"]["param"] == "response_format", body
    grown = len(d.log_text()) - before
    assert grown < 2000, f"the log grew by {grown} bytes for one refused grammar"


def test_actions_parameters_are_held_to_the_same_bounds(tmp_path: Path, script_model: Path) -> None:
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text('[[actions]]\nname = "say_it"\nport = "/dev/ttyUSB0"\ndescription = "say a long thing"\n'
                   'parameters = { properties = { text = { type = "string", maxLength = 20000 } } }\n')
    res = subprocess.run([EDGEBOTD, "--config", str(cfg), "--model", str(script_model), "--socket",
                          str(tmp_path / "bus.sock")], capture_output=True, text=True, timeout=60,
                         env={"EDGEBOT_BOARD": "generic-x86", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 78, res.stderr
    assert "maxLength" in res.stderr and "1000" in res.stderr, res.stderr
