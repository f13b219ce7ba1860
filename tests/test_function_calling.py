"""Function calling through the real ``openai`` client (and Ollama's ``tools`` through the ``ollama``
client) against a real edgebotd on a script GGUF whose answer is a call: ``tool_calls`` whose
arguments validate against the declared schema, streamed and not; the ``role: tool`` result round
trip ending in the scripted final answer; ``tool_choice`` none / required / named; thinking never in
the arguments; bad tool declarations refused with 400."""

from __future__ import annotations

import json
from typing import Any, Iterator

import jsonschema
import openai
import pytest

from conftest import Daemon
from edgebot.testing.broker import free_port
from edgebot.testing.script_model import Script, write_script_model

pytest.importorskip("aiohttp")  # the `http` extra

CALL_SCRIPT = Script(think=("The user", " wants weather."), close=("</th", "ink>\n\n"),
                     answer=('{"action":', ' "get_weather",', ' "args":', ' {"city":', ' "Seoul",', ' "days":',
                             ' 2}}'),
                     after_close=("It is", " sunny in", " Seoul."))  # the reply to the tool's result
FINAL = "It is sunny in Seoul."
PARAMS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 7}},
          "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the weather forecast",
                                           "parameters": PARAMS}},
         {"type": "function", "function": {"name": "set_alarm", "description": "set an alarm",
                                           "parameters": {"type": "object",
                                                          "properties": {"hour": {"type": "integer"}},
                                                          "required": ["hour"]}}}]
QUESTION = [{"role": "user", "content": "Weather in Seoul for two days?"}]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    model = write_script_model(tmp_path_factory.mktemp("models") / "call.gguf", CALL_SCRIPT)
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("edgebotd-tools"), model,
               f'[http]\nenabled = true\nport = {port}\nmodel_name = "m"\n')
    yield port
    d.stop()


@pytest.fixture
def client(api: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{api}/v1", api_key="none", max_retries=0, timeout=60)


def test_call_not_streamed(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="m", messages=QUESTION, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, PARAMS)
    assert args == {"city": "Seoul", "days": 2}
    assert choice.message.reasoning_content == CALL_SCRIPT.think_text  # type: ignore[attr-defined]


def test_call_streamed_as_tool_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="m", messages=QUESTION, tools=TOOLS, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert calls[0].id and calls[0].function.name == "get_weather"
    assert len(calls) > 2, "the arguments arrive in pieces"
    args = "".join(tc.function.arguments or "" for tc in calls)
    assert json.loads(args) == {"city": "Seoul", "days": 2}
    assert "wants weather" not in args and not any(d.content for d in deltas)
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == CALL_SCRIPT.think_text
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_result_round_trip_ends_in_the_final_answer(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="m", messages=QUESTION, tools=TOOLS).choices[0].message
    call = first.tool_calls[0]
    messages = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call.id, "type": "function",
                     "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}]
    r = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == FINAL
    assert not r.choices[0].message.tool_calls
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", messages=messages, tools=TOOLS, stream=True) if c.choices)
    assert streamed == FINAL


def test_tool_choice_none_required_and_named(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="m", messages=QUESTION, tools=TOOLS, tool_choice="none")
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert r.choices[0].message.content == CALL_SCRIPT.answer_text  # the model's own text, unconstrained
    r = client.chat.completions.create(model="m", messages=QUESTION, tools=TOOLS, tool_choice="required")
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    # Named: the grammar allows only set_alarm, whatever the model would have said.
    r = client.chat.completions.create(model="m", messages=QUESTION, tools=TOOLS, max_tokens=300,
                                       tool_choice={"type": "function", "function": {"name": "set_alarm"}})
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "set_alarm" and isinstance(json.loads(call.function.arguments)["hour"], int)


@pytest.mark.parametrize("tools, choice, words", [
    ([{"type": "function", "function": {"name": "bad name!"}}], None, "name"),
    ([{"type": "retrieval"}], None, "tools[0]"),
    (TOOLS, "sometimes", "tool_choice"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], None, "object schema"),
    ([TOOLS[0], TOOLS[0]], None, "two functions"),
])
def test_bad_tools_are_400(client: openai.OpenAI, tools: Any, choice: Any, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=QUESTION, tools=tools,
                                       **({"tool_choice": choice} if choice is not None else {}))
    assert words in str(err.value)


@pytest.mark.parametrize("params", [
    {"type": "object", "properties": {"s": {"type": "string", "pattern": "^[]a]$"}}},  # froze the converter
    {"type": "object", "properties": {"s": {"type": "string", "maxLength": 20000}}},  # overflowed llama.cpp
])
def test_tool_schemas_are_held_to_the_schema_limits(client: openai.OpenAI, params: dict) -> None:
    """The same bounds as response_format (edgebot/engine/schema_limits.py), before any grammar is built."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": params}}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=QUESTION, tools=tools)
    assert err.value.body["code"] == "schema_too_complex" and err.value.body["param"] == "tools"
    r = client.chat.completions.create(model="m", messages=QUESTION, tools=TOOLS)  # still serving
    assert r.choices[0].finish_reason == "tool_calls"


def test_ollama_tools(api: int) -> None:
    ollama = pytest.importorskip("ollama")
    c = ollama.Client(host=f"http://127.0.0.1:{api}", timeout=60)
    r = c.chat(model="m", messages=QUESTION, tools=TOOLS, stream=False)
    [call] = r.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Seoul", "days": 2}
    parts = list(c.chat(model="m", messages=QUESTION, tools=TOOLS, stream=True))
    assert [tc.function.name for p in parts for tc in (p.message.tool_calls or [])] == ["get_weather"]
    follow = [*QUESTION, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Seoul", "days": 2}}}]},
        {"role": "tool", "content": "sunny, 24 C", "tool_name": "get_weather"}]
    assert c.chat(model="m", messages=follow, tools=TOOLS, stream=False).message.content == FINAL
