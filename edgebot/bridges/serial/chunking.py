"""Answer text for the serial line: escaping (no line breaks on the wire), transliteration for
character LCDs, and cutting into ``A`` chunks of whole UTF-8 characters (bytes, seconds)."""

from __future__ import annotations

import unicodedata
from typing import Optional

_ASCII_FALLBACK = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2026": "...", "\u00a0": " ", "\u00d7": "x", "\u00f7": "/",
    "\u00b0": " deg", "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u00f8": "o", "\u00d8": "O", "\u0153": "oe",
    "\u20ac": "EUR", "\u00a3": "GBP", "\u2022": "*", "\u00b7": ".",
}


def to_ascii(text: str) -> str:
    """Transliterate for character LCDs: accents dropped, typographic punctuation simplified,
    anything else without an ASCII form becomes ``?``."""
    out = []
    for c in text:
        if c.isascii():
            out.append(c)
        elif c in _ASCII_FALLBACK:
            out.append(_ASCII_FALLBACK[c])
        else:
            base = "".join(d for d in unicodedata.normalize("NFKD", c) if d.isascii())
            if base:
                out.append(base)
            elif not unicodedata.combining(c):
                out.append("?")
    return "".join(out)


def is_boundary(c: str) -> bool:
    """A chunk may end after ``c`` without cutting a word (space, punctuation, CJK)."""
    return not c.isalnum() or ord(c) >= 0x2E80


def escape_units(text: str) -> list[tuple[bytes, bool]]:
    """``text`` as wire units ``(bytes, boundary_after)``: one UTF-8 character or escape each.

    ``\\n`` is sent as the two bytes ``\\\\n`` and a backslash as ``\\\\\\\\``; tabs become spaces and
    other control characters are dropped, so an ``A`` line never holds a line break.
    """
    units: list[tuple[bytes, bool]] = []
    for c in text:
        if c == "\n":
            units.append((b"\\n", True))
        elif c == "\\":
            units.append((b"\\\\", True))
        elif c == "\t":
            units.append((b" ", True))
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            continue
        else:
            units.append((c.encode("utf-8", "replace"), is_boundary(c)))
    return units


def unescape(text: bytes) -> str:
    """The reverse of the escaping, as firmware would do it (used by tests and the bench)."""
    return text.decode("utf-8").replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")


class Chunker:
    """Answer text waiting to be sent, cut into chunks of whole units.

    A chunk is ready when ``limit`` bytes are waiting (sent at once), when the answer is complete,
    or when the oldest waiting text has waited ``flush_s`` seconds: then it goes up to the last
    word boundary, or whole when it holds none (a lone word is never held for the next token).
    So no text waits much longer than ``flush_s`` for company, and never for 48 bytes to pile up.
    """

    def __init__(self, flush_s: float, ascii_only: bool = False) -> None:
        self.flush_s = flush_s
        self.ascii_only = ascii_only
        self._units: list[tuple[bytes, bool, float]] = []  # (bytes, boundary_after, arrival time)
        self.pending_bytes = 0

    def push(self, text: str, now: float) -> None:
        if self.ascii_only:
            text = to_ascii(text)
        for data, boundary in escape_units(text):
            self._units.append((data, boundary, now))
            self.pending_bytes += len(data)

    def clear(self) -> None:
        self._units.clear()
        self.pending_bytes = 0

    def _cut(self, limit: int, boundary_only: bool) -> int:
        """How many units fit ``limit`` bytes (up to the last boundary when ``boundary_only``)."""
        size, n, last_boundary = 0, 0, 0
        for data, boundary, _ in self._units:
            if size + len(data) > limit:
                break
            size += len(data)
            n += 1
            if boundary:
                last_boundary = n
        return last_boundary if boundary_only else n

    def take(self, limit: int, now: float, final: bool = False) -> Optional[bytes]:
        """The next chunk of at most ``limit`` bytes if one is ready at ``now`` (seconds), else None."""
        if not self._units:
            return None
        n = 0
        age = now - self._units[0][2] + 1e-6  # slack: a wake-up exactly at the deadline counts
        if self.pending_bytes >= limit or final:
            n = self._cut(limit, boundary_only=False)
        elif age >= self.flush_s:
            n = self._cut(limit, boundary_only=True) or self._cut(limit, boundary_only=False)
        if n == 0:
            return None
        chunk = b"".join(u[0] for u in self._units[:n])
        del self._units[:n]
        self.pending_bytes -= len(chunk)
        return chunk

    def next_ready_at(self) -> Optional[float]:
        """When (seconds, same clock as ``now``) a partial chunk may become ready, or None."""
        return self._units[0][2] + self.flush_s if self._units else None
