"""The JSON-schema bounds (``edgebot.engine.schema_limits``) on their own: the schemas people write
pass, each kind of bomb is refused naming its limit, the check is linear and never recurses; and
the two linear rewrites of issue 12 give what the old quadratic code gave (think stripping, plain-
text tokenization around special-token text)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebot.engine.schema_limits import SchemaLimitError, check_pattern, check_schema
from edgebot.http.chat import strip_thinking

GOOD: list[Any] = [
    {"type": "object", "properties": {"answer": {"type": "integer"}, "sure": {"type": "boolean"},
                                      "unit": {"enum": ["apples", "pears"]}},
     "required": ["answer", "sure", "unit"], "additionalProperties": False},
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 64},
                                      "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
                                      "address": {"type": "object", "properties": {
                                          "zip": {"type": "string", "pattern": "^[0-9]{5}(-[0-9]{4})?$"},
                                          "city": {"type": "string"}}}},
     "$defs": {"x": {"type": "number"}}},
    {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}], "$defs": {"a": {"type": "string", "minLength": 1}}},
    {"type": "string", "pattern": "^[a-z]+(\\.[a-z]+)*@[a-z]+\\.[a-z]{2,6}$"},
    {"type": "string", "pattern": "^(a|aa|aaa){0,50}$"},
    {"type": "string", "maxLength": 1000},
    {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(64)}},
    True, {},
]


@pytest.mark.parametrize("schema", GOOD)
def test_ordinary_schemas_pass(schema: Any) -> None:
    check_schema(schema)


def deep(n: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(n):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize("schema, limit", [
    ({"type": "string", "maxLength": 20000}, "max_length"),
    ({"type": "string", "minLength": 1001}, "max_length"),
    ({"type": "string", "maxLength": -1}, "max_length"),
    ({"type": "string", "maxLength": "9"}, "max_length"),
    ({"type": "array", "maxItems": 257}, "max_items"),
    ({"type": "object", "maxProperties": 10**9}, "max_items"),
    ({"type": "object", "properties": {f"p{i}": {} for i in range(65)}}, "max_optional_properties"),
    ({"type": "object", "properties": {f"p{i}": {} for i in range(300)},
      "required": [f"p{i}" for i in range(300)]}, "max_properties"),
    (deep(13), "max_depth"),
    (deep(5000), "max_depth"),
    ({"enum": list(range(257))}, "max_enum"),
    ({"enum": ["x" * 600]}, "max_literal_chars"),
    ({"const": {"a": "b" * 600}}, "max_literal_chars"),
    ({"anyOf": [{"type": "integer"}] * 600}, "max_nodes"),
    ({"$ref": "https://example.invalid/s.json"}, "local $ref only"),
    ({"$ref": "other.json#/a"}, "local $ref only"),
    ({"type": "str"}, "schema shape"),
    ({"properties": []}, "schema shape"),
    ({"items": 5}, "schema shape"),
    ({"description": "x" * 70000}, "max_schema_chars"),
    ({"type": "string", "pattern": "^((a?){0,50}){0,50}$"}, "no repeated empty-matching groups"),
    ({"type": "string", "pattern": "^(a*)*$"}, "no repeated empty-matching groups"),
    ({"type": "string", "pattern": "^(a|b?)+$"}, "no repeated empty-matching groups"),
    ({"type": "string", "pattern": "^a{0,101}$"}, "max_repeat"),
    ({"type": "string", "pattern": "^a{5000,}$"}, "max_repeat"),
    ({"type": "string", "pattern": "^(a{1,30}){0,30}$"}, "max_repeat_product"),
    ({"type": "string", "pattern": "^" + "a" * 300 + "$"}, "max_pattern_chars"),
    ({"type": "string", "pattern": "^[]a]$"}, "pattern syntax"),
    ({"type": "string", "pattern": "^a}$"}, "pattern syntax"),
    ({"type": "string", "pattern": "^a{x}$"}, "pattern syntax"),
    ({"type": "string", "pattern": "^a{$"}, "pattern syntax"),
])
def test_bombs_are_refused_naming_the_limit(schema: Any, limit: str) -> None:
    with pytest.raises(SchemaLimitError) as err:
        check_schema(schema)
    assert err.value.limit == limit, str(err.value)
    assert limit in str(err.value)


def test_the_error_says_where() -> None:
    with pytest.raises(SchemaLimitError) as err:
        check_schema({"properties": {"a/b": {"type": "array", "items": {"type": "string", "maxLength": 5000}}}})
    assert err.value.where == "/properties/a~1b/items/maxLength"
    assert "maxLength 5000" in str(err.value) and "1000" in str(err.value)


@pytest.mark.parametrize("pattern", ["a{,}", "[{]{3}", "\\{{2}", "[}\\]]", "(a)(b)(c)", "((((a))))+", "a|", ")("])
def test_odd_patterns_do_not_trip_the_checker(pattern: str) -> None:
    check_pattern(pattern)  # the converter or llama.cpp judges their syntax


def test_the_check_is_fast_on_the_largest_schema_it_takes() -> None:
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string", "pattern": "^[a-z]{1,20}(-[a-z]{1,9})*$",
                                                       "maxLength": 1000} for i in range(256)},
            "required": [f"p{i}" for i in range(256)]}
    start = time.perf_counter()
    check_schema(wide)
    assert time.perf_counter() - start < 0.5


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "a", " ", "\n", "x</think", "<thi", "é"]), max_size=30)
       .map("".join))
def test_strip_thinking_matches_the_old_regex(text: str) -> None:
    assert strip_thinking(text) == re.sub(r"<think>.*?</think>\s*", "", text, flags=re.S)


def test_strip_thinking_is_linear() -> None:
    start = time.perf_counter()
    assert strip_thinking("<think>" * 100_000) == "<think>" * 100_000
    assert strip_thinking("<think>a</think> b" * 50_000) == "b" * 50_000
    assert time.perf_counter() - start < 0.5


def old_tokenize_text(backend: Any, text: str) -> list[int]:
    """The quadratic algorithm this replaced, kept as the reference."""
    tokens: list[int] = []
    rest = text
    while rest:
        hits = [(rest.find(s), s) for s in backend._special if s in rest]
        if not hits:
            tokens += backend._llm.tokenize(rest.encode(), add_bos=False, special=False)
            break
        idx, special = min(hits, key=lambda h: (h[0], -len(h[1])))
        if idx:
            tokens += backend._llm.tokenize(rest[:idx].encode(), add_bos=False, special=False)
        for ch in special:
            tokens += backend._llm.tokenize(ch.encode(), add_bos=False, special=False)
        rest = rest[idx + len(special):]
    return tokens


@pytest.fixture(scope="module")
def backend(script_model: Path) -> Any:
    from edgebot.engine.backends.llama import LlamaBackend

    b = LlamaBackend(str(script_model), n_ctx=512)
    b.load()
    yield b
    b.close()


SPECIAL = ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SPECIAL + ["hello", " ", "<", "｜", "think>", "é", "\n"]), max_size=20).map("".join))
def test_tokenize_text_matches_the_old_algorithm(backend: Any, text: str) -> None:
    assert backend.tokenize_text(text) == old_tokenize_text(backend, text)


def test_tokenize_text_is_linear(backend: Any) -> None:
    start = time.perf_counter()
    tokens = backend.tokenize_text("<think>" * 149_000)
    took = time.perf_counter() - start
    assert len(tokens) == 7 * 149_000 and took < 3.0, took


def test_a_grammar_step_over_the_time_budget_ends_the_answer(backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backstop behind the bounds: one grammar-constrained token slower than GRAMMAR_STEP_S ends
    the answer with an error saying so (here the budget is set to 0, so the first one is too slow)."""
    import threading

    from edgebot.engine.backend import SamplingParams
    from edgebot.engine.backends import llama

    monkeypatch.setattr(llama, "GRAMMAR_STEP_S", 0.0)
    prompt = backend.prepare([], "What is 2+2?")
    result = backend.generate(prompt, SamplingParams(json_schema='{"type": "object"}'), 200, threading.Event(),
                              lambda piece: None)
    assert result.reason == "error" and "GRAMMAR" not in result.message and "simplify the schema" in result.message


def test_actions_that_together_exceed_the_bounds_are_a_config_error() -> None:
    from edgebot.actions.registry import Registry, check_entry
    from edgebot.config.loader import ConfigError

    params = {"properties": {f"p{i}": {"type": "integer"} for i in range(8)}}
    actions = [check_entry({"name": f"a{n}", "port": "/dev/ttyUSB0", "description": "x", "parameters": params,
                            "confirm": False, "confirm_prompt": "", "rate_limit": 0, "rate_window_s": 60.0,
                            "phrases": {}}, f"[[actions]] #{n}") for n in range(40)]
    with pytest.raises(ConfigError) as err:
        Registry(actions)
    assert "max_properties" in str(err.value) and "fewer actions" in str(err.value)
    Registry(actions[:20])  # 20 actions of 8 parameters are fine
