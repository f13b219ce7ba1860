"""The one codec of the bus: typed messages <-> JSON lines.

``encode`` gives ``{"type": ..., "data": {...}}\\n`` as UTF-8 bytes; ``decode`` turns one line
back into a typed message or raises :class:`ProtocolError` with a code from
``messages.ERROR_CODES`` and a message a person can act on. The framing itself (line <-> envelope)
is ``framing``; this module adds the typed messages and their field checks.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from functools import lru_cache
from typing import Any, Literal, Union

from edgebot.bus.framing import MAX_LINE_BYTES, ProtocolError, decode_envelope, encode_envelope
from edgebot.bus.messages import BY_TYPE, Message

__all__ = ["MAX_LINE_BYTES", "ProtocolError", "encode", "decode", "from_dict"]


def encode(msg: Message) -> bytes:
    """One message as a JSON line (UTF-8, newline-terminated)."""
    return encode_envelope(msg.TYPE, {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)})


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
    hints = _hints(cls)  # type: ignore[arg-type]  # message classes hash by identity
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


def decode(line: bytes | str) -> Message:
    """Parse one line (with or without its newline) into a typed message."""
    return from_dict(*decode_envelope(line))
