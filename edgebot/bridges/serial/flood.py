"""Per-port flood limits for edgebot-serial: a board (a firmware bug, a stuck loop) that sends lines
faster than they can be served gets the excess dropped, never queued without bound, never passed on
to the bus (where the bridge itself would be disconnected for flooding), and one log line per burst.

Each kind of line has a token bucket (``rate`` per second, ``burst`` at once). Replies that answer a
flood (``P``, ``ERR``) are limited the same way, and the port's write backlog drops them when the
board does not read (``SerialLink.write(droppable=True)``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

LIMITS: dict[str, tuple[float, int]] = {
    "say": (2.0, 8),      # S lines: each is spoken, seconds of audio
    "hello": (1.0, 4),    # HELLO: a board resets rarely; each one re-reports the port on the bus
    "bus": (20.0, 40),    # other lines that reach the bus (Q, X)
    "ping": (20.0, 40),   # P lines (answered with P)
    "reply": (20.0, 40),  # ERR replies the bridge sends back
}
"""Kind -> (lines per second, burst): far above what a well-behaved board sends."""


@dataclass
class _Bucket:
    rate: float
    burst: int
    tokens: float
    last: float
    dropped: int = 0


@dataclass
class FloodGate:
    """Token buckets per kind for one port; ``clock`` in seconds."""

    port: str
    limits: dict[str, tuple[float, int]] = field(default_factory=lambda: dict(LIMITS))
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, kind: str) -> bool:
        """True when a line of ``kind`` may be served now; False (dropped) beyond its rate.
        The first drop of a burst logs a warning; the first line allowed after it logs the count."""
        now = self.clock()
        b = self._buckets.get(kind)
        if b is None:
            rate, burst = self.limits[kind]
            b = self._buckets[kind] = _Bucket(rate, burst, float(burst), now)
        b.tokens = min(float(b.burst), b.tokens + (now - b.last) * b.rate)
        b.last = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            if b.dropped:
                log.warning("%s: the %s flood is over: %d line(s) dropped", self.port, kind, b.dropped)
                b.dropped = 0
            return True
        if not b.dropped:
            log.warning("%s: the board sends %s lines faster than %g/s (burst %d): dropping the excess",
                        self.port, kind, b.rate, b.burst)
        b.dropped += 1
        return False
