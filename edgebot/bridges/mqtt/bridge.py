"""edgebot-mqtt: questions from an MQTT broker become bus asks; answers and actions go back as topics.

A thin translator on the shared supervisor: the bus side (connect, hello, reconnect) is
:mod:`edgebot.bridges.supervisor`, the broker side is :class:`~edgebot.bridges.mqtt.link.BrokerLink`,
the payloads are :mod:`edgebot.bridges.mqtt.protocol`, and action calls reuse the serial bridge's
:class:`~edgebot.bridges.serial.actions.ActionCaller` (one call in flight, a timeout). Every safety
rule of an action (declared, validated, rate limit, confirmation, the master switch) is edgebotd's:
this bridge only publishes what arrives as ``action-run`` for its ``[mqtt] action_port``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from edgebot.actions.registry import args_json
from edgebot.bridges.mqtt import protocol as mp
from edgebot.bridges.mqtt.link import BrokerLink, MqttSettings
from edgebot.bridges.serial.actions import ActionCaller, Call, Done
from edgebot.bridges.supervisor import Bridge, BusLink, base_parser, bridge_main
from edgebot.bus import messages as m
from edgebot.config import Config

log = logging.getLogger(__name__)


def _payload(wire_id: int, name: str, args_json: str) -> bytes:
    """What ``PREFIX/action/NAME`` carries: the arguments' JSON only (the topic names the action)."""
    return args_json.encode()


@dataclass
class _Question:
    ident: str
    bus_id: str
    text: str
    parts: list[str] = field(default_factory=list)


class MqttBridge(Bridge):
    """An MQTT broker <-> the bus."""

    client_name = "edgebot-mqtt"
    role = "mqtt"  # an action runner: it is sent action-run and may answer action-result (edgebot.policy)
    subscriptions = ("action-run",)

    def __init__(self, settings: MqttSettings) -> None:
        self.s = settings
        self.topics = mp.Topics(settings.prefix)
        self.link: Optional[BusLink] = None
        self.broker: Optional[BrokerLink] = None
        self.by_bus: dict[str, _Question] = {}
        self.by_ident: dict[str, _Question] = {}
        self.caller = ActionCaller(settings.action_timeout_s, tries=1, encode=_payload, check_rx=False)
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._status = ""

    # -- the broker --------------------------------------------------------------------------------

    async def run(self, link: BusLink) -> None:
        self.link = link
        self.broker = BrokerLink(self.s, [self.topics.ask, self.topics.cancel, self.topics.action_results],
                                 lambda topic, payload: self._inbox.put_nowait((topic, payload)), self._broker_state)
        self.broker.start(asyncio.get_running_loop())
        while True:
            deadline = self.caller.deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                topic, payload = await asyncio.wait_for(self._inbox.get(), timeout)
            except asyncio.TimeoutError:
                pass
            else:
                await self._incoming(topic, payload)
            await self._pump()

    def _broker_state(self, connected: bool, why: str) -> None:
        log.log(logging.INFO if connected else logging.WARNING, "MQTT broker %s:%d %s (%s)", self.s.host,
                self.s.port, "connected" if connected else "disconnected; paho reconnects", why)
        self._status = ""
        if connected:
            self._publish_status()

    def _publish_status(self) -> None:
        """``PREFIX/status``: online while both the broker and edgebotd are reachable (retained)."""
        state = mp.ONLINE if self.link is not None and self.link.connected else mp.OFFLINE
        if self.broker is not None and self.broker.connected and state != self._status:
            self._status = state
            self.broker.publish(self.topics.status, state, retain=True)

    def _publish(self, topic: str, payload: bytes | str) -> None:
        if self.broker is not None:
            self.broker.publish(topic, payload)

    def _error(self, code: str, text: str, topic: str, ident: Optional[str] = None) -> None:
        log.info("MQTT %s refused (%s): %s", topic, code, text)
        self._publish(self.topics.error, mp.error(code, text, topic, ident))

    async def _incoming(self, topic: str, payload: bytes) -> None:
        try:
            if topic == self.topics.ask:
                await self._ask(mp.parse_ask(payload, self.s.max_payload_bytes))
            elif topic == self.topics.cancel:
                await self._cancel(mp.parse_cancel(payload))
            elif (name := self.topics.result_action(topic)) is not None:
                ok, text = mp.parse_result(payload)
                done = self.caller.reply(None, ok, text, name=name)
                if done is None:
                    raise mp.PayloadError("unknown-id", f"no call of action {name[:40]} is waiting for a result")
                await self._results([done])
        except mp.PayloadError as exc:
            self._error(exc.code, str(exc), topic, exc.ident)

    async def _ask(self, req: mp.AskRequest) -> None:
        ident = req.ident or f"{next(self._ids)}-{secrets.token_hex(3)}"
        if ident in self.by_ident:
            raise mp.PayloadError("duplicate-id", f"an answer with id {ident} is in progress: use a new id", ident)
        bus_id = f"mqtt:{ident}:{os.getpid()}.{next(self._ids)}"
        q = _Question(ident, bus_id, req.text)
        ask = m.Ask(id=bus_id, text=req.text, session=f"mqtt:{req.session}" if req.session else None,
                    source="mqtt", speak=req.speak, think="show" if req.think else "hide", max_tokens=req.max_tokens,
                    think_budget=self.s.think_budget if self.s.think_budget >= 0 else None)
        if self.link is None or not await self.link.send(ask):
            raise mp.PayloadError("not-ready", "edgebotd is not reachable; the question was not asked", ident)
        self.by_bus[bus_id] = q
        self.by_ident[ident] = q

    async def _cancel(self, ident: str) -> None:
        q = self.by_ident.get(ident)
        if q is None:
            raise mp.PayloadError("not-found", f"no answer with id {ident} is in progress", ident)
        if self.link is not None:
            await self.link.send(m.Cancel(id=q.bus_id))

    def _end(self, q: _Question, reason: str, stats: Optional[dict] = None, text: str = "") -> None:
        self.by_bus.pop(q.bus_id, None)
        self.by_ident.pop(q.ident, None)
        extra = {"message": text} if text else {}
        self._publish(self.topics.answer(q.ident), mp.message("end", q.ident, reason=reason, text="".join(q.parts),
                                                              stats=stats or {}, **extra))

    # -- actions -------------------------------------------------------------------------------------

    async def _pump(self) -> None:
        """Publish the next waiting call; end calls whose result did not come in time."""
        lines, done = self.caller.poll(time.monotonic(), True, None)
        for line in lines:
            call = self.caller.current
            if call is not None:
                log.info("action %s %s -> %s", call.bus_id, line.decode(), self.topics.action(call.name))
                self._publish(self.topics.action(call.name), line)
        await self._results(done)

    async def _results(self, done: list[Done]) -> None:
        for d in done:
            log.log(logging.INFO if d.ok else logging.WARNING, "action %s: %s %s", d.bus_id,
                    "ok" if d.ok else "failed", d.text)
            if self.link is not None:
                await self.link.send(m.ActionResult(id=d.bus_id, ok=d.ok, text=d.text, timeout=d.timeout))

    async def _action(self, msg: m.ActionRun) -> None:
        if msg.port != self.s.action_port:
            return
        if self.broker is None or not self.broker.connected:
            await self._results([Done(msg.id, False, f"the MQTT broker {self.s.host} is not connected")])
            return
        refused = self.caller.add(Call(msg.id, msg.name, args_json(msg.args)))
        if refused is not None:
            await self._results([refused])
        await self._pump()

    # -- the bus -------------------------------------------------------------------------------------

    async def on_connected(self, link: BusLink) -> None:
        self._publish_status()

    async def on_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.ActionRun):
            await self._action(msg)
            return
        q = self.by_bus.get(getattr(msg, "id", None) or "")
        if q is None:
            return
        if isinstance(msg, m.AnswerStart):
            self._publish(self.topics.answer(q.ident), mp.message("start", q.ident, question=q.text))
        elif isinstance(msg, m.AnswerDelta):
            q.parts.append(msg.text)
            self._publish(self.topics.answer(q.ident), mp.message("delta", q.ident, text=msg.text))
        elif isinstance(msg, m.ThinkDelta):
            self._publish(self.topics.answer(q.ident), mp.message("think", q.ident, text=msg.text))
        elif isinstance(msg, m.AnswerEnd):
            self._end(q, msg.reason, msg.stats, msg.message)
        elif isinstance(msg, m.Error):
            if msg.code == "not-found":  # a cancel that crossed the answer's end
                return
            self._error(msg.code, msg.message, self.topics.ask, q.ident)
            self._end(q, "error", text=f"{msg.code}: {msg.message}")

    async def on_disconnected(self) -> None:
        """edgebotd is gone: the daemon has cancelled this connection's asks; the askers hear so."""
        for q in list(self.by_bus.values()):
            self._end(q, "error", text="edgebotd went away during the answer")
        self._publish_status()
        await self._results(self.caller.fail_all("edgebotd went away"))

    async def close(self) -> None:
        broker, self.broker = self.broker, None
        if broker is not None:
            await asyncio.get_running_loop().run_in_executor(None, broker.stop, (self.topics.status, mp.OFFLINE))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser("edgebot-mqtt", "Answer questions from an MQTT broker and run declared actions on MQTT "
                                         "devices (docs/integrations.md).",
                         examples="  edgebot-mqtt --broker mqtt://localhost:1883\n"
                                  "  edgebot-mqtt --broker mqtt://broker.lan:1883 --prefix classroom/edgebot")
    parser.add_argument("--broker", help="broker URL, e.g. mqtt://localhost:1883 (default: [mqtt] broker)")
    parser.add_argument("--prefix", help="topic prefix (default: [mqtt] prefix)")

    def build(args: argparse.Namespace, config: Config) -> Bridge:
        return MqttBridge(MqttSettings.from_config(config))

    return bridge_main(parser, build, argv, overrides=lambda a: {"mqtt.broker": a.broker, "mqtt.prefix": a.prefix})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
