"""Property-based: for random declared schemas, the grammar llama.cpp builds from the model's
answer schema accepts every valid call and rejects invalid ones; what the grammar cannot express
(number ranges) the registry's validation refuses before anything is sent.

The grammar is run by llama.cpp itself (``llama_sampler_init_grammar`` over the test GGUF's
vocabulary): a text is accepted when every one of its tokens, then end-of-generation, survives
the grammar sampler."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgebot.actions import tools
from edgebot.actions.registry import MAX_ARGS_BYTES, Action, CallError, Registry, args_json, strict_schema

llama_cpp = pytest.importorskip("llama_cpp")


class GrammarRunner:
    """Runs GBNF grammars over a real llama.cpp vocabulary (no weights needed)."""

    def __init__(self, model: Path) -> None:
        self.llm = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
        self.vocab = self.llm._model.vocab
        self.eos = self.llm.token_eos()

    def accepts(self, gbnf: str, text: str) -> bool:
        smpl = llama_cpp.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        assert smpl, "llama.cpp refused the grammar"
        try:
            for tok in self.llm.tokenize(text.encode(), add_bos=False, special=False) + [self.eos]:
                data = (llama_cpp.llama_token_data * 1)()
                data[0].id, data[0].logit, data[0].p = tok, 0.0, 0.0
                arr = llama_cpp.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
                llama_cpp.llama_sampler_apply(smpl, ctypes.byref(arr))
                if data[0].logit == float("-inf"):
                    return False
                if tok != self.eos:
                    llama_cpp.llama_sampler_accept(smpl, tok)
            return True
        finally:
            llama_cpp.llama_sampler_free(smpl)


@pytest.fixture(scope="module")
def runner(script_model: Path) -> GrammarRunner:
    return GrammarRunner(script_model)


def gbnf_for(actions: list[Action]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(tools.answer_schema(actions)))


words = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters='"\\'), min_size=1,
                max_size=8)
names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)


@st.composite
def param_specs(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["enum", "integer", "boolean", "string", "number"]))
    if kind == "enum":
        return {"enum": draw(st.lists(words, min_size=1, max_size=3, unique=True))}
    if kind == "integer" and draw(st.booleans()):
        lo = draw(st.integers(-50, 50))
        return {"type": "integer", "minimum": lo, "maximum": lo + draw(st.integers(0, 100))}
    return {"type": kind}


@st.composite
def declared(draw: Any) -> list[Action]:
    actions = []
    for name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
        props = draw(st.dictionaries(names, param_specs(), max_size=3))
        schema = strict_schema({"properties": props}, name)
        actions.append(Action(name=name, description=name, schema=schema, port="/dev/null"))
    return actions


def value_for(draw: Any, spec: dict[str, Any]) -> Any:
    if "enum" in spec:
        return draw(st.sampled_from(spec["enum"]))
    kind = spec["type"]
    if kind == "integer":
        return draw(st.integers(spec.get("minimum", -10**6), spec.get("maximum", 10**6)))
    if kind == "number":
        return draw(st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 3)))
    if kind == "boolean":
        return draw(st.booleans())
    return draw(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=12))


def valid_call(draw: Any, action: Action) -> dict[str, Any]:
    args = {n: value_for(draw, spec) for n, spec in action.schema["properties"].items()}
    return {"action": action.name, "args": args}


def wrong_value(draw: Any, spec: dict[str, Any]) -> Any:
    """A value the grammar can tell is wrong: outside the enum, or of the wrong JSON type."""
    if "enum" in spec:
        return draw(words.filter(lambda w: w not in spec["enum"]))
    return {"integer": "7", "number": True, "boolean": 1, "string": 3}[spec["type"]]


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(st.data(), declared())
def test_the_grammar_accepts_every_valid_call(runner: GrammarRunner, data: st.DataObject,
                                              actions: list[Action]) -> None:
    gbnf = gbnf_for(actions)
    action = data.draw(st.sampled_from(actions))
    call = valid_call(data.draw, action)
    text = json.dumps(call, ensure_ascii=data.draw(st.booleans()))
    assert runner.accepts(gbnf, text), (gbnf, text)
    if len(args_json(call["args"])) <= MAX_ARGS_BYTES:  # and the validator agrees (within the wire's limit)
        Registry(actions).check_call(call["action"], call["args"])
    assert runner.accepts(gbnf, json.dumps({"answer": data.draw(words)}))


@SETTINGS
@given(st.data(), declared())
def test_the_grammar_rejects_invalid_calls(runner: GrammarRunner, data: st.DataObject,
                                           actions: list[Action]) -> None:
    gbnf = gbnf_for(actions)
    action = data.draw(st.sampled_from(actions))
    call = valid_call(data.draw, action)
    props = action.schema["properties"]
    mutations = ["undeclared", "extra"] + (["missing", "wrong"] if props else [])
    mutation = data.draw(st.sampled_from(mutations))
    if mutation == "undeclared":
        call["action"] = data.draw(names.filter(lambda n: n not in {a.name for a in actions}))
    elif mutation == "extra":
        call["args"][data.draw(names.filter(lambda n: n not in props))] = 1
    elif mutation == "missing":
        del call["args"][data.draw(st.sampled_from(sorted(props)))]
    else:
        victim = data.draw(st.sampled_from(sorted(props)))
        call["args"][victim] = wrong_value(data.draw, props[victim])
    assert not runner.accepts(gbnf, json.dumps(call)), (mutation, call)
    with pytest.raises(CallError):
        Registry(actions).check_call(call["action"], call["args"])


def test_ranges_the_grammar_cannot_express_are_refused_by_validation(runner: GrammarRunner) -> None:
    schema = strict_schema({"properties": {"level": {"type": "integer", "minimum": 0, "maximum": 100},
                                           "speed": {"type": "number", "minimum": 0, "maximum": 1}}}, "t")
    actions = [Action(name="set", description="", schema=schema, port="/dev/null")]
    call = {"action": "set", "args": {"level": 101, "speed": 2.5}}
    runner.accepts(gbnf_for(actions), json.dumps(call))  # may pass the grammar (llama-cpp-python 0.3.x: it does)
    with pytest.raises(CallError, match="maximum"):
        Registry(actions).check_call("set", call["args"])
