"""One job's answer while it is generated: fitting its prompt, turning the backend's pieces into
``JobDelta`` s, the think budget, stop strings, stats, and keeping the turn in its session.

The same object serves a backend that generates one answer at a time (``generate`` calls
``on_piece``) and one that decodes several together (the engine calls ``on_piece`` through the
backend's streams); the engine only decides *when* each answer runs.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Optional

from edgebot.engine.backend import GenerationResult, PreparedPrompt
from edgebot.engine.jobs import Job, JobDelta, JobEnded, JobStarted
from edgebot.engine.prompt import Turn
from edgebot.engine.sessions import Session
from edgebot.engine.stops import StopMatcher
from edgebot.engine.think import CLOSE_TAG, Piece
from edgebot.engine.trim import fit

if TYPE_CHECKING:
    from edgebot.engine.scheduler import Engine

log = logging.getLogger(__name__)

# Injected when the think budget is spent. R1 models end thinking with "\n</think>" and write
# the blank line before the answer themselves.
BUDGET_CLOSE = "\n" + CLOSE_TAG
HOLD_TOKENS = 4
"""Tokens the think budget waits past its limit while a partial ``</think>`` is held back."""


def stats_for(job: Job, result: Optional[GenerationResult] = None, think_tokens: int = 0,
              marks: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """``answer-end.stats``: token counts in tokens, times in milliseconds since the ask."""
    stats: dict[str, Any] = {"prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0,
                             "think_tokens": think_tokens, "ttft_ms": None, "answer_ms": None,
                             "tokens_per_s": None, "backend": None}
    if result is not None:
        stats.update(prompt_tokens=result.prompt_tokens, cached_tokens=result.cached_tokens,
                     completion_tokens=result.completion_tokens, backend=result.backend or None)
    if marks:
        ms = lambda t: round((t - job.submitted) * 1000.0, 1)  # noqa: E731
        if "first" in marks:
            stats["ttft_ms"] = ms(marks["first"])
            span = marks["last"] - marks["first"]
            if result is not None and result.completion_tokens > 1 and span > 0:
                stats["tokens_per_s"] = round((result.completion_tokens - 1) / span, 2)
        if "answer" in marks:
            stats["answer_ms"] = ms(marks["answer"])
    return stats


class Answer:
    """The answer to one ``job``; ``begin`` → ``on_piece`` per piece → ``end``."""

    def __init__(self, engine: "Engine", job: Job) -> None:
        self.engine = engine
        self.job = job
        self.session: Optional[Session] = None
        self.text: list[str] = []
        self.marks: dict[str, float] = {}
        self.think_tokens = 0
        self.thinking = False
        self.stops = StopMatcher(job.stop)

    def begin(self) -> Optional[PreparedPrompt]:
        """Fit the prompt and send ``JobStarted``; None when the job has ended already (cancelled, too long)."""
        job, engine = self.job, self.engine
        if job.cancel.is_set():
            job.end(JobEnded(job.id, "cancelled", stats_for(job)))
            return None
        with engine._cond:
            self.session = engine.sessions.get(job.session) if job.session and job.history is None else None
            turns = list(job.history) if job.history is not None else \
                list(self.session.turns) if self.session else []
        n_ctx = engine.backend.info().n_ctx
        persona = engine.settings.persona
        prompt, kept = fit(lambda t, q: engine.backend.prepare(t, q, persona), turns, job.text, n_ctx,
                           min(job.max_tokens, engine.settings.answer_reserve))
        if prompt.n_tokens >= n_ctx - 1:
            job.end(JobEnded(job.id, "error", stats_for(job),
                             f"the question is {prompt.n_tokens} tokens but the context holds {n_ctx}; "
                             f"ask something shorter", "too-long"))
            return None
        dropped = len(turns) - len(kept)
        if dropped and self.session is not None:
            with engine._cond:
                self.session.turns[:len(turns)] = kept
                self.session.trimmed_turns += dropped
            log.info("session %s: dropped %d old turn(s) to fit %d tokens (%s)", job.session, dropped, n_ctx,
                     "shifted out of the KV cache" if prompt.dropped else "re-read")
        prompt.key = self.session.name if self.session is not None else None
        if prompt.starts_thinking and job.think_budget <= 0:
            prompt = engine.backend.extend(prompt, BUDGET_CLOSE)  # no thinking at all: close it before it starts
        self.thinking = prompt.starts_thinking
        engine._progress = time.monotonic()
        job.sink(JobStarted(job.id, job.label))
        return prompt

    def _emit(self, think: str, text: str) -> None:
        job, stops = self.job, self.stops
        if think and job.show_think:
            job.sink(JobDelta(job.id, think, think=True))
        if text and not stops.hit:
            text = stops.feed(text)
            if stops.hit:
                job.cancel.set()  # a stop string ends the generation; its reason becomes "stop" in end()
        if text:
            self.marks.setdefault("answer", time.monotonic())
            self.text.append(text)
            job.sink(JobDelta(job.id, text))

    def on_piece(self, piece: Piece) -> Optional[str]:
        """One piece from the backend; returns text to inject (the think budget's ``</think>``)."""
        job = self.job
        if piece.token:
            now = time.monotonic()
            self.marks.setdefault("first", now)
            self.marks["last"] = self.engine._progress = now
            self.think_tokens += piece.in_think
        self.thinking = piece.thinking
        self._emit(piece.think, piece.answer)
        # A partial </think> held back is probably the model closing its thinking itself: give it
        # a few more tokens rather than cutting the tag in two.
        if piece.token and self.thinking and self.think_tokens >= job.think_budget and \
                not (piece.holding and self.think_tokens < job.think_budget + HOLD_TOKENS):
            return BUDGET_CLOSE
        return None

    def end(self, result: GenerationResult) -> None:
        """The generation is over: flush, keep the turn, send ``JobEnded``."""
        job, engine = self.job, self.engine
        held = self.stops.flush()
        if held:
            self.marks.setdefault("answer", time.monotonic())
            self.text.append(held)
            job.sink(JobDelta(job.id, held))
        if self.stops.hit and result.reason == "cancelled":
            result.reason = "stop"
        stats = stats_for(job, result, self.think_tokens, self.marks)
        if result.reason == "error":
            job.end(JobEnded(job.id, "error", stats, result.message or "the backend failed", "backend"))
            return
        message = ""
        if result.reason == "length" and self.thinking:
            message = (f"the answer ran out of tokens while still thinking (max_tokens={job.max_tokens}); "
                       f"raise max_tokens or lower the think budget")
        if result.reason in ("stop", "length") and self.session is not None and self.text:
            with engine._cond:
                text = "".join(self.text).strip()
                # the generated tokens stand for the stripped text when they spell it (a last token such
                # as ".\n\n" carries whitespace the text lost): the sequence holds them, so they are reused
                same = result.answer_tokens and result.answer_text.strip() == text
                tokens = result.answer_tokens if same else None
                self.session.turns.append(Turn(job.text, text, tokens))
                engine._rebase = self.session.name
        if stats.get("tokens_per_s"):
            engine.last_tokens_per_s = stats["tokens_per_s"]
        job.end(JobEnded(job.id, result.reason, stats, message))
