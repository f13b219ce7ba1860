"""Inside edgebotd: turns asks into action calls and runs them on the board, safely.

For each ask the dispatcher hands over (:meth:`ActionDesk.wants`), in this order:

1. a pending confirmation ("Shall I open the door?") is answered by a yes/no reply;
2. the fast path: a configured phrase matches -> the action runs at once, no engine job;
3. the model path: one engine job whose answer is constrained by :func:`tools.answer_schema`;
   a call is validated again and run, a plain answer is streamed as the answer.

Every call goes through :meth:`_call`: declared? arguments valid? switched on? rate limit?
confirmation? Only then ``action-run`` goes to the serial bridge, whose ``action-result`` (or a
timeout) becomes the spoken/printed confirmation (``[robot] done_phrase``/``failed_phrase``).
Each call ends in one ``action`` event, to the asker and to subscribers, and one log line.
Runs on the event loop; engine events reach it through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from edgebot.actions import tools
from edgebot.actions.matcher import PhraseMatcher, yes_or_no
from edgebot import policy
from edgebot.actions.registry import Action, CallError, Registry
from edgebot.asks import AskSpec, Asks
from edgebot.bus import messages as m
from edgebot.bus.hub import Connection, Hub
from edgebot.config import Config
from edgebot.engine.prompt import Turn
from edgebot.engine.jobs import EngineBusy, EngineNotReady, JobDelta, JobEnded, JobStarted

log = logging.getLogger(__name__)

CONFIRM_TOKENS = 96
"""Most tokens of the model's sentence about an action's result."""


@dataclass
class Pending:
    """An action waiting for yes/no; ``until`` in monotonic seconds."""

    action: Action
    args: dict[str, Any]
    until: float
    ask: str


@dataclass
class Outcome:
    """How one call ended: ``result`` as in the ``action`` event; ``say`` the sentence for the user."""

    result: str
    text: str
    say: str


class ActionDesk:
    """The actions side of the dispatcher."""

    def __init__(self, config: Config, registry: Registry, asks: Asks, loop: asyncio.AbstractEventLoop,
                 hub: Callable[[], Optional[Hub]]) -> None:
        self.registry = registry
        self.asks = asks
        self.loop = loop
        self._hub = hub
        self.robot = config.section("robot")
        # The RKLLM runtime has no grammar (it refuses a JSON-schema job): only phrases run actions there.
        self.model_offer = bool(self.robot["model_actions"]) and config.get("llm", "backend") != "rkllm"
        if self.robot["model_actions"] and not self.model_offer:
            log.warning("[llm] backend = \"rkllm\" has no grammar: actions run by phrases only "
                        "(set [robot] model_actions = false to silence this)")
        self.matcher = PhraseMatcher(list(registry.actions.values()))
        self.schema_json = json.dumps(tools.answer_schema(list(registry.actions.values())))
        self.pending: Optional[Pending] = None
        self.calls: dict[str, asyncio.Future[m.ActionResult]] = {}
        self.runners: dict[str, set[Connection]] = {}  # call id -> the serial bridges it was sent to
        self.by_ask: dict[str, asyncio.Future[m.ActionResult]] = {}  # ask id -> the R it waits for
        self.cancelled: set[str] = set()
        self.history: dict[str, deque[float]] = {name: deque() for name in registry.actions}
        self._ids = itertools.count(1)
        self.tasks: set[asyncio.Task[None]] = set()

    # -- which asks are ours ---------------------------------------------------------------------

    def wants(self, ask: m.Ask) -> bool:
        if not self.registry.actions:
            return False
        if self.pending is not None and self.pending.until > time.monotonic():
            return True
        if self.matcher.match(ask.text) is not None:
            return True  # also while switched off: the refusal is said, nothing is run
        return self.registry.enabled and self.model_offer

    def start(self, conn: Connection, ask: m.Ask, spec: AskSpec, done: Callable[[], None]) -> None:
        """Handle ``ask`` (``spec``: what the bus asked, not submitted); ``done`` when it ended."""
        task = self.loop.create_task(self._handle(conn, ask, spec, done))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def result(self, msg: m.ActionResult, conn: Connection) -> None:
        """An ``action-result`` from ``conn``: taken only from a serial bridge the run was sent to."""
        fut = self.calls.get(msg.id)
        if fut is None or fut.done():
            return
        if conn not in self.runners.get(msg.id, ()):
            log.warning("action-result for %s from %s, which was not sent that action-run: ignored", msg.id, conn.name)
            conn.send(m.Error("not-allowed", "action-result: only the bridge that was sent the action-run may "
                                             "answer it", msg.id))
            return
        fut.set_result(msg)

    def cancel(self, ask_id: str) -> bool:
        """``cancel {id}`` (or the asker left): stop waiting for its board's result, or drop its
        pending confirmation. An action already sent may still happen on the board."""
        found = False
        if self.pending is not None and self.pending.ask == ask_id:
            self.pending, found = None, True
        fut = self.by_ask.get(ask_id)
        if fut is not None and not fut.done():
            self.cancelled.add(ask_id)
            fut.cancel()
            found = True
        return found

    def status(self) -> dict[str, Any]:
        return {"enabled": self.registry.enabled, "model_actions": self.model_offer,
                "declared": self.registry.summaries(),
                "pending": self.pending.action.name if self.pending else None}

    # -- one ask ---------------------------------------------------------------------------------

    def _send(self, conn: Connection, msg: m.Message) -> None:
        conn.send(msg)
        hub = self._hub()
        if hub is not None:
            hub.publish(msg, skip=conn)

    def _fixed_answer(self, conn: Connection, ask: m.Ask, text: str, stats: Optional[dict[str, Any]] = None) -> None:
        session = ask.session or f"{ask.source}:{ask.id}"
        self._send(conn, m.AnswerStart(id=ask.id, session=session, source=ask.source, speak=ask.speak))
        self._say(conn, ask, text)
        self._send(conn, m.AnswerEnd(id=ask.id, reason="stop", stats=stats or {}))

    def _say(self, conn: Connection, ask: m.Ask, text: str) -> None:
        if text:
            self._send(conn, m.AnswerDelta(id=ask.id, text=text))

    async def _handle(self, conn: Connection, ask: m.Ask, spec: AskSpec, done: Callable[[], None]) -> None:
        try:
            pending, self.pending = self.pending, None
            if pending is not None and pending.until > time.monotonic():
                reply = yes_or_no(ask.text, self.robot["yes_words"], self.robot["no_words"])
                if reply is not None:
                    outcome = await self._confirmed(conn, ask, pending, reply)
                    if outcome.result == "cancelled":
                        self._send(conn, m.AnswerEnd(id=ask.id, reason="cancelled"))
                    else:
                        self._fixed_answer(conn, ask, outcome.say)
                    return
                self._event(conn, ask, pending.action.name, pending.args, "declined",
                            "the next reply was not yes or no", "confirm")
            found = self.matcher.match(ask.text)
            if found is not None:
                outcome = await self._call(conn, ask, found.action, found.args, "phrase")
                if outcome.result == "cancelled":
                    self._send(conn, m.AnswerEnd(id=ask.id, reason="cancelled"))
                else:
                    self._fixed_answer(conn, ask, outcome.say, {"engine_jobs": 0})
                return
            await self._model(conn, ask, spec, offer=self.registry.enabled and self.model_offer)
        except Exception as exc:  # noqa: BLE001 - one bad ask must not break the daemon
            log.exception("action ask %s failed", ask.id)
            conn.send(m.Error("internal", f"the action could not be handled: {exc}", ask.id))
        finally:
            done()

    async def _model(self, conn: Connection, ask: m.Ask, spec: AskSpec, offer: bool = True) -> None:
        actions = list(self.registry.actions.values())
        if offer:
            spec = dataclasses.replace(spec, text=tools.offer_text(actions, ask.text),
                                       sampling={**(spec.sampling or {}), "json_schema": self.schema_json})
        try:
            events = self.asks.open(spec)
        except (EngineBusy, EngineNotReady) as exc:
            conn.send(m.Error("busy" if isinstance(exc, EngineBusy) else "not-ready", str(exc), ask.id))
            return
        stream = tools.AnswerStream()
        started = False
        async for ev in events:
            if isinstance(ev, JobStarted):
                started = True
                self._send(conn, m.AnswerStart(id=ask.id, session=ev.session, source=ask.source, speak=ask.speak))
            elif isinstance(ev, JobDelta):
                if ev.think:
                    conn.send(m.ThinkDelta(id=ask.id, text=ev.text))
                elif not offer:
                    self._say(conn, ask, ev.text)
                else:
                    self._say(conn, ask, stream.feed(ev.text))
        assert isinstance(ev, JobEnded)
        if ev.code and not started:
            conn.send(m.Error(ev.code, ev.message, ask.id))
            return
        reason, message = ("error" if ev.code else ev.reason), ev.message
        if offer and reason == "stop":
            answer = tools.read_answer(stream.raw)
            if isinstance(answer, tools.Call):
                outcome = await self._call(conn, ask, answer.name, answer.args, "model")
                if outcome.result == "cancelled":
                    reason = "cancelled"
                elif outcome.result in ("ok", "err", "timeout"):
                    said = await self._model_confirms(conn, ask, spec.text, events.job.max_tokens, stream.raw, outcome)
                    if said == "cancelled":
                        reason = "cancelled"
                    elif not said:
                        self._say(conn, ask, outcome.say)
                else:
                    self._say(conn, ask, outcome.say)
            elif isinstance(answer, tools.Plain):
                pass  # already streamed
            else:
                log.warning("ask %s: the model's answer is neither a call nor an answer: %r", ask.id, stream.raw[:200])
                reason, message = "error", "the model's answer was not a valid action call or answer"
        self._send(conn, m.AnswerEnd(id=ask.id, reason=reason, stats=ev.stats, message=message))  # type: ignore[arg-type]

    async def _model_confirms(self, conn: Connection, ask: m.Ask, offered: str, max_tokens: int, call_json: str,
                              outcome: Outcome) -> Union[bool, str]:
        """The board's result goes back to the model, which says what happened (no thinking, no
        grammar, streamed). False, with nothing said, when that job could not run or said nothing;
        ``"cancelled"`` when the ask was cancelled meanwhile."""
        said: list[str] = []
        result = f"{outcome.result}: {outcome.text}" if outcome.text else outcome.result
        follow = AskSpec(id=ask.id, text=f"Result: {result}. Tell me in one short sentence what you did.",
                         source=ask.source, max_tokens=min(max_tokens, CONFIRM_TOKENS), think_budget=0,
                         history=[Turn(offered, call_json.strip())])
        try:
            events = self.asks.open(follow)
        except (EngineBusy, EngineNotReady) as exc:
            log.warning("ask %s: no model confirmation (%s); saying the fixed phrase", ask.id, exc)
            return False
        async for ev in events:
            if isinstance(ev, JobDelta) and not ev.think and ev.text:
                if not said and not ev.text.strip():
                    continue
                said.append(ev.text)
                self._say(conn, ask, ev.text)
            elif isinstance(ev, JobEnded):
                if ev.reason == "cancelled":
                    return "cancelled"
                return bool("".join(said).strip())
        return False

    # -- one call --------------------------------------------------------------------------------

    def _phrase(self, key: str, action: str, result: str) -> str:
        try:
            return self.robot[key].format(action=action, result=result)
        except (KeyError, IndexError, ValueError):
            return f"{self.robot[key]} ({result})"

    def _refuse(self, conn: Connection, ask: m.Ask, name: Any, args: Any, why: str, path: str) -> Outcome:
        self._event(conn, ask, str(name)[:64], args if isinstance(args, dict) else {}, "refused", why, path)
        return Outcome("refused", why, self._phrase("failed_phrase", str(name)[:64], why))

    async def _call(self, conn: Connection, ask: m.Ask, name: Any, args: Any, path: str) -> Outcome:
        try:
            action = self.registry.check_call(name, args)
        except CallError as exc:
            return self._refuse(conn, ask, name, args, str(exc), path)
        limited = self._rate_limited(action)
        if limited:
            return self._refuse(conn, ask, name, args, limited, path)
        if action.confirm:
            self.pending = Pending(action, args, time.monotonic() + self.robot["confirm_timeout_s"], ask.id)
            self._event(conn, ask, action.name, args, "pending", action.question, path)
            return Outcome("pending", action.question, action.question)
        return await self._run(conn, ask, action, args, path)

    async def _confirmed(self, conn: Connection, ask: m.Ask, pending: Pending, yes: bool) -> Outcome:
        if not yes:
            self._event(conn, ask, pending.action.name, pending.args, "declined", "declined", "confirm")
            return Outcome("declined", "declined", "OK, I will not do that.")
        try:
            action = self.registry.check_call(pending.action.name, pending.args)  # the switch may have changed
        except CallError as exc:
            return self._refuse(conn, ask, pending.action.name, pending.args, str(exc), "confirm")
        limited = self._rate_limited(action)
        if limited:
            return self._refuse(conn, ask, action.name, pending.args, limited, "confirm")
        return await self._run(conn, ask, action, pending.args, "confirm")

    def _rate_limited(self, action: Action) -> str:
        if action.rate_limit <= 0:
            return ""
        now = time.monotonic()
        calls = self.history[action.name]
        while calls and calls[0] <= now - action.rate_window_s:
            calls.popleft()
        if len(calls) >= action.rate_limit:
            return f"{action.name} may run at most {action.rate_limit} times per {action.rate_window_s:g} s"
        return ""

    async def _run(self, conn: Connection, ask: m.Ask, action: Action, args: dict[str, Any], path: str) -> Outcome:
        call_id = f"act-{next(self._ids)}-{secrets.token_hex(3)}"  # not guessable by another bus client
        args = {k: args[k] for k in action.schema["properties"] if k in args}  # declared order on the wire
        self.history[action.name].append(time.monotonic())
        hub = self._hub()
        fut: asyncio.Future[m.ActionResult] = self.loop.create_future()
        self.calls[call_id] = fut
        self.by_ask[ask.id] = fut
        run = m.ActionRun(id=call_id, port=action.port, name=action.name, args=args)
        runners = {c for c in hub.connections if c.role in policy.ACTION_RUNNERS and c.wants(run.TYPE)} if hub else set()
        self.runners[call_id] = runners
        try:
            for conn_ in runners:  # only serial bridges are sent a run, and only they may answer it
                conn_.send(run)
            delivered = len(runners)
            if not delivered:
                why = f"no edgebot-serial is connected for {action.port}"
                self._event(conn, ask, action.name, args, "err", why, path, call_id)
                return Outcome("err", why, self._phrase("failed_phrase", action.name, why))
            try:
                res = await asyncio.wait_for(fut, self.robot["result_timeout_s"])
            except asyncio.TimeoutError:
                why = f"the board did not answer within {self.robot['result_timeout_s']:g} s"
                self._event(conn, ask, action.name, args, "timeout", why, path, call_id)
                return Outcome("timeout", why, self._phrase("failed_phrase", action.name, why))
            except asyncio.CancelledError:
                if ask.id not in self.cancelled:
                    raise  # edgebotd is stopping
                self.cancelled.discard(ask.id)
                why = "cancelled while waiting for the board (the action may still happen)"
                self._event(conn, ask, action.name, args, "cancelled", why, path, call_id)
                return Outcome("cancelled", why, "")
        finally:
            self.calls.pop(call_id, None)
            self.runners.pop(call_id, None)
            self.by_ask.pop(ask.id, None)
        result = "ok" if res.ok else "timeout" if res.timeout else "err"
        self._event(conn, ask, action.name, args, result, res.text, path, call_id)
        key = "done_phrase" if res.ok else "failed_phrase"
        return Outcome(result, res.text, self._phrase(key, action.name, res.text or result))

    def _event(self, conn: Connection, ask: m.Ask, name: str, args: dict[str, Any], result: str, text: str,
               path: str, call_id: Optional[str] = None) -> None:
        call_id = call_id or f"act-{next(self._ids)}"
        log.log(logging.INFO if result in ("ok", "pending") else logging.WARNING,
                "action %s %s %s from %s (%s): %s %s", call_id, name, json.dumps(args, ensure_ascii=False)[:200],
                ask.source, path, result, text)
        self._send(conn, m.Action(id=call_id, name=name, args=args, result=result, text=text,  # type: ignore[arg-type]
                                  path=path, ask=ask.id, source=ask.source))
