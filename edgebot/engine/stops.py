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
        if found:
            self.hit = True
            return text[: min(found)]
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:n]):
                    keep = n
                    break
        self._held = text[len(text) - keep:]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """End of the answer: a held tail that never became a stop string is text after all."""
        held, self._held = self._held, ""
        return "" if self.hit else held
