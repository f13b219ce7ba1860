"""The classroom panel (``[http] ui``): the chat page at ``/``, its static files, and the small
API under ``/panel/api/`` it talks to (docs/panel.md).

A thin front door: a question becomes one ask of the shared pipeline (``edgebot/asks.py``), source
``http:panel``, in the conversation's session ``panel:<id>`` (so follow-ups reuse the KV cache),
streamed back as server-sent events;
conversations are kept by ``conversations.ConversationStore``; the robot's voice state comes
from the bus through the ``BusTap`` the daemon hands over (this package never imports the bus).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import mimetypes
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from aiohttp import web

from edgebot.asks import Asks, AskSpec, AskStream
from edgebot.config import Config
from edgebot.engine.jobs import EngineBusy, EngineNotReady, Job, JobDelta, JobEnded, JobStarted
from edgebot.engine.scheduler import Engine
from edgebot.http.chat import ApiError, bad
from edgebot.http.conversations import Conversation, ConversationStore, Exchange, default_dir
from edgebot.http.voice_state import WATCHED, VoiceState

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PUBLIC_PREFIXES = ("/panel/static/",)  # served without the token: the page asks for it itself
PUBLIC_PATHS = ("/", "/health", "/favicon.ico")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Resource-Policy": "same-origin"}
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and dead-peer detection honest (seconds)
SAY_MAX_CHARS = 4000


class Tap(Protocol):
    """What the panel needs of the bus (``edgebot.bus.tap.BusTap``)."""

    def watch(self, types: Any, callback: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]: ...

    def publish(self, type_name: str, data: dict[str, Any]) -> int: ...


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, ensure_ascii=False), content_type="application/json")


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


class StaticFiles:
    """The page's files, read and gzipped once, answered from memory with an ETag."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[str, tuple[bytes, bytes, str, str]] = {}  # path -> (raw, gzipped, type, etag)

    def load(self, rel: str) -> Optional[tuple[bytes, bytes, str, str]]:
        if rel in self._cache:
            return self._cache[rel]
        path = (self.root / rel).resolve()
        if self.root not in path.parents or not path.is_file():
            return None
        raw = path.read_bytes()
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".woff2":
            ctype = "font/woff2"
        packed = gzip.compress(raw, 9, mtime=0) if not ctype.startswith("font/") else raw
        entry = (raw, packed, ctype, '"' + hashlib.sha256(raw).hexdigest()[:20] + '"')
        self._cache[rel] = entry
        return entry

    def response(self, request: web.Request, rel: str, max_age_s: int) -> web.Response:
        entry = self.load(rel)
        if entry is None:
            raise web.HTTPNotFound()
        raw, packed, ctype, etag = entry
        headers = {"ETag": etag, "Cache-Control": f"max-age={max_age_s}" if max_age_s else "no-cache"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        if packed is not raw and "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            raw = packed
        charset = "utf-8" if ctype.startswith("text/") or ctype.endswith("javascript") else None
        return web.Response(body=raw, content_type=ctype, charset=charset, headers=headers)


class Panel:
    """The panel's routes on the HTTP API's application."""

    def __init__(self, config: Config, engine: Engine, asks: Asks, tap: Optional[Tap]) -> None:
        self.config = config
        self.engine = engine
        self.asks = asks
        self.tap = tap
        http = config.section("http")
        directory = Path(http["conversations_dir"]) if http["conversations_dir"] else default_dir()
        self.store = ConversationStore(directory, http["max_conversations"])
        self.max_chars = http["max_prompt_chars"]
        self.static = StaticFiles(STATIC)
        self.voice = VoiceState(config.get("speech_in", "listen_window_s"))
        self.running: dict[str, Job] = {}  # ask id -> its job, while it runs
        self._unwatch = tap.watch(WATCHED, self.voice.on_message) if tap is not None else None

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/favicon.ico", self.favicon)
        r.add_get("/panel/static/{path:.+}", self.files)
        r.add_get("/panel/api/info", self.info)
        r.add_get("/panel/api/conversations", self.list_conversations)
        r.add_post("/panel/api/conversations", self.new_conversation)
        r.add_get("/panel/api/conversations/{cid}", self.get_conversation)
        r.add_delete("/panel/api/conversations/{cid}", self.delete_conversation)
        r.add_post("/panel/api/conversations/{cid}/ask", self.ask)
        r.add_post("/panel/api/asks/{aid}/cancel", self.cancel)
        r.add_get("/panel/api/voice", self.voice_events)
        r.add_post("/panel/api/listen", self.listen)
        r.add_post("/panel/api/say", self.say)
        app.on_response_prepare.append(self._headers)
        app.on_cleanup.append(self._close)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)

    async def _close(self, app: web.Application) -> None:
        if self._unwatch is not None:
            self._unwatch()

    # -- the page ----------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return self.static.response(request, "index.html", 0)

    async def favicon(self, request: web.Request) -> web.Response:
        return self.static.response(request, "icon.svg", 86400)

    async def files(self, request: web.Request) -> web.Response:
        rel = request.match_info["path"]
        return self.static.response(request, rel, 86400 if rel.startswith("vendor/") else 0)

    # -- conversations -----------------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        st = self.engine.status()
        return _json(200, {"model": st["model"], "state": st["state"], "voice": self.voice.snapshot(),
                           "max_chars": self.max_chars})

    def _conversation(self, request: web.Request) -> Conversation:
        conv = self.store.get(request.match_info["cid"])
        if conv is None:
            raise ApiError(404, f"no conversation {request.match_info['cid']!r} (it may have been deleted)",
                           "invalid_request_error", "not_found")
        return conv

    async def list_conversations(self, request: web.Request) -> web.Response:
        return _json(200, {"conversations": self.store.list()})

    async def new_conversation(self, request: web.Request) -> web.Response:
        return _json(201, self.store.create().to_json())

    async def get_conversation(self, request: web.Request) -> web.Response:
        return _json(200, self._conversation(request).to_json())

    async def delete_conversation(self, request: web.Request) -> web.Response:
        conv = self._conversation(request)
        self.engine.cancel_session(conv.session)
        self.store.delete(conv.id)
        return _json(200, {"deleted": conv.id})

    # -- asking ------------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError as exc:
            raise bad(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise bad("the body must be a JSON object")
        return body

    def _text(self, body: dict[str, Any], name: str, limit: int) -> str:
        text = body.get(name)
        if not isinstance(text, str) or not text.strip():
            raise bad(f"{name} must be a non-empty string", name)
        if len(text) > limit:
            raise bad(f"{name} holds {len(text)} characters; at most {limit} are accepted", name)
        return text

    def _spec(self, conv: Conversation, text: str) -> AskSpec:
        """What the panel asks: the shared ask pipeline (``edgebot.asks``) makes the job."""
        turns = conv.turns()
        live = {s["name"]: s["turns"] + s.get("trimmed_turns", 0) for s in self.engine.status()["sessions"]}
        # The engine keeps the session's turns (trimming the oldest to fit the context) while it is
        # live; after an expiry or a restart the stored conversation is handed over as the history.
        history = None if live.get(conv.session, 0) == len(turns) else turns
        return AskSpec(id=f"panel-{secrets.token_hex(8)}", text=text, source="http:panel", session=conv.session,
                       show_think=True, history=history)

    async def ask(self, request: web.Request) -> web.StreamResponse:
        conv = self._conversation(request)
        text = self._text(await self._body(request), "text", self.max_chars)
        try:
            stream = self.asks.open(self._spec(conv, text))
        except EngineBusy as exc:
            raise ApiError(429, f"the engine queue is full: {exc}; try again", "rate_limit_exceeded",
                           "rate_limit_exceeded") from None
        except EngineNotReady as exc:
            raise ApiError(503, f"not ready: {exc}", "server_error", "model_not_ready") from None
        job = stream.job
        self.running[job.id] = job
        exchange = Exchange(question=text)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        ended = False
        try:
            await resp.prepare(request)
            await resp.write(_sse({"type": "queued", "id": job.id, "conversation": conv.id}))
            ended = await self._relay(resp, stream, exchange)
        finally:
            self.running.pop(job.id, None)
            if not ended:  # the page went away (or a write failed): free the engine
                stream.close("the panel page left")
                log.info("panel page left; cancelled %s", job.id)
        if self.store.get(conv.id) is conv:  # not deleted meanwhile
            self.store.add(conv, exchange)
        await resp.write_eof()
        return resp

    async def _relay(self, resp: web.StreamResponse, stream: AskStream, exchange: Exchange) -> bool:
        """Write the ask's events as they come (merging whatever is waiting); True once it ended."""
        think_started: Optional[float] = None
        thinking: list[str] = []
        answer: list[str] = []
        job_id = stream.job.id
        while True:
            batch = [await stream.next()]
            while stream.pending():
                batch.append(await stream.next())
            out = bytearray()
            for ev in batch:
                if isinstance(ev, JobStarted):
                    out += _sse({"type": "start", "id": job_id})
                elif isinstance(ev, JobDelta) and ev.think:
                    think_started = think_started or time.monotonic()
                    thinking.append(ev.text)
                    out += _sse({"type": "think", "text": ev.text})
                elif isinstance(ev, JobDelta):
                    if think_started and not answer:
                        exchange.think_s = round(time.monotonic() - think_started, 1)
                    answer.append(ev.text)
                    out += _sse({"type": "delta", "text": ev.text})
                elif isinstance(ev, JobEnded):
                    exchange.answer, exchange.thinking = "".join(answer), "".join(thinking)
                    if think_started and not answer:
                        exchange.think_s = round(time.monotonic() - think_started, 1)
                    exchange.reason = "error" if ev.code else ev.reason
                    exchange.message, exchange.stats = ev.message, ev.stats
                    out += _sse({"type": "end", "reason": exchange.reason, "message": ev.message, "code": ev.code,
                                 "stats": ev.stats, "think_s": exchange.think_s})
                    await resp.write(bytes(out))
                    return True
            await resp.write(bytes(out))

    async def cancel(self, request: web.Request) -> web.Response:
        aid = request.match_info["aid"]
        if aid not in self.running:
            raise ApiError(404, f"no running answer {aid!r} (it has already ended)", "invalid_request_error",
                           "not_found")
        found = self.engine.cancel(aid)
        return _json(200, {"cancelled": aid, "found": bool(found)})

    # -- the robot's voice -------------------------------------------------------------------------

    async def voice_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent snapshots of the voice state, the current one first."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        queue = self.voice.follow()
        try:
            while True:
                try:
                    snap = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                await resp.write(_sse(snap))
        finally:
            self.voice.unfollow(queue)

    def _publish(self, type_name: str, data: dict[str, Any], bridge: str) -> web.Response:
        if self.tap is None:
            raise ApiError(503, "the bus is not connected to the HTTP server", "server_error", "no_bus")
        delivered = self.tap.publish(type_name, data)
        if not delivered:
            raise ApiError(409, f"no {bridge} bridge is connected; start edgebot-{bridge} on the board",
                           "invalid_request_error", f"no_{bridge.replace('-', '_')}")
        return _json(200, {"delivered": delivered})

    async def listen(self, request: web.Request) -> web.Response:
        return self._publish("listen", {}, "speech-in")

    async def say(self, request: web.Request) -> web.Response:
        text = self._text(await self._body(request), "text", SAY_MAX_CHARS)
        return self._publish("say", {"text": text, "id": f"panel-say-{secrets.token_hex(4)}"}, "speech-out")
