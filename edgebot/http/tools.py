"""Function calling for the HTTP APIs: OpenAI ``tools``/``tool_choice`` and Ollama ``tools``.

The request's functions are offered and constrained with the robot actions' contract
(:mod:`edgebot.actions.tools`): the user turn lists them, and the answer after the thinking is
generated under a grammar made from one JSON Schema — an ``anyOf`` of ``{"action": NAME, "args":
{...the function's parameters...}}`` per function, plus ``{"answer": TEXT}`` unless a call is
required. A call comes back as ``tool_calls``; thinking never enters the arguments (the grammar
applies only after ``</think>``). A conversation that ends in ``role: tool`` results is answered
in plain text without thinking, like an action's result (docs/actions.md), unless the request
requires another call. Pure functions and a small streaming state machine; no I/O.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

from edgebot.actions import tools as contract
from edgebot.engine.schema_limits import SchemaLimitError, check_schema
from edgebot.http.errors import ApiError, bad

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 32
MAX_SCHEMA_BYTES = 16384
"""Largest ``parameters`` schema of one function, as compact JSON (bytes)."""
HEADING = "You can call these functions:"
CALL_HEAD = re.compile(r'^\s*\{\s*"action"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"args"\s*:\s*')


@dataclass(frozen=True)
class Tool:
    """One offered function (the :class:`edgebot.actions.tools.Offer` shape)."""

    name: str
    description: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class ToolPlan:
    """A request's functions and ``tool_choice``: ``auto``, ``none``, ``required`` or a function name."""

    tools: tuple[Tool, ...]
    choice: str = "auto"

    @property
    def offered(self) -> tuple[Tool, ...]:
        """The functions the model may call in this answer."""
        if self.choice == "none":
            return ()
        if self.choice in ("auto", "required"):
            return self.tools
        return tuple(t for t in self.tools if t.name == self.choice)

    def applies(self, after_result: bool) -> bool:
        """Whether this answer is constrained to a call (or a plain answer in JSON)."""
        return bool(self.offered) and not (after_result and self.choice == "auto")

    def schema_json(self) -> str:
        return json.dumps(contract.answer_schema(self.offered, plain=self.choice == "auto"))

    def offer(self, question: str) -> str:
        return contract.offer_text(self.offered, question, HEADING, plain=self.choice == "auto")


def parse_tools(tools: Any, choice: Any) -> Optional[ToolPlan]:
    """Validate ``tools`` (OpenAI and Ollama share the shape) and ``tool_choice``; None without tools."""
    if tools in (None, []):
        if choice not in (None, "none", "auto"):
            raise bad("tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise bad(f"tools must be a list of at most {MAX_TOOLS} functions", "tools")
    parsed: list[Tool] = []
    for i, entry in enumerate(tools):
        fn = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("type", "function") != "function" or not isinstance(fn, dict):
            raise bad(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{name, parameters}}}}", "tools")
        name, params = fn.get("name"), fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise bad(f"tools[{i}].function.name must be 1-64 letters, digits, _ or -", "tools")
        if name in {t.name for t in parsed}:
            raise bad(f"tools[{i}]: two functions are called {name}", "tools")
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise bad(f"tools[{i}].function.parameters must be an object schema", "tools")
        if len(json.dumps(params, separators=(",", ":"))) > MAX_SCHEMA_BYTES:
            raise bad(f"tools[{i}].function.parameters is larger than {MAX_SCHEMA_BYTES} bytes", "tools")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise bad(f"tools[{i}].function.description must be a string", "tools")
        parsed.append(Tool(name, description[:1000], params))
    if choice is None or choice in ("auto", "none", "required"):
        plan = ToolPlan(tuple(parsed), choice or "auto")
    elif isinstance(choice, dict) and choice.get("type", "function") == "function" and \
            isinstance(choice.get("function"), dict) and choice["function"].get("name") in {t.name for t in parsed}:
        plan = ToolPlan(tuple(parsed), choice["function"]["name"])
    else:
        raise bad("tool_choice must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": "
                  "one of the tools}}", "tool_choice")
    if plan.offered:  # the bounds here; the grammar itself is built on the HTTP check thread (server.py)
        try:
            check_schema(contract.answer_schema(plan.offered))
        except SchemaLimitError as exc:
            raise bad(f"tools[].function.parameters ask too much: {exc}", "tools", "schema_too_complex") from None
    return plan


def call_json(name: str, args: Any) -> str:
    """A past call as the model wrote it (the assistant turn the engine sees in the history)."""
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            raise bad(f"tool call {name}: arguments must be a JSON object", "messages") from None
    return json.dumps({"action": name, "args": args}, ensure_ascii=False)


def past_calls(msg: dict[str, Any], index: int) -> tuple[str, dict[str, str]]:
    """An assistant message's ``tool_calls`` -> (its answer as the engine saw it, call id -> name)."""
    calls = msg.get("tool_calls")
    if not isinstance(calls, list):
        raise bad(f"messages[{index}].tool_calls must be a list", f"messages[{index}].tool_calls")
    texts, names = [], {}
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad(f"messages[{index}].tool_calls: each needs function.name", f"messages[{index}].tool_calls")
        texts.append(call_json(fn["name"], fn.get("arguments") or {}))
        names[str(call.get("id") or fn["name"])] = fn["name"]
    return "\n".join(texts), names


def result_text(msg: dict[str, Any], content: str, names: dict[str, str]) -> str:
    """A ``role: tool`` message as the text of the next user turn."""
    name = names.get(str(msg.get("tool_call_id") or "")) or msg.get("tool_name") or msg.get("name") or \
        (next(iter(names.values())) if len(names) == 1 else "the function")
    return f"Result of {name}: {content}"


@dataclass
class CallStream:
    """Reads the constrained answer as it streams: plain answer text comes out as it arrives, a call
    as its name once known and then its argument JSON piece by piece (the outer object's closing
    brace held back). ``feed`` returns events: ``("content", text)``, ``("call", name)``,
    ``("args", text)``."""

    call_id: str = field(default_factory=lambda: f"call_{secrets.token_hex(12)}")
    raw: str = ""
    name: Optional[str] = None
    _args_at: int = 0
    _sent: int = 0
    _plain: contract.AnswerStream = field(default_factory=contract.AnswerStream)

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.raw += piece
        out: list[tuple[str, str]] = []
        text = self._plain.feed(piece)
        if text:
            out.append(("content", text))
        if self.name is None:
            m = CALL_HEAD.match(self.raw)
            if m is None:
                return out
            self.name, self._args_at = json.loads(f'"{m.group(1)}"'), m.end()
            out.append(("call", self.name))
        upto = len(self.raw.rstrip()) - 1  # never the last non-space character: it may close the call
        if upto > self._args_at + self._sent:
            out.append(("args", self.raw[self._args_at + self._sent:upto]))
            self._sent = upto - self._args_at
        return out

    def finish(self) -> tuple[Optional[tuple[str, str]], list[tuple[str, str]]]:
        """At the end: (the call's name and exact argument JSON, or None for a plain answer; the
        argument text not streamed yet)."""
        answer = contract.read_answer(self.raw)
        if not isinstance(answer, contract.Call):
            return None, []
        args = json.dumps(answer.args, ensure_ascii=False)
        if self.name is None:
            return (str(answer.name), args), []
        streamed = self.raw[self._args_at:self._args_at + self._sent]
        exact = self.raw[self._args_at:self.raw.rstrip().rindex("}")].rstrip()
        if exact.startswith(streamed):
            return (str(answer.name), exact), [("args", exact[len(streamed):])] if exact[len(streamed):] else []
        raise ApiError(500, "the streamed call could not be completed", "server_error", "internal")


# -- OpenAI shapes -----------------------------------------------------------------------------------

def _delta(calls: CallStream, kind: str, text: str) -> dict[str, Any]:
    if kind == "content":
        return {"content": text}
    if kind == "call":
        return {"tool_calls": [{"index": 0, "id": calls.call_id, "type": "function",
                                "function": {"name": text, "arguments": ""}}]}
    return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}


def call_deltas(calls: CallStream, piece: str) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` deltas for one piece of a constrained answer."""
    return [_delta(calls, kind, text) for kind, text in calls.feed(piece)]


def finish_deltas(calls: CallStream, finish: str) -> tuple[list[dict[str, Any]], str]:
    """The last deltas and the finish reason (``tool_calls`` when the answer was a call)."""
    result, rest = calls.finish()
    if result is None:
        return [], finish
    head = [_delta(calls, "call", result[0]), _delta(calls, "args", result[1])] if calls.name is None else []
    return head + [_delta(calls, k, t) for k, t in rest], "tool_calls" if finish == "stop" else finish


def shape_completion(body: dict[str, Any], raw: str) -> None:
    """Turn a ``chat.completion`` whose content is the constrained JSON into a call or plain text."""
    choice = body["choices"][0]
    answer = contract.read_answer(raw)
    if isinstance(answer, contract.Plain):
        choice["message"]["content"] = answer.text
    elif isinstance(answer, contract.Call):
        choice["message"]["content"] = None
        choice["message"]["tool_calls"] = [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
                                            "function": {"name": str(answer.name),
                                                         "arguments": json.dumps(answer.args, ensure_ascii=False)}}]
        if choice["finish_reason"] == "stop":
            choice["finish_reason"] = "tool_calls"


def ollama_message(raw: str) -> dict[str, Any]:
    """Ollama's ``message`` fields for a constrained answer: ``content`` or ``tool_calls`` (arguments
    as an object, as Ollama sends them)."""
    answer = contract.read_answer(raw)
    if isinstance(answer, contract.Call):
        return {"content": "", "tool_calls": [{"function": {"name": str(answer.name), "arguments": answer.args}}]}
    return {"content": answer.text if isinstance(answer, contract.Plain) else raw}
