"""Conversations per source (``voice``, ``serial:ttyUSB0``, ``cli:<name>``) and their expiry."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from edgebot.engine.prompt import Turn


@dataclass
class Session:
    """A named conversation; ``last_used`` is a ``time.monotonic()`` reading (seconds)."""

    name: str
    turns: list[Turn] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    trimmed_turns: int = 0


MAX_NAME_BYTES = 128
"""Longest session name (UTF-8 bytes); the doors (bus, HTTP) refuse longer ones."""


class SessionStore:
    """Sessions by name; a session idle longer than ``idle_s`` seconds is forgotten, and at most
    ``max_sessions`` are kept (a new one beyond that replaces the least recently used).

    ``clock`` returns seconds (``time.monotonic`` unless a test gives its own).
    """

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic, max_sessions: int = 64) -> None:
        self.idle_s = idle_s
        self.clock = clock
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}
        self.gone: list[str] = []  # expired since the engine last freed their KV sequences

    def get(self, name: str) -> Session:
        self.expire()
        session = self._sessions.get(name)
        if session is None:
            while len(self._sessions) >= max(1, self.max_sessions):
                oldest = min(self._sessions.values(), key=lambda s: s.last_used)
                del self._sessions[oldest.name]
                self.gone.append(oldest.name)
            session = self._sessions[name] = Session(name, last_used=self.clock())
        session.last_used = self.clock()
        return session

    def peek(self, name: str) -> Session | None:
        return self._sessions.get(name)

    def expire(self) -> list[str]:
        """Forget idle sessions; returns their names."""
        now = self.clock()
        gone = [n for n, s in self._sessions.items() if now - s.last_used > self.idle_s]
        for name in gone:
            del self._sessions[name]
        self.gone += gone
        return gone

    def snapshot(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [{"name": s.name, "turns": len(s.turns), "trimmed_turns": s.trimmed_turns,
                 "idle_s": round(now - s.last_used, 1)} for s in self._sessions.values()]
