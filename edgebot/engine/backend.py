"""The interface every inference backend implements (llama.cpp, a remote OpenAI-compatible server).

The scheduler owns queueing, sessions, the think splitter and stats; a backend only turns a
conversation into tokens and streams text pieces for it. All methods except ``load``, ``info`` and
``check_grammar`` are called from the single engine worker thread.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Literal, Optional

from edgebot.config.schema import default
from edgebot.engine.prompt import Turn
from edgebot.engine.think import Piece
from edgebot.engine.schema_limits import check_schema

StopReason = Literal["stop", "length", "cancelled", "error"]

# Called once per generated token with that token's text already split into thinking and answer
# (a ``Piece``, made by the backend's ``PieceSplitter``); returns text to inject into the stream
# after it (e.g. "\n</think>" when the think budget is spent), or None. Injected text and the
# end of the stream come back as pieces with ``token`` False.
PieceCallback = Callable[[Piece], Optional[str]]


class ModelError(Exception):
    """The model cannot be loaded; the message names the file and how to fix it."""


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn. ``json_schema`` (JSON text of a JSON Schema) constrains the *answer*
    (what follows the thinking) to a document valid against it: a grammar for llama.cpp, the
    ``response_format`` for a remote server."""

    temperature: float = default("llm.temperature")
    top_p: float = default("llm.top_p")
    top_k: int = default("llm.top_k")
    seed: int = default("llm.seed")
    json_schema: Optional[str] = None


@dataclass
class PreparedPrompt:
    """A rendered, tokenized prompt. ``starts_thinking``: the prompt ends with ``<think>``.

    Backends whose runtime tokenizes by itself (RKLLM takes text) leave ``tokens`` empty and set
    ``text`` (the rendered prompt) and ``count`` (their estimate of its length in tokens).
    """

    tokens: list[int]
    starts_thinking: bool
    text: Optional[str] = None
    count: Optional[int] = None
    key: Optional[str] = None
    """The conversation this prompt continues (a session name), set by the engine; a backend that
    keeps a KV sequence per conversation (llama.cpp) reuses that sequence. None: a one-off prompt."""
    think_at: Optional[int] = None
    """With ``starts_thinking``: where the generation prompt's trailing ``<think>`` begins in
    ``tokens`` (what the conversation's history will no longer hold once the answer is kept)."""
    turn_ends: Optional[list[int]] = None
    """Token offset in ``tokens`` right after each earlier turn's answer (None: not known), so the
    engine can choose how many old turns to drop without rendering the prompt again per turn."""
    dropped: Optional[tuple[int, int]] = None
    """Set by the engine when it dropped old turns: these ``tokens`` are the previous prompt of this
    conversation with ``(start, count)`` tokens removed at ``start``, so a backend can remove them
    from its KV cache and shift what follows instead of re-reading it (llama-server's context shift)."""

    @property
    def n_tokens(self) -> int:
        """The prompt's length in tokens (an estimate when the backend does not tokenize)."""
        return self.count if self.count is not None else len(self.tokens)


@dataclass
class GenerationResult:
    """What one generation did. Token counts in tokens."""

    reason: StopReason
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    backend: str = ""
    """Which backend produced the answer when that can vary (``remote`` or ``local``); "" = the only one."""
    message: str = ""
    """With reason ``error``: what failed, for a person."""
    answer_tokens: Optional[tuple[int, ...]] = None
    answer_text: str = ""
    """The answer's generated tokens (whitespace-only tokens at either end left out) and their text,
    when the backend can reuse them in the next prompt (``Turn.answer_tokens``)."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    model: str
    n_ctx: int


class Backend(ABC):
    """A loaded model that can render, count and generate."""

    load_progress: Optional[float] = None
    """Percent (0-100) of the model loaded, while ``load`` runs, for backends that can tell; else None."""

    @abstractmethod
    def load(self) -> None:
        """Load the model; raise ModelError with an actionable message on failure."""

    @abstractmethod
    def info(self) -> BackendInfo: ...

    @abstractmethod
    def prepare(self, turns: list[Turn], question: Optional[str], persona: str = "") -> PreparedPrompt:
        """Render and tokenize; ``question=None`` renders the history alone (for ``prefill``)."""

    @abstractmethod
    def extend(self, prompt: PreparedPrompt, text: str) -> PreparedPrompt:
        """``prompt`` followed by template ``text`` (e.g. ``</think>`` to skip thinking), not thinking after it."""

    @abstractmethod
    def generate(self, prompt: PreparedPrompt, params: SamplingParams, max_tokens: int,
                 cancel: threading.Event, on_piece: PieceCallback) -> GenerationResult:
        """Generate up to ``max_tokens`` tokens, reusing whatever prefix of ``prompt`` is cached.

        Checks ``cancel`` between prompt batches and after every token.
        """

    @abstractmethod
    def prefill(self, prompt: PreparedPrompt, stop: Callable[[], bool]) -> int:
        """Bring the cache to ``prompt`` (batch by batch, giving up when ``stop()``); returns tokens evaluated."""

    max_parallel = 1
    """How many answers this backend can generate together (``open``/``step``/``finish``); 1: only
    ``generate``, one at a time (RKLLM, remote)."""

    def forget(self, key: str) -> None:
        """The conversation ``key`` (a session) ended: free whatever the backend keeps for it."""

    def kv_status(self) -> dict[str, object]:
        """What the backend's KV cache holds, for ``status-report`` ({} = nothing to say)."""
        return {}

    def check_grammar(self, json_schema: str) -> None:
        """Raise ValueError unless an answer can be constrained by ``json_schema`` (JSON text).

        Safe to call from any thread (the HTTP layer calls it from a worker before queueing a job).
        Here: the bounds of :mod:`edgebot.engine.schema_limits` (a SchemaLimitError is a ValueError);
        a backend that builds grammars adds its own checks."""
        check_schema(json.loads(json_schema))

    def close(self) -> None:
        """Free the model."""
