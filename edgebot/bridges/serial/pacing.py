"""Stop-and-wait pacing of one answer to a microcontroller: window, resend, give up.

Pure state (the caller passes ``now`` in seconds of a monotonic clock and writes the lines
:meth:`AnswerSender.poll` returns), so every rule here is tested without a port or a sleep.

- At most ``window`` ``A`` lines are unacknowledged at any time; ``K <id> <seq>`` acknowledges
  every chunk up to ``seq``.
- When the oldest unacknowledged chunk has waited ``timeout_s``, every unacknowledged chunk is sent
  again (go-back-N); after :data:`TRIES` sends without a ``K`` the answer is abandoned with
  ``E <id> error``.
- ``E <id> <reason>`` goes out once the answer is complete on the bus and every chunk is
  acknowledged, so it never overruns a small receive buffer either.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

from edgebot.bridges.serial.chunking import Chunker
from edgebot.bridges.serial.protocol import answer_text_limit, format_answer, format_end

TRIES = 3
"""Sends of one chunk (the first and two resends) before the answer is abandoned."""
EPS_S = 1e-6
"""Clock slack (seconds) so a wake-up at exactly a deadline counts as reached."""


@dataclass
class _Sent:
    seq: int
    text: bytes
    sent_at: float
    tries: int = 1


class AnswerSender:
    """The wire side of one question ``Q <id>``: chunks in, ``A``/``E`` lines out."""

    def __init__(self, mcu_id: int, *, window: int = 1, timeout_s: float = 1.0, flush_s: float = 0.05,
                 chunk_bytes: int = 48, rx: Optional[int] = None, ascii_only: bool = False) -> None:
        self.mcu_id = mcu_id
        self.window = max(1, window)
        self.timeout_s = timeout_s
        self.chunk_bytes = chunk_bytes
        self.rx = rx
        self.chunker = Chunker(flush_s, ascii_only)
        self.outstanding: deque[_Sent] = deque()
        self.next_seq = 0
        self.bus_reason: Optional[str] = None  # set when the answer ended on the bus
        self.cancelled = False
        self.finished: Optional[str] = None  # the reason sent in E, once sent
        self.resends = 0

    # -- inputs ---------------------------------------------------------------------------------

    def add_text(self, text: str, now: float) -> None:
        if not self.cancelled and self.finished is None:
            self.chunker.push(text, now)

    def end(self, reason: str) -> None:
        """The answer ended on the bus (``answer-end`` reason, or ``error`` when it never came)."""
        if self.bus_reason is None:
            self.bus_reason = reason

    def ack(self, seq: int) -> bool:
        """``K <id> <seq>``; False when chunk ``seq`` was never sent (a late duplicate is fine)."""
        if seq >= self.next_seq:
            return False
        while self.outstanding and self.outstanding[0].seq <= seq:
            self.outstanding.popleft()
        return True

    def cancel(self) -> None:
        """``X <id>``: nothing more is sent except ``E <id> cancelled`` once the bus confirms."""
        self.cancelled = True
        self.chunker.clear()
        self.outstanding.clear()

    # -- output ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.finished is not None

    def poll(self, now: float) -> list[bytes]:
        """Lines to write at ``now``; afterwards :meth:`deadline` says when to poll again."""
        if self.finished is not None:
            return []
        lines: list[bytes] = []
        if self.outstanding and now - self.outstanding[0].sent_at >= self.timeout_s - EPS_S:
            if self.outstanding[0].tries >= TRIES:
                self.outstanding.clear()
                self.chunker.clear()
                self.finished = "error"
                return [format_end(self.mcu_id, "error")]
            for sent in self.outstanding:
                sent.tries += 1
                sent.sent_at = now
                self.resends += 1
                lines.append(self._a_line(sent))
        if self.cancelled:
            if self.bus_reason is not None:
                self.finished = "cancelled"
                lines.append(format_end(self.mcu_id, "cancelled"))
            return lines
        final = self.bus_reason is not None
        while len(self.outstanding) < self.window:
            limit = answer_text_limit(self.mcu_id, self.next_seq, self.chunk_bytes, self.rx)
            text = self.chunker.take(limit, now, final)
            if text is None:
                break
            sent = _Sent(self.next_seq, text, now)
            self.next_seq += 1
            self.outstanding.append(sent)
            lines.append(self._a_line(sent))
        if final and not self.outstanding and not self.chunker.pending_bytes:
            self.finished = self.bus_reason
            lines.append(format_end(self.mcu_id, self.bus_reason or "error"))
        return lines

    def deadline(self) -> Optional[float]:
        """The next time (seconds) :meth:`poll` has something to do without new input, or None."""
        if self.finished is not None:
            return None
        times = []
        if self.outstanding:
            times.append(self.outstanding[0].sent_at + self.timeout_s)
        if len(self.outstanding) < self.window and not self.cancelled:
            ready = self.chunker.next_ready_at()
            if ready is not None:
                times.append(ready)
        return min(times) if times else None

    def _a_line(self, sent: _Sent) -> bytes:
        return format_answer(self.mcu_id, sent.seq, sent.text)
