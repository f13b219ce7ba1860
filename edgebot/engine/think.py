"""Streaming separation of ``<think>…</think>`` from the answer.

Text arrives in arbitrary pieces (a tag may be split across token pieces); ``ThinkSplitter.feed``
returns what can already be attributed to thinking and to the answer, holding back only a tail
that might be the start of a tag.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


@dataclass
class Split:
    """Text attributed by one ``feed``: ``think`` and ``answer`` (either may be empty)."""

    think: str = ""
    answer: str = ""


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkSplitter:
    """State machine over the streamed text.

    ``thinking`` starts True when the rendered prompt already ends with ``<think>`` (R1-distill
    templates do), so only the closing tag appears in the stream. Whitespace right after
    ``</think>`` (R1 writes a blank line there) is dropped from the answer.
    """

    def __init__(self, thinking: bool) -> None:
        self.thinking = thinking
        self.closed = False  # a </think> has been seen
        self._held = ""
        self._answer_started = False

    def feed(self, piece: str) -> Split:
        text = self._held + piece
        self._held = ""
        out = Split()
        while text:
            if self.thinking:
                idx = text.find(CLOSE_TAG)
                if idx >= 0:
                    out.think += text[:idx]
                    text = text[idx + len(CLOSE_TAG):]
                    self.thinking = False
                    self.closed = True
                    continue
                keep = _partial_suffix(text, CLOSE_TAG)
                out.think += text[: len(text) - keep]
                self._held = text[len(text) - keep:]
                break
            idx = text.find(OPEN_TAG) if not self._answer_started else -1
            if idx >= 0 and not text[:idx].strip():
                # A model that opens its own <think> block before answering.
                text = text[idx + len(OPEN_TAG):]
                self.thinking = True
                continue
            keep = _partial_suffix(text, OPEN_TAG) if not self._answer_started else 0
            emit = text[: len(text) - keep]
            self._held = text[len(text) - keep:]
            if not self._answer_started:
                emit = emit.lstrip()
                if emit:
                    self._answer_started = True
            out.answer += emit
            break
        return out

    def flush(self) -> Split:
        """End of stream: whatever was held back belongs to the current part."""
        held, self._held = self._held, ""
        if self.thinking:
            return Split(think=held)
        return Split(answer=held if self._answer_started else held.lstrip())
