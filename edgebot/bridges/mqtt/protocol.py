"""edgebot's MQTT topics and payloads, as pure functions (no broker, no bus).

Topics under a prefix (``[mqtt] prefix``, default ``edgebot``):

- ``PREFIX/ask``: a question, plain UTF-8 text or a JSON object
  ``{"text": ..., "id": ..., "session": ..., "think": true|false, "speak": true|false, "max_tokens": N}``.
- ``PREFIX/answer/ID``: the answer as JSON messages: ``{"type": "start", ...}``, then ``{"type": "delta",
  "text": ...}`` (and ``{"type": "think", "text": ...}`` with ``think: true``), then ``{"type": "end", "reason": ...,
  "text": <whole answer>, "stats": {...}}``.
- ``PREFIX/status``: ``online`` / ``offline`` (retained; ``offline`` is also the last will).
- ``PREFIX/cancel``: an answer's id (plain text or ``{"id": ...}``).
- ``PREFIX/error``: ``{"code": ..., "message": ..., "topic": ..., "id": ...}`` for anything refused.
- ``PREFIX/action/NAME``: a declared action's arguments (JSON object) for the device that runs it;
  ``PREFIX/action/NAME/result``: its reply, ``ok <text>`` / ``err <text>`` or ``{"ok": true, "text": ...}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
"""Ids the asker may choose: they become a topic level, so no ``/``, ``+`` or ``#``."""
SESSION_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
ONLINE, OFFLINE = "online", "offline"


class PayloadError(ValueError):
    """A payload that cannot be taken; ``code`` is a bus error code, the message says how to fix it."""

    def __init__(self, code: str, message: str, ident: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.ident = ident


@dataclass(frozen=True)
class Topics:
    """Every topic of one prefix."""

    prefix: str

    @property
    def ask(self) -> str:
        return f"{self.prefix}/ask"

    @property
    def cancel(self) -> str:
        return f"{self.prefix}/cancel"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def error(self) -> str:
        return f"{self.prefix}/error"

    @property
    def action_results(self) -> str:
        """The subscription for every action's result."""
        return f"{self.prefix}/action/+/result"

    def answer(self, ident: str) -> str:
        return f"{self.prefix}/answer/{ident}"

    def action(self, name: str) -> str:
        return f"{self.prefix}/action/{name}"

    def result_action(self, topic: str) -> Optional[str]:
        """The action name of a ``PREFIX/action/NAME/result`` topic, else None."""
        head, tail = f"{self.prefix}/action/", "/result"
        if topic.startswith(head) and topic.endswith(tail) and len(topic) > len(head) + len(tail):
            name = topic[len(head):-len(tail)]
            return name if "/" not in name else None
        return None


def check_prefix(prefix: str) -> str:
    """The prefix, or ValueError: it must be a plain topic path (no wildcards, no leading/trailing ``/``)."""
    if not prefix or prefix != prefix.strip("/") or set(prefix) & {"+", "#", "\0"} or "//" in prefix:
        raise ValueError(f"[mqtt] prefix {prefix!r}: use a topic path such as edgebot or school/robot1 "
                         f"(no wildcards + or #, no leading or trailing /)")
    return prefix


@dataclass(frozen=True)
class AskRequest:
    """A question read from ``PREFIX/ask``. ``ident`` is None when the asker gave none."""

    text: str
    ident: Optional[str] = None
    session: Optional[str] = None
    think: bool = False
    speak: bool = False
    max_tokens: Optional[int] = None


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("bad-json", "the payload is not UTF-8 text") from None


def _field(obj: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    """``obj[name]`` when it is one of ``kinds`` (a bool is not an int here), None when absent."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise PayloadError("bad-field", f"{name} must be {what}, got {json.dumps(value)[:40]}",
                           obj.get("id") if isinstance(obj.get("id"), str) else None)
    return value


def parse_ask(payload: bytes, max_bytes: int) -> AskRequest:
    """A ``PREFIX/ask`` payload: plain text, or a JSON object when it starts with ``{``."""
    if len(payload) > max_bytes:
        raise PayloadError("too-long", f"the ask is {len(payload)} bytes, more than [mqtt] max_payload_bytes "
                                       f"({max_bytes})")
    text = _text(payload).strip()
    if not text.startswith("{"):
        if not text:
            raise PayloadError("bad-field", "the question is empty: publish the question's text, or JSON "
                                            "{\"text\": \"...\", \"id\": \"...\"}")
        return AskRequest(text=text)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        why = f"{exc.msg} at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise PayloadError("bad-json", f"the ask starts with {{ but is not JSON ({why}); send plain text or a "
                                       f"JSON object") from None
    if not isinstance(obj, dict):
        raise PayloadError("bad-json", "the ask must be plain text or a JSON object")
    ident = _field(obj, "id", (str,), "a string")
    if ident is not None and not ID_RE.match(ident):
        raise PayloadError("bad-field", f"id {ident[:70]!r}: use 1-64 letters, digits, _ . : or - (it becomes "
                                        f"the topic PREFIX/answer/ID)")
    unknown = sorted(set(obj) - {"id", "text", "session", "think", "speak", "max_tokens"})
    if unknown:
        raise PayloadError("bad-field", f"unknown field(s) {', '.join(unknown)}; allowed: text, id, session, "
                                        f"think, speak, max_tokens", ident)
    question = _field(obj, "text", (str,), "a string")
    if not question or not question.strip():
        raise PayloadError("bad-field", "text is missing or empty: {\"text\": \"your question\"}", ident)
    session = _field(obj, "session", (str,), "a string")
    if session is not None and not SESSION_RE.match(session):
        raise PayloadError("bad-field", f"session {session[:70]!r}: use 1-64 letters, digits, _ . : @ or -", ident)
    max_tokens = _field(obj, "max_tokens", (int,), "an integer")
    if max_tokens is not None and max_tokens < 1:
        raise PayloadError("bad-field", "max_tokens must be at least 1", ident)
    think = _field(obj, "think", (bool, str), "true or false")
    if isinstance(think, str):
        if think not in ("show", "hide"):
            raise PayloadError("bad-field", "think must be true or false", ident)
        think = think == "show"
    return AskRequest(text=question, ident=ident, session=session, think=bool(think),
                      speak=bool(_field(obj, "speak", (bool,), "true or false")), max_tokens=max_tokens)


def parse_cancel(payload: bytes) -> str:
    """A ``PREFIX/cancel`` payload: the id, plain or ``{"id": ...}``."""
    text = _text(payload).strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            raise PayloadError("bad-json", "the cancel starts with { but is not JSON: send the id or {\"id\": ...}") \
                from None
        given = obj.get("id") if isinstance(obj, dict) else None
        if not isinstance(given, str):
            raise PayloadError("bad-field", "cancel needs {\"id\": \"<the ask's id>\"}")
        text = given
    if not ID_RE.match(text):
        raise PayloadError("bad-field", f"cancel: {text[:70]!r} is not an answer id")
    return text


def parse_result(payload: bytes) -> tuple[bool, str]:
    """An action's result: ``ok <text>``, ``err <text>`` or ``{"ok": bool, "text": str}``."""
    text = _text(payload).strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool) or \
                not isinstance(obj.get("text", ""), str):
            raise PayloadError("bad-field", "an action result is 'ok <text>', 'err <text>' or "
                                            "{\"ok\": true, \"text\": \"...\"}")
        return obj["ok"], obj.get("text", "")[:200]
    word, _, rest = text.partition(" ")
    if word not in ("ok", "err"):
        raise PayloadError("bad-field", "an action result starts with ok or err: 'ok LED on'")
    return word == "ok", rest.strip()[:200]


def message(kind: str, ident: str, **fields: Any) -> bytes:
    """One JSON message on ``PREFIX/answer/ID``: ``type`` and ``id`` first."""
    return json.dumps({"type": kind, "id": ident, **fields}, ensure_ascii=False, separators=(",", ":")).encode()


def error(code: str, text: str, topic: str, ident: Optional[str] = None) -> bytes:
    """A ``PREFIX/error`` payload."""
    body: dict[str, Any] = {"code": code, "message": text, "topic": topic}
    if ident is not None:
        body["id"] = ident
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
