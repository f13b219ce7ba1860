"""The bus's framing: one JSON envelope ``{"type": ..., "data": {...}}`` per UTF-8 line.

The light half of the codec, on ``json`` alone: lines <-> ``(type, data)`` with the envelope
checked. ``codec`` builds typed messages on top of it; edgebot-cli's blocking client uses it
directly, so the CLI starts without the message classes or ``typing`` machinery.
"""

from __future__ import annotations

import json
import re

TYPE_CHECKING = False  # typing itself costs ~2 ms at edgebot-cli's start-up; the annotations are strings
if TYPE_CHECKING:
    from typing import Any

MAX_LINE_BYTES = 1 << 20  # bytes: what clients accept; the hub enforces its own [bus] max_line_bytes


class ProtocolError(Exception):
    """A line that is not a valid message. ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, msg_id: "str | None" = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id


def encode_envelope(type_name: str, data: dict[str, Any]) -> bytes:
    """One envelope as a JSON line (UTF-8, newline-terminated); ``None`` fields are left out."""
    data = {k: v for k, v in data.items() if v is not None}
    return (json.dumps({"type": type_name, "data": data}, ensure_ascii=False, separators=(",", ":"),
                       allow_nan=False) + "\n").encode()


def _no_constant(name: str) -> Any:
    """``json.loads`` hook: NaN, Infinity and -Infinity are not JSON (RFC 8259), so refuse them."""
    raise ValueError(f"{name} is not a JSON number; send a finite number or omit the field")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def decode_envelope(line: "bytes | str") -> tuple[str, dict[str, Any]]:
    """Parse one line (with or without its newline) into ``(type, data)``; the fields are not checked."""
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
    return type_name, data
