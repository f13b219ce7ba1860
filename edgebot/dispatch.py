"""What each bus message means inside edgebotd: asks become engine jobs, engine events become
bus events, everything else is answered or relayed to subscribers.

Runs on the event loop; engine events arrive from the worker thread through
``loop.call_soon_threadsafe`` and are delivered here, so the hub is only touched by the loop.
"""

from __future__ import annotations

import asyncio
import glob
import logging
from typing import Any, Optional

import edgebot
from edgebot import policy
from edgebot.bus import messages as m
from edgebot.bus.hub import Connection, Hub
from edgebot.config import Config
from edgebot.asks import AskSpec, Asks, AskStream
from edgebot.engine.jobs import EngineBusy, EngineEvent, EngineNotReady, JobDelta, JobEnded, JobStarted
from edgebot.engine.scheduler import Engine

log = logging.getLogger(__name__)

DAEMON_ONLY = {"welcome", "answer-start", "answer-delta", "think-delta", "answer-end", "status-report",
               "pong", "ack", "error", "action-run", "action"}
RELAYED = {"heard", "speaking", "serial-port", "listen", "audio-device", "voice-latency"}


def read_rss_mb() -> Optional[float]:
    """Resident memory of this process, MiB (from /proc/self/status)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def read_temperature_c() -> Optional[float]:
    """The hottest thermal zone in degrees Celsius, where /sys/class/thermal has one."""
    temps = []
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        try:
            with open(path) as fh:
                temps.append(int(fh.read().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


class Dispatcher:
    """The hub's message handler; also delivers engine events to clients."""

    def __init__(self, config: Config, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.engine = engine
        self.loop = loop
        self.hub: Optional[Hub] = None
        self.asks = Asks(config, engine)
        self.owners: dict[str, tuple[Connection, m.Ask]] = {}  # ask id -> (asker, ask)
        self.streams: dict[str, AskStream] = {}  # ask id -> its answer's event stream
        self.tasks: set[asyncio.Task[None]] = set()
        self.voice_latency: dict[str, Any] = {}  # the last voice-latency report, for status (bounded)
        self.speaking = policy.SpeakingState(config.get("bus", "speaking_max_s"))
        self.audio_devices: dict[str, tuple[Connection, m.AudioDevice]] = {}  # bridge -> its last report
        self.actions: Optional[Any] = None  # edgebot.actions.desk.ActionDesk when [[actions]] are declared
        if config.arrays.get("actions"):
            self.actions = self._action_desk()

    def _action_desk(self) -> Optional[Any]:
        """The actions side (docs/actions.md); None, after logging why, when it cannot run."""
        from edgebot.actions.desk import ActionDesk
        from edgebot.actions.registry import Registry
        from edgebot.config import ConfigError

        try:
            return ActionDesk(self.config, Registry.from_config(self.config), self.asks, self.loop, lambda: self.hub)
        except ConfigError as exc:
            log.error("configuration error, no action will run: %s", exc)
            return None

    # -- from clients --------------------------------------------------------------------------

    async def handle(self, conn: Connection, msg: m.Message) -> None:
        assert self.hub is not None
        refusal = policy.sender_refusal(conn, msg)
        if refusal:
            conn.send(m.Error("not-allowed", refusal, getattr(msg, "id", None)))
            return
        if isinstance(msg, m.Ask):
            self._ask(conn, msg)
        elif isinstance(msg, m.Cancel):
            self._cancel(conn, msg)
        elif isinstance(msg, m.Hello):
            conn.name = f"{msg.client[:64]}-{conn.id}"
            refusal = policy.role_refusal(conn, msg.role)
            if refusal:
                conn.role = "client"
                conn.send(m.Error("forbidden", refusal))
                return
            conn.send(m.Welcome(server_version=edgebot.__version__, model=self.engine.backend.info().model,
                                session_defaults=self._session_defaults()))
        elif isinstance(msg, m.Subscribe):
            unknown = sorted(set(msg.types) - set(m.BY_TYPE) - {"*"})
            if unknown:
                conn.send(m.Error("bad-field", f"subscribe: unknown type(s) {', '.join(unknown)}"))
                return
            conn.subscriptions = set(msg.types)
            conn.send(m.Ack(of="subscribe", delivered=len(conn.subscriptions)))
        elif isinstance(msg, m.Say):
            if msg.id is not None and (msg.id in self.owners or msg.id in self.speaking.active):
                conn.send(m.Error("duplicate-id", f"say: id {msg.id!r} is in use by an answer in progress or "
                                                  f"being spoken; use another id", msg.id))
                return
            speaker = self.audio_devices.get("speech-out")
            if speaker is not None and speaker[1].state == "missing" and speaker[0] in self.hub.connections:
                conn.send(m.Error("not-ready", f"nothing can be spoken: edgebot-speech-out has no speaker "
                                               f"({speaker[1].message}); it retries by itself", msg.id))
                return
            delivered = self.hub.publish(msg, skip=conn)
            if delivered:
                conn.send(m.Ack(of="say", delivered=delivered))
            else:
                conn.send(m.Error("not-found", "no speech-out bridge is connected; start edgebot-speech-out", msg.id))
        elif isinstance(msg, m.Status):
            conn.send(self.status_report())
        elif isinstance(msg, m.Ping):
            conn.send(m.Pong(id=msg.id))
        elif isinstance(msg, m.ActionResult):
            if self.actions is not None:
                self.actions.result(msg, conn)
        elif msg.TYPE in RELAYED:
            if isinstance(msg, m.VoiceLatency):
                self.voice_latency = policy.latency_for_status(msg)
            elif isinstance(msg, m.Speaking):
                self._speaking(conn, msg)
            if isinstance(msg, m.AudioDevice):
                self.audio_devices[msg.bridge] = (conn, msg)
            self.hub.publish(msg, skip=conn)
        elif msg.TYPE in DAEMON_ONLY:
            conn.send(m.Error("not-allowed", f"{msg.TYPE!r} is sent by edgebotd, not to it"))

    def _session_defaults(self) -> dict[str, Any]:
        llm = self.config.section("llm")
        return {"max_tokens": llm["max_tokens"], "think_budget": llm["think_budget"],
                "temperature": llm["temperature"], "n_ctx": llm["n_ctx"]}

    def _speaking(self, conn: Connection, msg: m.Speaking) -> None:
        """Track speech-out's start/stop so a lost stop cannot mute speech-in for good."""
        if msg.state == "start":
            self.speaking.start(conn, msg.id or "")
            self.loop.call_later(self.speaking.max_s + 0.05, self._speaking_ended, self.speaking.expired, "expired")
        else:
            self.speaking.stop(msg.id or "")

    def _speaking_ended(self, which: Any, why: str) -> None:
        """Publish ``speaking {stop}`` for the ids ``which()`` returns (expired, or their speaker left)."""
        for ident in which():
            log.warning("speaking %s %s without a stop; telling the bus it stopped", ident or "(no id)", why)
            if self.hub is not None:
                self.hub.publish(m.Speaking(state="stop", id=ident or None))

    def _ask(self, conn: Connection, ask: m.Ask) -> None:
        if not ask.id or len(ask.id) > policy.MAX_ID_CHARS:
            conn.send(m.Error("bad-field", "ask: id must be 1-128 characters", ask.id[:policy.MAX_ID_CHARS] or None))
            return
        refusal = policy.session_refusal(ask.session)
        if refusal:
            conn.send(m.Error("bad-field", refusal, ask.id))
            return
        if not ask.text.strip():
            conn.send(m.Error("bad-field", "ask: text is empty", ask.id))
            return
        if ask.id in self.owners:
            conn.send(m.Error("duplicate-id", f"an answer with id {ask.id!r} is already in progress", ask.id))
            return
        if len(conn.inflight) >= self.config.get("bus", "max_inflight"):
            conn.send(m.Error("busy", f"this client already has {len(conn.inflight)} unfinished questions", ask.id))
            return
        spec = AskSpec(id=ask.id, text=ask.text, source=ask.source, session=ask.session,
                       show_think=ask.think == "show", max_tokens=ask.max_tokens, think_budget=ask.think_budget)
        self.owners[ask.id] = (conn, ask)
        conn.inflight.add(ask.id)
        if self.actions is not None and self.actions.wants(ask):  # phrases, confirmation, the model's tools
            self.actions.start(conn, ask, spec, done=lambda: self._forget(ask.id))
            return
        try:
            stream = self.asks.open(spec)
        except (EngineBusy, EngineNotReady) as exc:
            self._forget(ask.id)
            code = "busy" if isinstance(exc, EngineBusy) else "not-ready"
            conn.send(m.Error(code, str(exc), ask.id))
            return
        self.streams[ask.id] = stream
        task = self.loop.create_task(self._relay(conn, ask, stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _cancel(self, conn: Connection, msg: m.Cancel) -> None:
        assert self.hub is not None
        if msg.id is None and msg.session is None:
            conn.send(m.Error("bad-field", "cancel: give an id or a session"))
            return
        found = (self.engine.cancel(msg.id) if msg.id is not None else 0) or \
            (self.engine.cancel_session(msg.session) if msg.session is not None else 0) or \
            (self.actions.cancel(msg.id) if self.actions is not None and msg.id is not None else 0)
        # Subscribers hear every cancel: speech-out may still be speaking an answer the engine has
        # finished (or a `say`), and must stop it.
        delivered = self.hub.publish(msg, skip=conn)
        if not found and not delivered:
            conn.send(m.Error("not-found", f"nothing to cancel for {msg.id or msg.session!r}", msg.id))

    def disconnected(self, conn: Connection) -> None:
        """A client left: its unfinished answers are cancelled so the engine is freed; what it was
        speaking ends (``speaking {stop}``) so speech-in does not stay muted."""
        self._speaking_ended(lambda: self.speaking.left(conn), "ended by its speaker leaving")
        for bridge, (owner, _) in list(self.audio_devices.items()):
            if owner is conn:
                del self.audio_devices[bridge]
        for ask_id in list(conn.inflight):
            stream = self.streams.get(ask_id)
            if stream is not None:
                stream.close(f"its client {conn.name} disconnected")
            elif self.engine.cancel(ask_id):  # an action's model job (the desk reads its stream)
                log.debug("ask %s cancelled: its client %s disconnected", ask_id, conn.name)
            if self.actions is not None and self.actions.cancel(ask_id):
                log.debug("ask %s: action cancelled, its client %s disconnected", ask_id, conn.name)

    # -- from the engine -----------------------------------------------------------------------

    def _forget(self, ask_id: str) -> None:
        owner = self.owners.pop(ask_id, None)
        self.streams.pop(ask_id, None)
        if owner:
            owner[0].inflight.discard(ask_id)

    async def _relay(self, conn: Connection, ask: m.Ask, stream: AskStream) -> None:
        """One answer's events, in order, to its asker (and subscribers)."""
        try:
            async for ev in stream:
                self._deliver(conn, ask, ev, stream.started)
        finally:
            self._forget(ask.id)

    def _deliver(self, conn: Connection, ask: m.Ask, ev: EngineEvent, started: bool) -> None:
        assert self.hub is not None
        out: m.Message
        if isinstance(ev, JobStarted):
            out = m.AnswerStart(id=ev.id, session=ev.session, source=ask.source, speak=ask.speak)
        elif isinstance(ev, JobDelta):
            if ev.think:
                conn.send(m.ThinkDelta(id=ev.id, text=ev.text))  # thinking goes only to the asker
                return
            out = m.AnswerDelta(id=ev.id, text=ev.text)
        else:
            assert isinstance(ev, JobEnded)
            if ev.code and not started:  # refused before it began: the ask ends with error{id}
                conn.send(m.Error(ev.code, ev.message, ev.id))
                return
            reason = "error" if ev.code else ev.reason  # after answer-start, failures end as answer-end
            out = m.AnswerEnd(id=ev.id, reason=reason, stats=ev.stats, message=ev.message)  # type: ignore[arg-type]
        conn.send(out)
        self.hub.publish(out, skip=conn)

    def status_report(self) -> m.StatusReport:
        st = self.engine.status()
        return m.StatusReport(server_version=edgebot.__version__, model=st["model"], state=st["state"],
                              queue={**st["queue"], "submitted": self.asks.submitted}, sessions=st["sessions"],
                              last_tokens_per_s=st["last_tokens_per_s"], load_progress=st.get("load_progress"),
                              kv=st.get("kv") or {},
                              memory={"rss_mb": read_rss_mb()}, temperature_c=read_temperature_c(),
                              clients=len(self.hub.connections) if self.hub else 0, error=st["error"],
                              voice_latency=self.voice_latency, speaking=self.speaking.snapshot(),
                              actions=self.actions.status() if self.actions is not None else {},
                              devices={bridge: {"state": rep.state, "device": rep.device, "message": rep.message}
                                       for bridge, (_, rep) in sorted(self.audio_devices.items())})
