"""Stop strings on a streamed answer: the answer ends where one of them begins.

Text arrives in pieces and a stop string may be split across them, so ``StopMatcher.feed`` holds
back a tail that could still become a stop string, exactly as the think splitter holds back a
partial tag. The stop string itself is never emitted (OpenAI's ``stop`` semantics).
"""

from __future__ import annotations

from typing import Sequence


class StopMatcher:
    """Feed answer text; get back what may be emitted. ``hit`` becomes True at the first stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hit = False
        self._held = ""

    def feed(self, text: str) -> str:
        """Text safe to emit now; after a hit, nothing more is ever emitted."""
        if self.hit:
            return ""
        if not self.stops:
            return text
        text = self._held + text
        self._held = ""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        first = min(found) if found else len(text)
        # A stop string that starts before `first` but is not complete yet may still win
        # (stops "<" and "><<" on ">" then "<"): hold from there and decide with more text.
        partial = self._partial_start(text, first)
        if partial is not None:
            self._held = text[partial:]
            return text[:partial]
        if found:
            self.hit = True
        return text[:first]

    def _partial_start(self, text: str, limit: int) -> int | None:
        """The first index before ``limit`` where the rest of ``text`` is a proper prefix of a stop."""
        longest = max(len(s) for s in self.stops)
        for j in range(max(0, len(text) - longest + 1), limit):
            tail = text[j:]
            if any(len(stop) > len(tail) and stop.startswith(tail) for stop in self.stops):
                return j
        return None

    def flush(self) -> str:
        """End of the answer: a held tail that never became a stop string is text after all."""
        held, self._held = self._held, ""
        if self.hit:
            return ""
        found = [i for i in (held.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            return held[: min(found)]
        return held
