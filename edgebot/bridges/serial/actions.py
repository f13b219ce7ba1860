"""Action calls on one serial line: ``T <id> <action> <args-json>`` out, ``R <id> ok|err <text>`` in.

Pure state like :mod:`serial_pacing` (the caller passes ``now``, seconds of a monotonic clock):

- One ``T`` is outstanding at a time; more calls wait in order (at most :data:`QUEUE_MAX`).
- A ``T`` goes out only when the caller says the line is quiet (no answer chunk unacknowledged),
  and while it waits for its ``R`` no answer chunk is sent, so a 64-byte receive buffer holds at
  most one line from the host.
- Without an ``R`` after ``timeout_s`` the same ``T`` (same id) is sent again; after :data:`TRIES`
  sends the call fails with "the board did not answer". Firmware must answer a repeated id with
  the same ``R`` without running the action twice.
- Ids are the host's own, 1-65535, counting up and wrapping.

Other transports reuse the same queue and timeout rules with their own ``encode`` (edgebot-mqtt
publishes the argument JSON on a topic; its broker does the resending, so it uses ``tries=1``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from edgebot.bridges.serial.pacing import EPS_S, TRIES
from edgebot.bridges.serial.protocol import DEFAULT_RX_BYTES, MAX_ID, MAX_LINE_BYTES, format_action

QUEUE_MAX = 8
"""Calls waiting for the line; more are refused at once."""


@dataclass
class Call:
    """One ``action-run`` from the bus."""

    bus_id: str
    name: str
    args_json: str
    wire_id: int = 0
    sent_at: float = 0.0
    tries: int = 0


@dataclass(frozen=True)
class Done:
    """A call that ended: ``ok`` and the board's text, or why it failed."""

    bus_id: str
    ok: bool
    text: str
    timeout: bool = False


class ActionCaller:
    """The ``T``/``R`` side of one port."""

    def __init__(self, timeout_s: float = 1.0, tries: int = TRIES,
                 encode: Callable[[int, str, str], bytes] = format_action, check_rx: bool = True) -> None:
        """``timeout_s``: seconds to wait for a reply before resending; ``tries``: sends before
        giving up; ``encode(wire_id, name, args_json)``: what goes out; ``check_rx``: refuse a call
        whose encoding does not fit the board's receive buffer (serial lines)."""
        self.timeout_s = timeout_s
        self.tries = tries
        self.encode = encode
        self.check_rx = check_rx
        self.waiting: deque[Call] = deque()
        self.current: Optional[Call] = None
        self._next_id = 1

    def add(self, call: Call) -> Optional[Done]:
        """Queue a call; a Done (refused) when it cannot be taken."""
        if len(self.waiting) >= QUEUE_MAX:
            return Done(call.bus_id, False, f"{QUEUE_MAX} actions are already waiting for the board")
        self.waiting.append(call)
        return None

    @property
    def busy(self) -> bool:
        """A ``T`` is waiting for its ``R`` (answer chunks are held meanwhile)."""
        return self.current is not None

    def reply(self, wire_id: Optional[int], ok: bool, text: str, name: Optional[str] = None) -> Optional[Done]:
        """``R <id> ...``; None when no call has that id (the caller answers ``ERR <id> unknown-id``).
        ``wire_id`` None matches the call in flight by ``name`` instead (a transport without ids)."""
        call = self.current
        if call is None or (wire_id is not None and call.wire_id != wire_id) or (name is not None and call.name != name):
            return None
        self.current = None
        return Done(call.bus_id, ok, text)

    def fail_all(self, why: str) -> list[Done]:
        """The board is gone or restarted: every call ends failed."""
        calls = ([self.current] if self.current else []) + list(self.waiting)
        self.current = None
        self.waiting.clear()
        return [Done(c.bus_id, False, why) for c in calls]

    def poll(self, now: float, line_quiet: bool, rx: Optional[int]) -> tuple[list[bytes], list[Done]]:
        """Lines to write and calls that ended at ``now``."""
        lines: list[bytes] = []
        done: list[Done] = []
        call = self.current
        if call is not None and now - call.sent_at >= self.timeout_s - EPS_S:
            if call.tries >= self.tries:
                self.current = None
                what = f"T {call.wire_id}" if self.encode is format_action else call.name
                tries = f"after {self.tries} tries" if self.tries > 1 else f"within {self.timeout_s:g} s"
                done.append(Done(call.bus_id, False, f"the board did not answer {what} {tries}", timeout=True))
            else:
                call.tries += 1
                call.sent_at = now
                lines.append(self.encode(call.wire_id, call.name, call.args_json))
        while self.current is None and self.waiting and line_quiet:
            call = self.waiting.popleft()
            call.wire_id = self._take_id()
            line = self.encode(call.wire_id, call.name, call.args_json)
            limit = min(MAX_LINE_BYTES + 1, rx or DEFAULT_RX_BYTES)
            if self.check_rx and len(line) > limit:
                done.append(Done(call.bus_id, False, f"the T line is {len(line)} bytes, more than the board's "
                                                     f"{limit}-byte buffer"))
                continue
            call.tries, call.sent_at = 1, now
            self.current = call
            lines.append(line)
        return lines, done

    def deadline(self) -> Optional[float]:
        """When (seconds) :meth:`poll` must run again without new input, or None."""
        return self.current.sent_at + self.timeout_s if self.current is not None else None

    def _take_id(self) -> int:
        ident = self._next_id
        self._next_id = ident % MAX_ID + 1
        return ident
