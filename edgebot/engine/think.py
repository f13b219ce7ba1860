"""Streaming separation of ``<think>…</think>`` from the answer.

Text arrives in arbitrary pieces (a tag may be split across token pieces); ``ThinkSplitter.feed``
returns what can already be attributed to thinking and to the answer, holding back only a tail
that might be the start of a tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

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


@dataclass
class Piece:
    """What one generated token (or one injected text) added to an answer, already split.

    Backends hand the engine these instead of raw text: ``think`` and ``answer`` are the parts
    attributed so far (either may be empty while a partial tag is held back). ``in_think``: the
    token was generated inside the thinking (it counts against the think budget); ``thinking``:
    the stream is still inside the thinking after it; ``holding``: a partial ``</think>`` is held
    back, so the budget waits one more token instead of cutting the tag in two; ``token``: False
    for injected text and the final flush, which are not generated tokens.
    """

    text: str = ""
    think: str = ""
    answer: str = ""
    in_think: bool = False
    thinking: bool = False
    holding: bool = False
    token: bool = True


class PieceSplitter:
    """Turns a runtime's text stream (with ``<think>`` tags) into flagged :class:`Piece` s.

    One per answer, on the backend's side: llama.cpp, RKLLM and a remote server all stream text;
    the engine only ever sees the flags.
    """

    def __init__(self, thinking: bool) -> None:
        self._split = ThinkSplitter(thinking)

    @property
    def thinking(self) -> bool:
        return self._split.thinking

    def _piece(self, text: str, split: Split, in_think: bool, token: bool) -> Piece:
        return Piece(text, split.think, split.answer, in_think, self._split.thinking,
                     bool(self._split._held) and self._split.thinking, token)

    def feed(self, text: str) -> Piece:
        """One generated token's text ("" while a UTF-8 character is incomplete)."""
        before = self._split.thinking
        return self._piece(text, self._split.feed(text), before, True)

    def inject(self, text: str) -> Piece:
        """Text the engine injected after a token (the think budget's ``</think>``)."""
        return self._piece(text, self._split.feed(text), self._split.thinking, False)

    def flush(self) -> Piece:
        """The end of the stream: whatever was held back."""
        before = self._split.thinking
        return self._piece("", self._split.flush(), before, False)

    def send(self, on_piece: Callable[[Piece], Optional[str]], text: str) -> Optional[str]:
        """Feed one token's ``text`` to ``on_piece``; an injection it asks for is fed too and returned."""
        inject = on_piece(self.feed(text))
        if inject:
            on_piece(self.inject(inject))
        return inject
