"""The one ask pipeline of edgebotd, on the event loop: what a front door wants answered becomes an
engine ``Job`` and an async stream of that job's events.

The bus (``dispatch.py``), the HTTP API (``http/server.py``) and the robot actions
(``actions/desk.py``) each describe a question as an :class:`AskSpec` and read the answer from
:meth:`Asks.open`; none of them builds a ``Job`` or reads think budgets, priorities or token caps
itself. The stream cancels its job when its consumer stops reading before the end (a client that
left, a handler that was cancelled), and every ask is logged once when it starts and once when it
ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

from edgebot.config import Config
from edgebot.engine.jobs import EngineEvent, Job, JobDelta, JobEnded, JobStarted
from edgebot.engine.prompt import Turn
from edgebot.engine.scheduler import Engine

log = logging.getLogger(__name__)


def source_kind(source: str) -> str:
    """``serial:ttyUSB0`` -> ``serial``: the key for per-source priorities and think budgets."""
    return source.split(":", 1)[0]


@dataclass
class AskSpec:
    """What a front door wants answered.

    ``max_tokens`` (tokens; None or <= 0 = ``[llm] max_tokens``) is capped at ``[llm] n_ctx``;
    ``think_budget`` (tokens; None or < 0 = the source kind's ``[llm] think_budget``);
    ``history`` replaces a session's turns (an HTTP request's messages); ``sampling`` overrides the
    engine's sampling defaults field by field (``temperature``, ``top_p``, ``seed``, ``json_schema`` …);
    ``stop`` strings end the answer where one begins.
    """

    id: str
    text: str
    source: str
    session: Optional[str] = None
    show_think: bool = False
    max_tokens: Optional[int] = None
    think_budget: Optional[int] = None
    history: Optional[list[Turn]] = None
    sampling: Optional[dict[str, Any]] = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Collected:
    """A whole answer read by :meth:`AskStream.collect`: answer text, thinking text, and how it ended."""

    answer: str
    thinking: str
    ended: JobEnded


class AskStream:
    """The events of one submitted job, in order, ending with its ``JobEnded``.

    ``async for ev in stream`` (or ``await stream.next()``); a reader that leaves early calls
    ``close()`` (a cancelled ``next()`` does it by itself), which cancels the job in the engine,
    queued or running. The job's start and end are logged as they arrive, read or not.
    """

    def __init__(self, asks: "Asks", job: Job, spec: AskSpec) -> None:
        self.asks = asks
        self.job = job
        self.spec = spec
        self._queue: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.ended: Optional[JobEnded] = None  # the job's end, once it arrived
        self.started = False  # its JobStarted has arrived
        self.closed = False

    def arrive(self, ev: EngineEvent) -> None:
        """An engine event, on the loop (posted from the engine thread)."""
        if isinstance(ev, JobStarted):
            self.started = True
            log.info("ask %s started: source %s, session %s", self.job.id, self.job.source, ev.session)
        elif isinstance(ev, JobEnded):
            self.ended = ev
            self.asks._log_end(self.job, ev)
        self._queue.put_nowait(ev)

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[EngineEvent]:
        while True:
            ev = await self.next()
            yield ev
            if isinstance(ev, JobEnded):
                return

    async def next(self) -> EngineEvent:
        """The next event; a reader cancelled while waiting cancels the job."""
        try:
            return await self._queue.get()
        except asyncio.CancelledError:
            self.close("its reader was cancelled")
            raise

    async def collect(self) -> "Collected":
        """Read the whole answer (for a door that replies in one piece): its text, thinking and end."""
        answer: list[str] = []
        thinking: list[str] = []
        while True:
            ev = await self.next()
            if isinstance(ev, JobDelta):
                (thinking if ev.think else answer).append(ev.text)
            elif isinstance(ev, JobEnded):
                return Collected("".join(answer), "".join(thinking), ev)

    def pending(self) -> bool:
        """True when ``next()`` would return at once (events are waiting)."""
        return not self._queue.empty()

    def close(self, why: str = "its reader left") -> None:
        """Stop wanting the answer: an unfinished job is cancelled (its end still arrives and is logged)."""
        if self.ended is None and not self.closed:
            self.closed = True
            found = self.asks.engine.cancel(self.job.id)
            log.debug("ask %s cancelled: %s (%s)", self.job.id, why, "in the engine" if found else "already ending")


class Asks:
    """Turns :class:`AskSpec` s into engine jobs; the only reader of think budgets, priorities and caps."""

    def __init__(self, config: Config, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.submitted = 0  # jobs submitted (status-report queue.submitted)

    def job(self, spec: AskSpec, sink: Any) -> Job:
        """The engine ``Job`` for ``spec``, its events going to ``sink`` (called on the engine thread)."""
        llm, priorities = self.config.section("llm"), self.config.get("engine", "priorities")
        kind = source_kind(spec.source)
        budgets = llm["think_budget"]
        budget = spec.think_budget if spec.think_budget is not None and spec.think_budget >= 0 \
            else budgets.get(kind, budgets.get("default", 512))
        max_tokens = spec.max_tokens if spec.max_tokens and spec.max_tokens > 0 else llm["max_tokens"]
        sampling = dataclasses.replace(self.engine.settings.sampling, **spec.sampling) if spec.sampling else None
        return Job(id=spec.id, text=spec.text, source=spec.source, sink=sink, session=spec.session,
                   show_think=spec.show_think, max_tokens=min(max_tokens, llm["n_ctx"]), think_budget=budget,
                   priority=priorities.get(kind, priorities.get("default", 3)), history=spec.history,
                   sampling=sampling, stop=spec.stop)

    def open(self, spec: AskSpec) -> AskStream:
        """Submit ``spec``'s job and return its event stream; raises ``EngineBusy``/``EngineNotReady``.

        Call on the event loop: events are posted to it from the engine thread.
        """
        loop = asyncio.get_running_loop()
        box: list[AskStream] = []
        job = self.job(spec, lambda ev: loop.call_soon_threadsafe(box[0].arrive, ev))
        stream = AskStream(self, job, spec)
        box.append(stream)
        self.engine.submit(job)
        self.submitted += 1
        log.debug("ask %s submitted: source %s, session %s, max_tokens %d, think_budget %d, priority %d",
                  job.id, job.source, job.session, job.max_tokens, job.think_budget, job.priority)
        return stream

    @staticmethod
    def _log_end(job: Job, ev: JobEnded) -> None:
        st = ev.stats or {}
        log.info("ask %s ended %s%s: source %s, session %s, prompt %s tokens (%s cached), %s generated "
                 "(%s thinking), ttft %s ms%s", job.id, ev.reason, f" ({ev.code})" if ev.code else "", job.source,
                 job.label, st.get("prompt_tokens"), st.get("cached_tokens"), st.get("completion_tokens"),
                 st.get("think_tokens"), st.get("ttft_ms"), f": {ev.message}" if ev.message else "")


def delta_text(ev: EngineEvent) -> str:
    """The answer text of an event ("" for thinking and control events)."""
    return ev.text if isinstance(ev, JobDelta) and not ev.think else ""
