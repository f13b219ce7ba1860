"""The one codec of the bus: typed messages <-> JSON lines.

``encode`` gives ``{"type": ..., "data": {...}}\\n`` as UTF-8 bytes; ``decode`` turns one line
back into a typed message or raises :class:`ProtocolError` with a code from
``messages.ERROR_CODES`` and a message a person can act on.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from functools import lru_cache
from typing import Any, Literal, Union

from edgebot.bus.messages import BY_TYPE, Message

MAX_LINE_BYTES = 1 << 20  # bytes: what clients accept; the hub enforces its own [bus] max_line_bytes


class ProtocolError(Exception):
    """A line that is not a valid message. ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, msg_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id


def encode(msg: Message) -> bytes:
    """One message as a JSON line (UTF-8, newline-terminated)."""
    data = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    data = {k: v for k, v in data.items() if v is not None}
    return (json.dumps({"type": msg.TYPE, "data": data}, ensure_ascii=False, separators=(",", ":"),
                       allow_nan=False) + "\n").encode()


@lru_cache(maxsize=None)
def _hints(cls: type[Message]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or omitted)"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    if origin is dict:
        return "an object"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false"}.get(tp, str(tp))


def _check(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_check(a, value) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_check(item, v) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def from_dict(type_name: str, data: dict[str, Any]) -> Message:
    """Build a typed message from its envelope parts, checking every field."""
    cls = BY_TYPE.get(type_name)
    msg_id = data.get("id") if isinstance(data.get("id"), str) else None
    if cls is None:
        raise ProtocolError("unknown-type", f"unknown message type {type_name!r}; known: {', '.join(sorted(BY_TYPE))}",
                            msg_id)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ProtocolError("bad-field", f"{type_name}: unknown field(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(fields) or 'none'}", msg_id)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        if name not in data:
            if required:
                raise ProtocolError("bad-field", f"{type_name}: missing field {name!r} ({_type_name(hints[name])})",
                                    msg_id)
            continue
        value = data[name]
        if not _check(hints[name], value):
            raise ProtocolError("bad-field", f"{type_name}: field {name!r} must be {_type_name(hints[name])}, "
                                f"got {json.dumps(value)[:80]}", msg_id)
        if hints[name] is float and isinstance(value, int):
            value = float(value)
        kwargs[name] = value
    return cls(**kwargs)


def _no_constant(name: str) -> Any:
    """``json.loads`` hook: NaN, Infinity and -Infinity are not JSON (RFC 8259), so refuse them."""
    raise ValueError(f"{name} is not a JSON number; send a finite number or omit the field")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def decode(line: bytes | str) -> Message:
    """Parse one line (with or without its newline) into a typed message."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("bad-json", f"line is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        obj = json.loads(line, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("bad-json", f"line is not JSON: {exc}") from None
    except ValueError as exc:  # NaN/Infinity, or an integer over Python's 4,300-digit limit
        why = str(exc) if "JSON number" in str(exc) else "an integer has more than 4,300 digits; send a shorter number"
        raise ProtocolError("bad-json", f"line is not JSON edgebot accepts: {why}") from None
    if _SURROGATE_ESCAPE.search(line):  # a \ud800-style escape may leave a lone surrogate, which is no character
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("bad-json", "line contains a lone UTF-16 surrogate escape (\\ud800-\\udfff), "
                                            "which is not a character") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad-envelope", 'a line must be an object {"type": ..., "data": {...}}')
    type_name = obj.get("type")
    data = obj.get("data", {})
    if not isinstance(type_name, str):
        raise ProtocolError("bad-envelope", 'missing "type" (a string)')
    if not isinstance(data, dict):
        raise ProtocolError("bad-envelope", '"data" must be an object')
    extra = sorted(set(obj) - {"type", "data"})
    if extra:
        raise ProtocolError("bad-envelope", f"unexpected envelope key(s) {', '.join(extra)}")
    return from_dict(type_name, data)
