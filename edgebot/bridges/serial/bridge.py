"""edgebot-serial: a microcontroller on one UART asks edgebotd over the line protocol v1.

One process per port. The port side (waiting for the device, opening it exclusively, the board's
HELLO, noise, pacing) runs in :meth:`SerialBridge.run` across bus reconnects; the bus side is the
shared supervisor. The board has at most one question in progress; its ids are namespaced on the
bus as ``serial:<port name>:<board id>:<pid>.<n>.<8 hex>`` so they are unique and unguessable.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import secrets
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import edgebot
from edgebot.bridges.serial import protocol as sp
from edgebot.bridges.serial.actions import ActionCaller, Call, Done
from edgebot.bridges.serial.flood import FloodGate
from edgebot.bridges.serial.pacing import AnswerSender
from edgebot.bridges.serial.port import PortUnavailable, SerialLink, open_serial
from edgebot.bridges.serial.settings import PortSettings, select_entry
from edgebot.bridges.supervisor import Bridge, BusLink, base_parser, bridge_main
from edgebot.bus import messages as m
from edgebot.config import Config

log = logging.getLogger(__name__)

POLL_S = 0.25
"""Seconds between looks for a port that is absent or busy."""
BUS_TO_ERR = {"busy": "busy", "not-ready": "busy", "too-long": "too-long"}


@dataclass
class _Question:
    mcu_id: int
    bus_id: str
    sender: AnswerSender
    bus_open: bool = True  # the bus has not ended it yet


class SerialBridge(Bridge):
    """The serial port <-> the bus."""

    client_name = "edgebot-serial"
    role = "serial"  # the role that is sent action-run and may answer action-result (edgebot.policy)
    subscriptions = ("action-run",)

    def __init__(self, settings: PortSettings) -> None:
        self.s = settings
        self.source = f"serial:{settings.name}"
        self.session = settings.session or self.source
        self.link: Optional[BusLink] = None
        self.port: Optional[SerialLink] = None
        self.reader = sp.LineReader(settings.checksum == "required")
        self.state = ("waiting", "")
        self.firmware: Optional[str] = None
        self.rx: Optional[int] = None
        self.greeted = False
        self.active: Optional[_Question] = None
        self.by_bus: dict[str, _Question] = {}
        self.says: deque[tuple[str, int]] = deque(maxlen=64)
        self._ids = itertools.count(1)
        self.caller = ActionCaller(settings.timeout_s)
        self.gate = FloodGate(settings.port)  # per-port rate limits on what the board makes us send
        self._inbox: deque[bytes] = deque()
        self._lost: Optional[str] = None
        self._wake = asyncio.Event()

    # -- port lifecycle ---------------------------------------------------------------------------

    async def run(self, link: BusLink) -> None:
        self.link = link
        while True:
            ser = await self._wait_for_port()
            self._inbox.clear()
            self._lost = None
            self.reader = sp.LineReader(self.s.checksum == "required")
            self.port = SerialLink(ser, self._on_data, self._on_lost)
            try:
                await self._serve()
            finally:
                self.port.close()
                self.port = None
                await self._port_gone()
            await self._report("lost", self._lost or "closed")

    async def _wait_for_port(self) -> Any:
        while True:
            try:
                return open_serial(self.s.port, self.s.baud)
            except PortUnavailable as exc:
                await self._report(exc.state, exc.message)
            await asyncio.sleep(POLL_S)

    def _on_data(self, data: bytes) -> None:
        self._inbox.append(data)
        self._wake.set()

    def _on_lost(self, reason: str) -> None:
        self._lost = reason
        self._wake.set()

    async def _serve(self) -> None:
        self.greeted, self.firmware, self.rx = False, None, None
        hello_deadline = time.monotonic() + self.s.hello_timeout_s
        await self._report("open", f"waiting up to {self.s.hello_timeout_s:g} s for the board's HELLO")
        while self._lost is None:
            deadlines = [] if self.greeted else [hello_deadline]
            if self.active is not None and self.active.sender.deadline() is not None:
                deadlines.append(self.active.sender.deadline())  # type: ignore[arg-type]
            if self.caller.deadline() is not None:
                deadlines.append(self.caller.deadline())  # type: ignore[arg-type]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            while self._inbox and self._lost is None:
                for event in self.reader.feed(self._inbox.popleft()):
                    await self._handle(event)
            if not self.greeted and time.monotonic() >= hello_deadline and self._lost is None:
                await self._greet("no HELLO from the board; sent ours")
            await self._pump()

    async def _port_gone(self) -> None:
        """The board is gone: its question ends on the bus as cancelled."""
        q, self.active = self.active, None
        if q is not None and q.bus_open:
            await self._bus_cancel(q)
        await self._results(self.caller.fail_all("the board went away"))

    async def _report(self, state: str, message: str = "") -> None:
        if (state, message) == self.state:
            return
        self.state = (state, message)
        log.log(logging.WARNING if state in ("lost", "busy") else logging.INFO, "%s: %s%s", self.s.port, state,
                f" ({message})" if message else "")
        if self.link is not None:
            await self.link.send(self._port_message())

    def _port_message(self) -> m.SerialPort:
        return m.SerialPort(port=self.s.port, state=self.state[0], firmware=self.firmware,  # type: ignore[arg-type]
                            message=self.state[1])

    # -- the board's lines ----------------------------------------------------------------------

    def _write(self, line: bytes, droppable: bool = False) -> None:
        if self.port is not None and self.greeted:
            self.port.write(line, droppable)

    def _err(self, ident: int, code: str, text: str = "") -> None:
        if not self.gate.allow("reply"):
            return
        log.debug("%s: ERR %d %s %s", self.s.port, ident, code, text)
        self._write(sp.format_error(ident, code, text, self.rx or sp.DEFAULT_RX_BYTES), droppable=True)

    async def _greet(self, why: str) -> None:
        self.greeted = True
        self._write(sp.format_hello(edgebot.__version__))
        await self._report("ready", why)

    async def _handle(self, ev: sp.Event) -> None:
        if isinstance(ev, sp.LineError):
            if self.greeted:
                self._err(ev.id, ev.code, ev.detail)
            else:
                log.debug("%s: before HELLO, ignored %s: %s", self.s.port, ev.code, ev.detail)
            return
        if isinstance(ev, sp.McuHello):
            if not self.gate.allow("hello"):
                return
            if self.active is not None or self.caller.busy:  # the board restarted and forgot its question
                await self._port_gone()
            self.firmware, self.rx = ev.firmware, ev.rx
            self.greeted = False
            self.state = ("", "")  # report ready again even if it was
            await self._greet(f"board {ev.firmware} said HELLO")
            return
        if not self.greeted:  # the board did not reset on open: it is talking, so it is up
            await self._greet("board is talking without HELLO")
        if isinstance(ev, sp.PingMcu):
            if self.gate.allow("ping"):
                self._write(sp.format_ping(ev.id), droppable=True)
        elif isinstance(ev, sp.Question):
            await self._question(ev)
        elif isinstance(ev, sp.ChunkAck):
            q = self.active
            if q is None or q.mcu_id != ev.id:
                self._err(ev.id, "unknown-id", "no answer in progress")
            elif not q.sender.ack(ev.seq):
                self._err(ev.id, "bad-seq", f"chunk {ev.seq} was not sent")
        elif isinstance(ev, sp.ActionReply):
            done = self.caller.reply(ev.id, ev.ok, ev.text)
            if done is None:
                self._err(ev.id, "unknown-id", "no action in progress")
            else:
                await self._results([done])
        elif isinstance(ev, sp.CancelAnswer):
            q = self.active
            if q is None or q.mcu_id != ev.id:
                self._err(ev.id, "unknown-id", "no answer in progress")
                return
            q.sender.cancel()
            if q.bus_open and not await self._bus_cancel(q):
                q.sender.end("cancelled")
        elif isinstance(ev, sp.SayText):
            if not self.gate.allow("say"):
                self._err(ev.id, "busy", "too many S lines; slow down")
                return
            bus_id = f"{self.source}:say:{ev.id}:{self._suffix()}"
            if self.link is None or not await self.link.send(m.Say(text=ev.text, id=bus_id)):
                self._err(ev.id, "busy", "edgebotd is not reachable")
            else:
                self.says.append((bus_id, ev.id))

    def _suffix(self) -> str:
        """The unique, unguessable end of a bus id: another client cannot take the id first."""
        return f"{os.getpid()}.{next(self._ids)}.{secrets.token_hex(4)}"

    async def _question(self, ev: sp.Question) -> None:
        if self.active is not None:
            if self.active.mcu_id == ev.id:
                self._err(ev.id, "duplicate-id", "this question is in progress")
            else:
                self._err(ev.id, "busy", f"question {self.active.mcu_id} is in progress")
            return
        bus_id = f"{self.source}:{ev.id}:{self._suffix()}"
        sender = AnswerSender(ev.id, window=self.s.window, timeout_s=self.s.timeout_s, flush_s=self.s.flush_s,
                              chunk_bytes=self.s.chunk_bytes, rx=self.rx, ascii_only=self.s.ascii)
        q = _Question(ev.id, bus_id, sender)
        ask = m.Ask(id=bus_id, text=ev.text, session=self.session, source=self.source, think="hide",
                    think_budget=self.s.think_budget if self.s.think_budget >= 0 else None)
        self.by_bus[bus_id] = q
        self.active = q
        log.debug("%s: Q %d -> ask %s", self.s.port, ev.id, bus_id)
        if self.link is None or not await self.link.send(ask):
            self.by_bus.pop(bus_id, None)
            self.active = None
            self._err(ev.id, "busy", "edgebotd is not reachable")

    async def _bus_cancel(self, q: _Question) -> bool:
        return self.link is not None and await self.link.send(m.Cancel(id=q.bus_id))

    async def _pump(self) -> None:
        q = self.active
        quiet = q is None or not q.sender.outstanding
        lines, done = self.caller.poll(time.monotonic(), quiet and self.greeted and self.port is not None, self.rx)
        for line in lines:
            self._write(line)
        await self._results(done)
        if q is None or self.caller.busy:  # answer chunks wait while a T waits for its R
            return
        for line in q.sender.poll(time.monotonic()):
            self._write(line)
        if q.sender.done:
            self.active = None
            if q.sender.finished == "error" and q.bus_open:
                log.warning("%s: question %d abandoned: no K after %d tries", self.s.port, q.mcu_id, 3)
                if not await self._bus_cancel(q):
                    self.by_bus.pop(q.bus_id, None)

    async def _results(self, done: list[Done]) -> None:
        for d in done:
            log.log(logging.INFO if d.ok else logging.WARNING, "%s: action %s: %s %s", self.s.port, d.bus_id,
                    "ok" if d.ok else "failed", d.text)
            if self.link is not None:
                await self.link.send(m.ActionResult(id=d.bus_id, ok=d.ok, text=d.text, timeout=d.timeout))

    def _serves(self, port: str) -> bool:
        """Whether ``port`` (from an action's config) is this bridge's port."""
        if port in (self.s.port, self.s.name):
            return True
        return os.path.exists(port) and os.path.exists(self.s.port) and \
            os.path.realpath(port) == os.path.realpath(self.s.port)

    async def _action(self, msg: m.ActionRun) -> None:
        if not self._serves(msg.port):
            return
        if self.port is None or not self.greeted:
            await self._results([Done(msg.id, False, f"the board on {self.s.name} is not connected")])
            return
        args = json.dumps(msg.args, separators=(",", ":"), ensure_ascii=True)
        refused = self.caller.add(Call(msg.id, msg.name, args))
        if refused is not None:
            await self._results([refused])

    # -- the bus --------------------------------------------------------------------------------

    async def on_connected(self, link: BusLink) -> None:
        await link.send(self._port_message())

    async def on_message(self, msg: m.Message) -> None:
        if not isinstance(msg, m.AnswerDelta):
            log.debug("bus: %s %s", msg.TYPE, getattr(msg, "id", "") or "")
        if isinstance(msg, m.AnswerDelta):
            q = self.by_bus.get(msg.id)
            if q is not None:
                q.sender.add_text(msg.text, time.monotonic())
        elif isinstance(msg, m.AnswerEnd):
            q = self.by_bus.pop(msg.id, None)
            if q is not None:
                q.bus_open = False
                q.sender.end(msg.reason)
        elif isinstance(msg, m.Error) and msg.id is not None:
            self._bus_error(msg)
        elif isinstance(msg, m.Ack) and msg.of == "say" and self.says:
            self.says.popleft()
        elif isinstance(msg, m.ActionRun):
            await self._action(msg)
        else:
            return
        self._wake.set()

    def _bus_error(self, msg: m.Error) -> None:
        q = self.by_bus.get(msg.id or "")
        if q is not None:
            if msg.code == "not-found":  # a cancel that crossed the answer's end
                return
            del self.by_bus[q.bus_id]
            q.bus_open = False
            if q is self.active:  # the ask never started: the board hears ERR instead of E
                self.active = None
                self._err(q.mcu_id, BUS_TO_ERR.get(msg.code, "failed"), msg.message)
            return
        for i, (bus_id, mcu_id) in enumerate(self.says):
            if bus_id == msg.id:
                del self.says[i]
                self._err(mcu_id, "no-speaker" if msg.code == "not-found" else "failed", msg.message)
                return

    async def on_disconnected(self) -> None:
        """The daemon cancels what this connection asked; the board hears ``E <id> error``."""
        for q in self.by_bus.values():
            q.bus_open = False
            q.sender.end("error")
        self.by_bus.clear()
        self.says.clear()
        self._wake.set()

    async def close(self) -> None:
        if self.port is not None:
            self.port.close()
            self.port = None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser("edgebot-serial", "Serve one microcontroller port with the edgebot line protocol v1 "
                                           "(docs/serial-protocol.md).",
                         examples="  edgebot-serial --port /dev/ttyUSB0\n"
                                  "  edgebot-serial --port /dev/serial/by-id/usb-Arduino... --baud 9600")
    parser.add_argument("--port", help="serial device, e.g. /dev/serial/by-id/usb-... or ttyUSB0 "
                                       "(default: the one [[serial]] entry)")
    parser.add_argument("--baud", type=int, help="line speed in bits/s (default: the entry's baud, 115200)")

    def build(args: argparse.Namespace, config: Config) -> Bridge:
        return SerialBridge(PortSettings.from_entry(select_entry(config, args.port)))

    return bridge_main(parser, build, argv, overrides=lambda a: {"serial.baud": a.baud})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
