"""The engine: one worker thread that owns the backend, a bounded priority queue, cancel,
sessions, the think splitter and budget, and per-answer stats.

Events go out through each job's ``sink`` callable, called on the worker thread (the daemon
hands them to its event loop). Every accepted job ends with exactly one ``JobEnded``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable, Optional

from edgebot.engine.backend import Backend, ModelError
from edgebot.engine.jobs import EngineBusy, EngineNotReady, EngineSettings, Job, JobDelta, JobEnded, \
    JobStarted
from edgebot.engine.prompt import Turn
from edgebot.engine.sessions import SessionStore
from edgebot.engine.stops import StopMatcher
from edgebot.engine.think import CLOSE_TAG, ThinkSplitter

log = logging.getLogger(__name__)

# Injected when the think budget is spent. R1 models end thinking with "\n</think>" and write
# the blank line before the answer themselves.
BUDGET_CLOSE = "\n" + CLOSE_TAG


class Engine:
    """Owns the backend on one thread; ``submit``/``cancel``/``status`` are thread-safe."""

    def __init__(self, backend: Backend, settings: EngineSettings,
                 on_state: Callable[[str, str], None] = lambda state, msg: None) -> None:
        self.backend = backend
        self.settings = settings
        self.on_state = on_state
        self.state = "starting"  # starting | loading | ready | failed | stopped
        self.error = ""
        self.sessions = SessionStore(settings.session_idle_s, max_sessions=settings.max_sessions)
        self.last_tokens_per_s: Optional[float] = None
        self._queue: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._current: Optional[Job] = None
        self._cond = threading.Condition()
        self._stopping = False
        self._rebase: Optional[str] = None  # session whose canonical history should be cached
        self._rebasing = False
        self._progress = time.monotonic()  # when the running job last started or produced a token
        self._thread = threading.Thread(target=self._run, name="edgebot-engine", daemon=True)

    # -- public, any thread --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``. A full queue refuses it (EngineBusy) unless a waiting job of a lower priority
        can give up its place: then the latest such job ends with ``busy`` instead, so a voice
        question is never refused because cli questions fill the queue."""
        evicted: Optional[Job] = None
        with self._cond:
            if self._stopping:
                raise EngineNotReady("edgebotd is shutting down")
            if self.state != "ready":
                raise EngineNotReady(self.error or f"the model is {self.state}")
            if len(self._queue) >= self.settings.queue_max:
                worst = max(self._queue, key=lambda entry: entry[:2]) if self._queue else None
                if worst is None or worst[0] <= job.priority:
                    raise EngineBusy(f"{len(self._queue)} questions are waiting; try again shortly")
                self._queue.remove(worst)
                heapq.heapify(self._queue)
                evicted = worst[2]
            heapq.heappush(self._queue, (job.priority, next(self._seq), job))
            self._cond.notify()
        if evicted is not None:
            evicted.end(JobEnded(evicted.id, "error", self._stats(evicted),
                                 f"the queue is full and a higher-priority question ({job.source}) took this one's "
                                 f"place; try again shortly", "busy"))

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; returns False when no such job exists."""
        return self._cancel_where(lambda j: j.id == job_id) > 0

    def cancel_session(self, session: str) -> int:
        """Cancel every job of a session (a one-off job answers to its ``label``)."""
        return self._cancel_where(lambda j: j.label == session)

    def _cancel_where(self, match: Callable[[Job], bool], reason: str = "cancelled", message: str = "") -> int:
        dropped: list[Job] = []
        with self._cond:
            keep = []
            for entry in self._queue:
                if match(entry[2]):
                    dropped.append(entry[2])
                else:
                    keep.append(entry)
            self._queue = keep
            heapq.heapify(self._queue)
            current = self._current
            if current is None or current.ended or not match(current):
                current = None
            if current is not None:
                current.cancel.set()
        for job in dropped:
            job.end(JobEnded(job.id, reason, self._stats(job), message))
        return len(dropped) + (1 if current is not None else 0)

    def alive(self) -> bool:
        """True while the worker thread runs, the model is usable and no job has stalled (the
        watchdog's condition)."""
        return self._thread.is_alive() and self.state in ("loading", "ready") and not self.stalled_s()

    def stalled_s(self) -> float:
        """Seconds the running job has gone without a token beyond ``stall_s``'s allowance (0: not stalled)."""
        if not self.settings.stall_s or self._current is None:
            return 0.0
        quiet = time.monotonic() - self._progress
        return quiet if quiet > self.settings.stall_s else 0.0

    def status(self) -> dict[str, Any]:
        with self._cond:
            self.sessions.expire()
            return {"state": self.state, "error": self.error, "model": self.backend.info().model,
                    "queue": {"waiting": len(self._queue), "max": self.settings.queue_max,
                              "running": self._current.id if self._current else None,
                              "idle": not self._queue and self._current is None and self._rebase is None
                              and not self._rebasing},
                    "sessions": self.sessions.snapshot(), "last_tokens_per_s": self.last_tokens_per_s,
                    "load_progress": self.backend.load_progress if self.state == "loading" else None}

    def shutdown(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, cancel everything (queued and running jobs end ``cancelled``), stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._cancel_where(lambda j: True)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the worker thread ---------------------------------------------------------------------

    def _set_state(self, state: str, message: str = "") -> None:
        with self._cond:
            self.state = state
            self.error = message if state == "failed" else ""
        self.on_state(state, message)

    def _run(self) -> None:
        self._set_state("loading", f"loading {self.backend.info().model}")
        try:
            self.backend.load()
        except ModelError as exc:
            self._set_state("failed", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - any load failure must be reported, not crash
            log.exception("model load failed")
            self._set_state("failed", f"model load failed: {exc}")
            return
        self._set_state("ready", "ready")
        try:
            self._serve_jobs()
        except Exception as exc:  # noqa: BLE001 - the engine must never vanish silently
            log.exception("engine worker failed")
            self._set_state("failed", f"engine worker failed: {exc}")
            self._cancel_where(lambda j: True, "error", f"the engine failed: {exc}")
            return
        self.backend.close()
        self._set_state("stopped")

    def _serve_jobs(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping and self._rebase is None:
                    self._cond.wait()
                if self._stopping:
                    break
                if not self._queue:
                    rebase, self._rebase = self._rebase, None
                    self._rebasing = True
                    job = None
                else:
                    job = heapq.heappop(self._queue)[2]
                    self._progress = time.monotonic()
                    self._current = job
            if job is None:
                try:
                    self._prefill_history(rebase)
                except Exception:  # noqa: BLE001 - a failed re-base only costs speed
                    log.exception("re-basing the cache on session %s failed", rebase)
                finally:
                    with self._cond:
                        self._rebasing = False
                continue
            try:
                self._answer(job)
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop the engine
                log.exception("job %s failed", job.id)
                job.end(JobEnded(job.id, "error", {}, f"internal error: {exc}", "internal"))
            finally:
                with self._cond:
                    self._current = None

    def _prefill_history(self, name: Optional[str]) -> None:
        """Re-base the KV cache on a session's canonical history while idle."""
        with self._cond:
            session = self.sessions.peek(name) if name else None
            turns = list(session.turns) if session else []
        if not turns:
            return
        prompt = self.backend.prepare(turns, None, self.settings.persona)
        n = self.backend.prefill(prompt, lambda: bool(self._queue) or self._stopping)
        log.debug("re-based cache on session %s: %d tokens evaluated", name, n)

    def _fit(self, job: Job, turns: list[Turn]) -> tuple[Any, int]:
        """Prepare the prompt, dropping the oldest turns until it leaves room for the answer."""
        n_ctx = self.backend.info().n_ctx
        reserve = min(job.max_tokens, self.settings.answer_reserve)
        dropped = 0
        while True:
            prompt = self.backend.prepare(turns[dropped:], job.text, self.settings.persona)
            if prompt.n_tokens + reserve <= n_ctx or dropped == len(turns):
                return prompt, dropped
            dropped += 1

    def _answer(self, job: Job) -> None:
        if job.cancel.is_set():
            job.end(JobEnded(job.id, "cancelled", self._stats(job)))
            return
        with self._cond:
            session = self.sessions.get(job.session) if job.session and job.history is None else None
            turns = list(job.history) if job.history is not None else list(session.turns) if session else []
        prompt, dropped = self._fit(job, turns)
        n_ctx = self.backend.info().n_ctx
        if prompt.n_tokens >= n_ctx - 1:
            job.end(JobEnded(job.id, "error", self._stats(job),
                              f"the question is {prompt.n_tokens} tokens but the context holds {n_ctx}; "
                              f"ask something shorter", "too-long"))
            return
        if dropped and session is not None:
            with self._cond:
                del session.turns[:dropped]
                session.trimmed_turns += dropped
            log.info("session %s: trimmed %d oldest turn(s) to fit %d tokens", job.session, dropped, n_ctx)
        if prompt.starts_thinking and job.think_budget <= 0:
            prompt = self.backend.extend(prompt, BUDGET_CLOSE)  # no thinking at all: close it before it starts
        job.sink(JobStarted(job.id, job.label))
        splitter = ThinkSplitter(prompt.starts_thinking)
        answer: list[str] = []
        marks: dict[str, float] = {}
        think_tokens = 0
        stops = StopMatcher(job.stop)

        def emit(think: str, text: str) -> None:
            if think and job.show_think:
                job.sink(JobDelta(job.id, think, think=True))
            if text and not stops.hit:
                text = stops.feed(text)
                if stops.hit:
                    job.cancel.set()  # a stop string ends the generation; its reason becomes "stop" below
            if text:
                marks.setdefault("answer", time.monotonic())
                answer.append(text)
                job.sink(JobDelta(job.id, text))

        def on_piece(piece: str) -> Optional[str]:
            nonlocal think_tokens
            marks.setdefault("first", time.monotonic())
            marks["last"] = self._progress = time.monotonic()
            if splitter.thinking:
                think_tokens += 1
            split = splitter.feed(piece)
            emit(split.think, split.answer)
            if splitter.thinking and think_tokens >= job.think_budget:
                inject = BUDGET_CLOSE
                split = splitter.feed(inject)
                emit(split.think, split.answer)
                return inject
            return None

        result = self.backend.generate(prompt, job.sampling or self.settings.sampling, job.max_tokens, job.cancel,
                                       on_piece)
        tail = splitter.flush()
        emit(tail.think, tail.answer)
        held = stops.flush()
        if held:
            marks.setdefault("answer", time.monotonic())
            answer.append(held)
            job.sink(JobDelta(job.id, held))
        if stops.hit and result.reason == "cancelled":
            result.reason = "stop"
        stats = self._stats(job, result, think_tokens, marks)
        if result.reason == "error":
            job.end(JobEnded(job.id, "error", stats, result.message or "the backend failed", "backend"))
            return
        message = ""
        if result.reason == "length" and splitter.thinking:
            message = (f"the answer ran out of tokens while still thinking (max_tokens={job.max_tokens}); "
                       f"raise max_tokens or lower the think budget")
        if result.reason in ("stop", "length") and session is not None and answer:
            with self._cond:
                session.turns.append(Turn(job.text, "".join(answer).strip()))
                self._rebase = session.name
        if stats.get("tokens_per_s"):
            self.last_tokens_per_s = stats["tokens_per_s"]
        job.end(JobEnded(job.id, result.reason, stats, message))

    def _stats(self, job: Job, result: Any = None, think_tokens: int = 0,
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
