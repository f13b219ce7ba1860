"""The engine: one worker thread that owns the backend, a bounded priority queue, cancel,
sessions, and when each answer runs — one at a time through ``Backend.generate``, or up to
``[engine] parallel`` together (``batching.py``). One answer's own work (prompt fitting, think
budget, stop strings, stats, the session's turn) is ``answer.Answer``.

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

from edgebot.engine.answer import Answer, stats_for
from edgebot.engine.batching import Batching
from edgebot.engine.backend import Backend, ModelError
from edgebot.engine.jobs import EngineBusy, EngineNotReady, EngineSettings, Job, JobEnded
from edgebot.engine.sessions import SessionStore

log = logging.getLogger(__name__)



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
        self._running: list[Job] = []  # started and not ended, in the order they started (paused ones too)
        self.parallel = max(1, min(settings.parallel, backend.max_parallel))
        if settings.parallel > self.parallel:
            log.warning("[engine] parallel = %d, but the %s backend decodes %d answer(s) at a time", settings.parallel,
                        backend.info().name, self.parallel)
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
            running = [j for j in self._running if not j.ended and match(j)]
            for job in running:
                job.cancel.set()
        for job in dropped:
            job.end(JobEnded(job.id, reason, self._stats(job), message))
        return len(dropped) + len(running)

    def alive(self) -> bool:
        """True while the worker thread runs, the model is usable and no job has stalled (the
        watchdog's condition)."""
        return self._thread.is_alive() and self.state in ("loading", "ready") and not self.stalled_s()

    def stalled_s(self) -> float:
        """Seconds the running job has gone without a token beyond ``stall_s``'s allowance (0: not stalled)."""
        if not self.settings.stall_s or not self._running:
            return 0.0
        quiet = time.monotonic() - self._progress
        return quiet if quiet > self.settings.stall_s else 0.0

    def status(self) -> dict[str, Any]:
        with self._cond:
            self.sessions.expire()
            return {"state": self.state, "error": self.error, "model": self.backend.info().model,
                    "queue": {"waiting": len(self._queue), "max": self.settings.queue_max,
                              "running": self._running[0].id if self._running else None,
                              "batch": [j.id for j in self._running], "parallel": self.parallel,
                              "idle": not self._queue and not self._running and self._rebase is None
                              and not self._rebasing},
                    "sessions": self.sessions.snapshot(), "last_tokens_per_s": self.last_tokens_per_s,
                    "load_progress": self.backend.load_progress if self.state == "loading" else None,
                    "kv": self.backend.kv_status() if self.state == "ready" else {}}

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
            if self.parallel > 1:
                Batching(self).serve()
            else:
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
                    self._running = [job]
                gone, self.sessions.gone = self.sessions.gone, []
            for name in gone:  # expired sessions: their KV sequences are free
                self.backend.forget(name)
            if job is None:
                self._rebase_idle(rebase)
                continue
            try:
                self._answer(job)
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop the engine
                log.exception("job %s failed", job.id)
                job.end(JobEnded(job.id, "error", {}, f"internal error: {exc}", "internal"))
            finally:
                with self._cond:
                    self._running = []

    def _rebase_idle(self, name: Optional[str]) -> None:
        """Run the idle re-base of ``name``'s sequence (both worker loops); a failure only costs speed."""
        try:
            self._prefill_history(name)
        except Exception:  # noqa: BLE001 - a failed re-base only costs speed
            log.exception("re-basing the cache on session %s failed", name)
        finally:
            with self._cond:
                self._rebasing = False

    def _prefill_history(self, name: Optional[str]) -> None:
        """Re-base the session's KV sequence on its canonical history while idle (the answer without
        its thinking; usually only the end-of-turn token is left to evaluate)."""
        with self._cond:
            session = self.sessions.peek(name) if name else None
            turns = list(session.turns) if session else []
        if not turns:
            return
        prompt = self.backend.prepare(turns, None, self.settings.persona)
        prompt.key = name
        n = self.backend.prefill(prompt, lambda: bool(self._queue) or self._stopping)
        log.debug("re-based the cache on session %s: %d tokens evaluated", name, n)

    def _answer(self, job: Job) -> None:
        answer = Answer(self, job)
        prompt = answer.begin()
        if prompt is None:
            return
        result = self.backend.generate(prompt, job.sampling or self.settings.sampling, job.max_tokens, job.cancel,
                                       answer.on_piece)
        answer.end(result)

    def _stats(self, job: Job) -> dict[str, Any]:
        return stats_for(job)
