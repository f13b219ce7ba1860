"""What the engine is given and what it gives back: a ``Job`` (one question), its events
(``JobStarted``, ``JobDelta``, ``JobEnded``), the refusals and the engine's settings."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from edgebot.config.schema import default
from edgebot.engine.backend import SamplingParams
from edgebot.engine.prompt import Turn


@dataclass
class JobStarted:
    id: str
    session: str


@dataclass
class JobDelta:
    """Text of the answer (``think`` False) or of the thinking (``think`` True)."""

    id: str
    text: str
    think: bool = False


@dataclass
class JobEnded:
    id: str
    reason: str  # stop | length | cancelled | error
    stats: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    code: str = ""


EngineEvent = Union[JobStarted, JobDelta, JobEnded]
Sink = Callable[[EngineEvent], None]


class EngineBusy(Exception):
    """The queue is full."""


class EngineNotReady(Exception):
    """The model is not loaded (yet, or it failed)."""


@dataclass
class Job:
    """One question. ``max_tokens`` and ``think_budget`` in tokens; ``session`` None = one-off.

    ``history`` (the earlier turns, e.g. from an HTTP request's ``messages``) is used instead of a
    session's; ``sampling`` replaces the engine's defaults for this job; ``stop`` strings end the
    answer where one begins (never emitted, the reason is ``stop``).
    """

    id: str
    text: str
    source: str
    sink: Sink
    session: Optional[str] = None
    show_think: bool = False
    max_tokens: int = default("llm.max_tokens")
    think_budget: int = default("llm.think_budget")["default"]
    priority: int = default("engine.priorities")["default"]
    history: Optional[list[Turn]] = None
    sampling: Optional[SamplingParams] = None
    stop: tuple[str, ...] = ()
    submitted: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    ended: bool = False  # its JobEnded has been sent

    @property
    def label(self) -> str:
        """The session name reported for this job: its session, or ``<source>:<id>`` for a one-off."""
        return self.session or f"{self.source}:{self.id}"

    def end(self, event: "JobEnded") -> None:
        """Send the one final event of this job."""
        self.ended = True
        self.sink(event)


@dataclass
class EngineSettings:
    """The engine's part of the configuration; every default is the schema's (edgebot.config.schema)."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    queue_max: int = default("engine.queue_max")
    session_idle_s: float = default("engine.session_idle_s")
    max_sessions: int = default("engine.max_sessions")
    answer_reserve: int = default("engine.answer_reserve")
    persona: str = default("llm.persona")
    stall_s: float = default("daemon.stall_s")  # seconds without a token in a running job before alive() is False; 0 = never
    parallel: int = default("engine.parallel")  # answers decoded together when the backend can; 1 = one at a time
