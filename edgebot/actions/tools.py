"""The model path's contract: how the actions are offered, the one JSON Schema that constrains the
answer, and reading the answer back.

The model must answer with exactly one JSON object, either a call of a declared action
``{"action": "<name>", "args": {...}}`` or a plain answer ``{"answer": "<text>"}``. The schema is
an ``anyOf`` of one strict object per action (its name a ``const``, its ``args`` the action's
own strict schema) and the answer object; the engine turns it into a llama.cpp grammar through
``SamplingParams.json_schema`` (the same per-job mechanism as the HTTP API's ``response_format``),
so sampling can only produce one of those shapes. The arguments are validated again before
anything is sent (:meth:`Registry.check_call`): the grammar cannot express every JSON Schema rule
(e.g. ranges of non-integer numbers), and a remote backend may not honour it at all.

The same contract serves the HTTP API's function calling (``edgebot/http/tools.py``): a request's
``tools`` are offered and constrained exactly like declared actions, ``plain=False`` when the
request requires a call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence, Union

from edgebot.actions.registry import answer_schema

# answer_schema lives in the registry (which holds it to the schema bounds); re-exported here
__all__ = ["AnswerStream", "Call", "Offer", "Plain", "answer_schema", "offer_text", "read_answer"]


class Offer(Protocol):
    """What can be offered to the model: a declared action or an HTTP request's tool."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def schema(self) -> dict[str, Any]: ...


def _describe_params(schema: dict[str, Any]) -> str:
    parts = []
    for name, spec in schema.get("properties", {}).items():
        if "enum" in spec:
            kind = " | ".join(json.dumps(v, ensure_ascii=False) for v in spec["enum"])
        else:
            kind = spec.get("type", "value")
            lo, hi = spec.get("minimum"), spec.get("maximum")
            if lo is not None or hi is not None:
                kind += f" {'' if lo is None else lo}..{'' if hi is None else hi}"
        parts.append(f"{name}: {kind}")
    return ", ".join(parts)


def offer_text(actions: Sequence[Offer], question: str, heading: str = "You control a robot. Its actions:",
               plain: bool = True) -> str:
    """The user turn that offers the actions (R1 models take no system prompt) around ``question``."""
    lines = [heading]
    for a in actions:
        lines.append(f"- {a.name}({_describe_params(a.schema)}): {a.description}")
    if plain:
        lines.append('Reply with JSON only: {"action": NAME, "args": {...}} to run one action, '
                     'or {"answer": TEXT} to answer without acting.')
    else:
        lines.append('Reply with JSON only: {"action": NAME, "args": {...}} to run one action.')
    lines.append("")
    lines.append(question)
    return "\n".join(lines)


@dataclass(frozen=True)
class Call:
    name: Any
    args: Any


@dataclass(frozen=True)
class Plain:
    text: str


def read_answer(text: str) -> Union[Call, Plain, None]:
    """The model's answer as a call or a plain answer; None when it is not one of the two shapes
    (only possible when the grammar was not applied, e.g. a remote backend ignoring it)."""
    try:
        obj = json.loads(text)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")  # a lone surrogate escape is no character
    except ValueError:  # UnicodeEncodeError is one
        return None
    if not isinstance(obj, dict):
        return None
    if set(obj) == {"answer"} and isinstance(obj["answer"], str):
        return Plain(obj["answer"])
    if "action" in obj and set(obj) <= {"action", "args"}:
        return Call(obj["action"], obj.get("args", {}))
    return None


class AnswerStream:
    """Streams the text of ``{"answer": "..."}`` while the JSON arrives, so a plain answer is spoken
    as it is generated; anything else is only buffered. ``feed`` returns the new answer text."""

    PREFIX = '{"answer":'

    def __init__(self) -> None:
        self.raw = ""
        self._pos: Optional[int] = None  # index in raw of the next unread character of the string
        self._closed = False

    def feed(self, piece: str) -> str:
        self.raw += piece
        if self._closed:
            return ""
        if self._pos is None:
            compact = "".join(self.raw.split())
            if not compact.startswith(self.PREFIX[: len(compact)]) or len(compact) <= len(self.PREFIX):
                return ""
            if compact[len(self.PREFIX)] != '"':
                self._closed = True
                return ""
            self._pos = self.raw.index('"', self.raw.index(":")) + 1
        out = []
        i = self._pos
        while i < len(self.raw):
            c = self.raw[i]
            if c == '"':
                self._closed = True
                i += 1
                break
            if c == "\\":
                if i + 1 >= len(self.raw):
                    break
                esc = self.raw[i + 1]
                if esc == "u":
                    char, used = _unicode_escape(self.raw, i)
                    if used == 0:
                        break  # wait for the rest of the escape (or of its surrogate pair)
                    out.append(char)
                    i += used
                    continue
                out.append({"n": "\n", "t": "\t", "r": "", "b": "", "f": ""}.get(esc, esc))
                i += 2
                continue
            out.append(c)
            i += 1
        self._pos = i
        return "".join(out)


def _unicode_escape(raw: str, i: int) -> tuple[str, int]:
    """The character of the ``\\uXXXX`` escape at ``raw[i]`` and how many characters it used; (``""``,
    0) while it is incomplete. A UTF-16 surrogate pair (``\\ud83d\\ude00``) is one character, as
    ``json.loads`` reads it; a lone surrogate or bad hex becomes U+FFFD, never a lone surrogate
    (which cannot be encoded as UTF-8 for the bus)."""
    if i + 6 > len(raw):
        return "", 0
    try:
        code = int(raw[i + 2:i + 6], 16)
    except ValueError:
        return "\ufffd", 6
    if 0xD800 <= code <= 0xDBFF:
        rest = raw[i + 6:i + 12]
        if len(rest) < 6 and "\\u".startswith(rest[:2]) and not rest.startswith('"'):
            return "", 0  # the low half may still come
        if rest.startswith("\\u"):
            try:
                low = int(rest[2:6], 16)
            except ValueError:
                low = -1
            if 0xDC00 <= low <= 0xDFFF:
                return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), 12
        return "\ufffd", 6
    if 0xDC00 <= code <= 0xDFFF:
        return "\ufffd", 6
    return chr(code), 6
