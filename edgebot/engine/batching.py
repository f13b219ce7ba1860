"""Continuous batching: the worker's loop when ``[engine] parallel`` > 1 and the backend can decode
several answers together (llama.cpp).

Each loop admits queued jobs into free slots, then advances every active answer with one
``Backend.step`` (one ``llama_decode``: one token of each answering stream, plus a chunk of a new
prompt), then ends the answers that finished. So a question that arrives during a long answer
starts at the next step instead of after that answer.

Priority: queued jobs are admitted best priority first (first come first served within one). When
every slot is taken and a queued job has a better priority than the worst active answer (a voice
question during CLI answers), that answer is *paused* — it keeps its KV sequence and simply is not
stepped — and the new job takes its slot at once; a paused answer resumes, before queued jobs of
its own or a lower priority, when a slot frees. Two jobs of the same session never run together:
the second waits in the queue for the first to end (it needs the first one's turn).
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from edgebot.engine.answer import Answer
from edgebot.engine.backend import GenerationResult
from edgebot.engine.jobs import Job, JobEnded

if TYPE_CHECKING:
    from edgebot.engine.scheduler import Engine

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One admitted answer: its job, its ``Answer`` and the backend's stream."""

    job: Job
    answer: Answer
    stream: Any
    paused: bool = False

    @property
    def rank(self) -> tuple[int, float]:
        """Lower runs first: the job's priority, then its arrival."""
        return self.job.priority, self.job.submitted


class Batching:
    """Runs up to ``engine.parallel`` answers together on the engine thread."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.backend: Any = engine.backend
        self.slots: list[Slot] = []

    def serve(self) -> None:
        e = self.engine
        while True:
            with e._cond:
                while not e._queue and not self.slots and not e._stopping and e._rebase is None:
                    e._cond.wait()
                if e._stopping and not self.slots:
                    break
                admitted = [] if e._stopping else self._admit()
                rebase: Optional[str] = None
                if not self.slots and not admitted and not e._queue and e._rebase is not None:
                    rebase, e._rebase = e._rebase, None
                    e._rebasing = True
                gone, e.sessions.gone = e.sessions.gone, []
            for name in gone:  # expired sessions: their KV sequences are free
                self.backend.forget(name)
            for job in admitted:
                self._start(job)
            if rebase is not None:
                e._rebase_idle(rebase)
                continue
            self._step()

    # -- admission (under the engine's lock) -----------------------------------------------------

    def _admit(self) -> list[Job]:
        """Pop the jobs that start now; pause or resume answers for priority."""
        e = self.engine
        admitted: list[Job] = []
        busy = {s.job.session for s in self.slots if s.job.session}
        while True:
            active = [s for s in self.slots if not s.paused]
            paused = [s for s in self.slots if s.paused]
            waiting = sorted((entry for entry in e._queue if entry[2].session not in busy), key=lambda x: x[:2])
            best_job = waiting[0][2] if waiting else None
            best_paused = min(paused, key=lambda s: s.rank, default=None)
            if len(active) + len(admitted) < e.parallel:
                if best_paused is not None and (best_job is None or best_paused.rank <= (best_job.priority,
                                                                                          best_job.submitted)):
                    best_paused.paused = False
                    log.debug("answer %s resumed", best_paused.job.id)
                    continue
                if best_job is None:
                    return admitted
                e._queue.remove(waiting[0])
                heapq.heapify(e._queue)
                admitted.append(best_job)
                e._running.append(best_job)
                if best_job.session:
                    busy.add(best_job.session)
                continue
            worst = max(active, key=lambda s: s.rank, default=None)
            if best_job is None or worst is None or best_job.priority >= worst.job.priority:
                return admitted
            worst.paused = True  # a better-priority question takes its slot now
            log.debug("answer %s paused for %s (%s)", worst.job.id, best_job.id, best_job.source)

    # -- running ---------------------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        e = self.engine
        answer = Answer(e, job)
        try:
            prompt = answer.begin()
            if prompt is None:
                self._forget(job)
                return
            stream = self.backend.open(prompt, job.sampling or e.settings.sampling, job.max_tokens, job.cancel,
                                       answer.on_piece)
        except (ValueError, MemoryError) as exc:
            why = str(exc) if isinstance(exc, ValueError) else \
                f"{exc}; raise [engine] kv_tokens or lower [engine] parallel"
            answer.end(GenerationResult("error", backend="local", message=why))
            self._forget(job)
            return
        except Exception as exc:  # noqa: BLE001 - one bad job must not stop the engine
            log.exception("job %s failed", job.id)
            job.end(JobEnded(job.id, "error", {}, f"internal error: {exc}", "internal"))
            self._forget(job)
            return
        self.slots.append(Slot(job, answer, stream))

    def _step(self) -> None:
        for slot in self.slots:
            if slot.paused and slot.job.cancel.is_set():
                slot.stream.finish("cancelled")  # a paused answer is not stepped: end it here
        active = [s.stream for s in self.slots if not s.paused and not s.stream.done]
        try:
            if active:
                self.backend.step(active)
        except Exception as exc:  # noqa: BLE001 - a failed decode ends the answers in it, not the engine
            log.exception("decoding failed")
            for slot in [s for s in self.slots if not s.paused]:
                self.backend.finish(slot.stream, keep_answer=False)
                slot.answer.end(GenerationResult("error", backend="local", message=f"decoding failed: {exc}"))
                self._drop(slot)
            return
        for slot in [s for s in self.slots if s.stream.done]:
            reason = slot.stream.result.reason
            result = self.backend.finish(slot.stream, keep_answer=reason in ("stop", "length"))
            slot.answer.end(result)
            self._drop(slot)

    def _drop(self, slot: Slot) -> None:
        self.slots.remove(slot)
        self._forget(slot.job)

    def _forget(self, job: Job) -> None:
        with self.engine._cond:
            self.engine._running = [j for j in self.engine._running if j is not job]
