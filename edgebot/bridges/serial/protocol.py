"""Serial line protocol v1 between edgebot and a microcontroller: parse, format, checksum.

Answer text is escaped and cut into chunks by :mod:`edgebot.bridges.serial.chunking`.

Pure functions and small state machines over bytes; no I/O, no clock (callers pass ``now``).
``docs/serial-protocol.md`` is the firmware author's description of the same rules.

A line is ``VERB ID [ARGS...] [TEXT]*HH`` terminated by ``\\n`` (a ``\\r`` before it is ignored),
at most :data:`MAX_LINE_BYTES` bytes before the terminator, checksum included. ``HH`` is the XOR
of every byte before the ``*`` as two hex digits (the host always writes upper case).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

MAX_LINE_BYTES = 128
"""Longest line in bytes, checksum included, terminator (``\\r\\n`` or ``\\n``) excluded."""
MAX_CHUNK_BYTES = 48
"""Most text bytes in one ``A`` line (after escaping); a UTF-8 character is never split."""
DEFAULT_RX_BYTES = 64
"""Receive buffer assumed when the board's HELLO does not announce ``rx=`` (an AVR's is 64)."""
MIN_RX_BYTES = 24
MAX_ID = 65535
MAX_SEQ = 65535

ERR_CODES: dict[str, str] = {
    # the line itself
    "checksum": "the *HH checksum does not match the line",
    "no-checksum": "this port requires a *HH checksum on every line",
    "line-too-long": f"the line is longer than {MAX_LINE_BYTES} bytes",
    "bad-line": "a NUL or control byte, text that is not UTF-8, or no VERB ID",
    "unknown-verb": "the verb is not HELLO, Q, K, X, S, P or R",
    "bad-id": "the id is not a number in range (1-65535; 0 for HELLO and P)",
    "bad-args": "missing or extra arguments for the verb",
    # what the line asks for
    "unknown-id": "K, X or R for an id that has no answer or action in progress",
    "bad-seq": "K for a chunk that was never sent",
    "duplicate-id": "Q with the id of the question already in progress",
    "busy": "another question is in progress, or edgebotd is unreachable or full; try again",
    "too-long": "the question does not fit the model's context",
    "no-speaker": "S but no speech-out bridge is running",
    "failed": "edgebotd could not answer",
}

_CHECKSUM_RE = re.compile(rb"\*([0-9A-Fa-f]{2})$")
_ID_PREFIX_RE = re.compile(rb"^[A-Za-z]{1,5} +(\d{1,5})(?:[ *]|$)")


def checksum(data: bytes) -> int:
    """XOR of every byte of ``data`` (0-255)."""
    x = 0
    for b in data:
        x ^= b
    return x


# -- frames: what the microcontroller sends ------------------------------------------------------

@dataclass(frozen=True)
class McuHello:
    """``HELLO 0 <firmware> [rx=<bytes>]``: the board (re)started."""

    firmware: str
    rx: Optional[int] = None
    id: int = 0


@dataclass(frozen=True)
class Question:
    """``Q <id> <text>``."""

    id: int
    text: str


@dataclass(frozen=True)
class ChunkAck:
    """``K <id> <seq>``: every chunk up to and including ``seq`` arrived (cumulative)."""

    id: int
    seq: int


@dataclass(frozen=True)
class CancelAnswer:
    """``X <id>``."""

    id: int


@dataclass(frozen=True)
class SayText:
    """``S <id> <text>``: speak ``text`` aloud without asking the model."""

    id: int
    text: str


@dataclass(frozen=True)
class PingMcu:
    """``P <id>``: answered with ``P <id>``."""

    id: int


@dataclass(frozen=True)
class ActionReply:
    """``R <id> ok|err [text]``: the result of the host's ``T <id> ...``."""

    id: int
    ok: bool
    text: str = ""


@dataclass(frozen=True)
class LineError:
    """A line that could not be taken; the host answers ``ERR <id> <code> <text>``."""

    id: int
    code: str
    detail: str


Frame = Union[McuHello, Question, ChunkAck, CancelAnswer, SayText, PingMcu, ActionReply]
Event = Union[Frame, LineError]


def _read_id(body: bytes) -> int:
    """The id of a damaged line when it can still be read, else 0."""
    m = _ID_PREFIX_RE.match(body)
    if m:
        value = int(m.group(1))
        if value <= MAX_ID:
            return value
    return 0


def _parse_number(token: str, lo: int, hi: int) -> Optional[int]:
    if not token.isascii() or not token.isdigit() or len(token) > 5:
        return None
    value = int(token)
    return value if lo <= value <= hi else None


def parse_line(line: bytes, checksum_required: bool = True) -> Optional[Event]:
    """One line without its terminator -> a frame, a LineError, or None for an empty line."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip(b" \t"):
        return None
    if len(line) > MAX_LINE_BYTES:
        return LineError(_read_id(line), "line-too-long", f"{len(line)} bytes, limit {MAX_LINE_BYTES}")
    for i, b in enumerate(line):
        if b < 0x20 or b == 0x7F:
            return LineError(_read_id(line), "bad-line", f"control byte 0x{b:02X} at column {i + 1}")
    m = _CHECKSUM_RE.search(line)
    if m:
        body = line[:m.start()]
        want, got = int(m.group(1), 16), checksum(body)
        if want != got:
            return LineError(_read_id(body), "checksum", f"line says {want:02X}, bytes give {got:02X}")
    elif checksum_required:
        return LineError(_read_id(line), "no-checksum", "end the line with its checksum")
    else:
        body = line
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LineError(_read_id(body), "bad-line", f"not UTF-8 at byte {exc.start + 1}")
    return _parse_fields(text)


def _parse_fields(text: str) -> Event:
    parts = text.split(None, 2)
    if len(parts) < 2:
        return LineError(0, "bad-line" if len(parts) == 0 else "bad-id", "expected VERB ID ...")
    verb, id_token = parts[0].upper(), parts[1]
    rest = parts[2].strip() if len(parts) > 2 else ""
    if verb not in ("HELLO", "Q", "K", "X", "S", "P", "R"):
        return LineError(_parse_number(id_token, 0, MAX_ID) or 0, "unknown-verb", f"unknown verb {parts[0][:12]!r}")
    lo, hi = (0, 0) if verb == "HELLO" else (0, MAX_ID) if verb == "P" else (1, MAX_ID)
    ident = _parse_number(id_token, lo, hi)
    if ident is None:
        return LineError(0, "bad-id", f"{verb} id must be {lo}-{hi}" if lo != hi else "HELLO id must be 0")
    if verb in ("Q", "S"):
        if not rest:
            return LineError(ident, "bad-args", f"{verb} needs text")
        return Question(ident, rest) if verb == "Q" else SayText(ident, rest)
    if verb == "R":
        status, _, detail = rest.partition(" ")
        if status.lower() not in ("ok", "err"):
            return LineError(ident, "bad-args", "R <id> ok|err [text]")
        return ActionReply(ident, status.lower() == "ok", detail.strip())
    args = rest.split()
    if verb == "K":
        seq = _parse_number(args[0], 0, MAX_SEQ) if len(args) == 1 else None
        return ChunkAck(ident, seq) if seq is not None else LineError(ident, "bad-args", "K needs one seq 0-65535")
    if verb in ("X", "P"):
        if args:
            return LineError(ident, "bad-args", f"{verb} takes no arguments")
        return CancelAnswer(ident) if verb == "X" else PingMcu(ident)
    # HELLO 0 <firmware> [rx=<bytes>]
    if not args or len(args) > 2 or args[0].startswith("rx="):
        return LineError(0, "bad-args", "HELLO 0 <firmware> [rx=<bytes>]")
    rx = None
    if len(args) == 2:
        rx = _parse_number(args[1][3:], MIN_RX_BYTES, 65535) if args[1].startswith("rx=") else None
        if rx is None:
            return LineError(0, "bad-args", f"rx= must be {MIN_RX_BYTES}-65535 bytes")
    return McuHello(args[0][:40], rx)


class LineReader:
    """Bytes in, events out; resynchronises at every ``\\n``. Holds at most MAX_LINE_BYTES + 2 bytes."""

    def __init__(self, checksum_required: bool = True) -> None:
        self.checksum_required = checksum_required
        self._buf = bytearray()
        self._overflow = 0  # bytes dropped from the current over-long line; 0 = not overflowing

    @property
    def buffered(self) -> int:
        """Bytes held for the unfinished line."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Every complete line in ``data`` (with what was buffered) as events; never raises."""
        events: list[Event] = []
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            piece = data[start:] if nl < 0 else data[start:nl]
            room = MAX_LINE_BYTES + 2 - len(self._buf)
            if len(piece) > room or self._overflow:
                self._overflow += max(len(piece) - room, 0)
                self._buf += piece[:max(room, 0)]
            else:
                self._buf += piece
            if nl < 0:
                break
            line, overflow = bytes(self._buf), self._overflow
            self._buf.clear()
            self._overflow = 0
            if overflow:
                events.append(LineError(_read_id(line), "line-too-long",
                                        f"{len(line) + overflow} bytes, limit {MAX_LINE_BYTES}"))
            else:
                event = parse_line(line, self.checksum_required)
                if event is not None:
                    events.append(event)
            start = nl + 1
        return events


# -- what the host sends -------------------------------------------------------------------------

def format_line(*fields: str | int | bytes) -> bytes:
    """``fields`` joined by spaces, then ``*HH`` and ``\\n``. Text must hold no ``\\r``/``\\n``."""
    body = b" ".join(f if isinstance(f, bytes) else str(f).encode() for f in fields)
    if b"\n" in body or b"\r" in body:
        raise ValueError("a protocol line cannot contain a line break")
    return body + b"*%02X\n" % checksum(body)


def format_hello(version: str) -> bytes:
    return format_line("HELLO", 0, "edgebot", version)


def format_answer(ident: int, seq: int, text: bytes) -> bytes:
    """``A <id> <seq> <text>``; ``text`` is already escaped (see :func:`edgebot.bridges.serial.chunking.escape_units`)."""
    return format_line("A", ident, seq, text)


def format_end(ident: int, reason: str) -> bytes:
    return format_line("E", ident, reason)


def format_action(ident: int, name: str, args_json: str) -> bytes:
    """``T <id> <action> <args-json>``: run a declared action; ``args_json`` is compact ASCII JSON."""
    return format_line("T", ident, name, args_json)


def format_ping(ident: int) -> bytes:
    return format_line("P", ident)


def format_error(ident: int, code: str, text: str = "", limit: int = DEFAULT_RX_BYTES) -> bytes:
    """``ERR <id> <code> <text>``, the text made ASCII and shortened so the line fits ``limit`` bytes."""
    head = f"ERR {ident} {code}"
    clean = "".join(c if 32 <= ord(c) < 127 and c != "*" else "?" for c in (text or ERR_CODES.get(code, "")))
    room = limit - len(head) - 5  # " " + "*HH" + "\n"
    return format_line(head, clean[:max(room, 0)]) if clean and room > 0 else format_line(head)


def answer_text_limit(ident: int, seq: int, chunk_bytes: int, rx: Optional[int]) -> int:
    """Text bytes allowed in ``A <id> <seq>`` so the line fits the board's receive buffer (bytes)."""
    overhead = len(f"A {ident} {seq} ") + 4  # "*HH\n"
    return max(4, min(chunk_bytes, MAX_CHUNK_BYTES, (rx or DEFAULT_RX_BYTES) - overhead))
