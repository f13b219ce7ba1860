"""The aiohttp server inside edgebotd's event loop: ``POST /v1/chat/completions`` (JSON or
server-sent events), ``GET /v1/models``, ``GET /health``, and with ``[http] ui`` the classroom
panel's page and API (``panel.py``).

Every request becomes one ask of the shared pipeline (``edgebot/asks.py``: source ``http``, its
priority, think budget and token cap decided there) on the same queue as the bus's asks; there is
no second model and no thread pool here. A client that goes away cancels its job: aiohttp cancels
the handler (``handler_cancellation``), and the handler's ``finally`` closes the ask's stream,
which cancels the job whether it was queued or running.

The event loop is shared with the bus and the watchdog, so it does no CPU-heavy work: decoding and
validating a request body and checking its JSON schema's grammar run on one "edgebot-http-check"
thread, within CHECK_S. Before that, the middleware applies the doors of ``edgebot.http.doors``
(Host, Origin, Content-Type, token, connection cap), and the body must arrive within
``[http] body_timeout_s`` with at most ``[http] max_request_bodies`` arriving at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from aiohttp import web

from edgebot.asks import AskSpec, Asks, AskStream
from edgebot.config import Config
from edgebot.engine.jobs import EngineBusy, EngineNotReady, JobDelta, JobEnded
from edgebot.engine.scheduler import Engine
from edgebot.http import tools as fc
from edgebot.http.chat import DONE, FINISH, ApiError, ChatRequest, bad, chunk, completion, parse_chat, sse_error
from edgebot.http.doors import (ConnectionCap, check_host, check_json_type, check_origin, is_loopback,
                                refuse_preflight, token_ok)
from edgebot.http.panel import PUBLIC_PATHS, PUBLIC_PREFIXES, Panel

log = logging.getLogger(__name__)

SHUTDOWN_S = 1.0
"""How long closing the server waits for running requests (seconds); the engine has ended them by then."""
CHECK_S = 10.0
"""Longest a request may wait for and take in the check thread (seconds) before it is answered 503."""
LINGER_S = 1.0
"""How long aiohttp goes on reading a body the answer did not need before closing (seconds)."""


def config_problem(config: Config) -> Optional[str]:
    """Why ``[http]`` cannot be served as configured, or None."""
    http = config.section("http")
    if not is_loopback(http["host"]) and not http["token"]:
        return (f"[http] host = {http['host']!r} is not a loopback address, so [http] token must be set "
                f"(clients then send Authorization: Bearer <token>)")
    return None


def _json(status: int, body: Any, headers: Optional[dict[str, str]] = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, ensure_ascii=False), content_type="application/json",
                        headers=headers)


def _error_response(err: ApiError, ollama: bool = False) -> web.Response:
    """OpenAI's ``{"error": {message, type, param, code}}``, or Ollama's ``{"error": message}`` under /api/."""
    headers = {"Retry-After": "1"} if err.status in (429, 503) else None
    resp = _json(err.status, {"error": err.message} if ollama else err.body(), headers)
    if err.status in (408, 413):
        resp.force_close()  # the rest of the body is not wanted
    return resp


def _ended_error(ev: JobEnded) -> ApiError:
    """An ended job that produced no answer, as the HTTP error to report."""
    if ev.code == "too-long":
        return ApiError(400, ev.message, "invalid_request_error", "context_length_exceeded", "messages")
    if ev.reason == "cancelled":
        return ApiError(503, "the answer was cancelled (edgebotd is stopping)", "server_error", "cancelled")
    if ev.code == "backend":
        return ApiError(502, ev.message, "server_error", "backend_error")
    if ev.code == "busy":  # pushed out of a full queue by a higher-priority (voice) question
        return ApiError(429, ev.message or "the engine queue is full", "rate_limit_exceeded", "rate_limit_exceeded")
    return ApiError(500, ev.message or "internal error", "server_error", ev.code or "internal")


def _public(path: str) -> bool:
    """Paths served without the token: /health and the panel's page and files (never its API)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class HttpApi:
    """The HTTP API of one edgebotd: ``start()`` on the daemon's loop, ``close()`` at shutdown."""

    def __init__(self, config: Config, engine: Engine, asks: Optional[Asks] = None,
                 tap: Optional[Any] = None) -> None:
        self.config = config
        self.engine = engine
        self.asks = asks or Asks(config, engine)
        self.tap = tap  # edgebot.bus.tap.BusTap for the panel's voice state, push-to-talk and say
        http, llm = config.section("http"), config.section("llm")
        self.host, self.port = http["host"], http["port"]
        self.token = http["token"].encode()
        self.max_body = http["max_body_bytes"]
        self.max_prompt_chars = http["max_prompt_chars"]
        self.model_id = http["model_name"] or (llm["remote_model"] if llm["backend"] == "remote" and
                                               llm["remote_model"] else Path(llm["model"]).stem)
        self.created = int(time.time())
        self.tools_supported = True  # function calling (edgebot/http/tools.py), shown by /api/show
        self.check_hosts = is_loopback(self.host)  # DNS rebinding matters only where the API is loopback-only
        self._runner: Optional[web.AppRunner] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._cap: Optional[ConnectionCap] = None
        self._bodies = 0  # request bodies being received now
        self._evictions = 0  # connections closed to make room for new ones
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgebot-http-check")

    # -- lifecycle -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._errors])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        if self.config.get("http", "ui"):
            Panel(self.config, self.engine, self.asks, self.tap).register(app)

        from edgebot.http.ollama import OllamaApi

        OllamaApi(self).register(app)
        return app

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound.

        Not ``web.TCPSite``: the listening socket's protocol factory is wrapped in the connection cap.
        aiohttp's keep-alive timer starts when a connection opens and closes it if no complete
        request headers arrived by then: that is ``[http] header_timeout_s``."""
        http = self.config.section("http")
        runner = web.AppRunner(self.app(), handler_cancellation=True, shutdown_timeout=SHUTDOWN_S, access_log=None,
                               keepalive_timeout=http["header_timeout_s"], lingering_time=LINGER_S)
        await runner.setup()
        assert runner.server is not None
        self._cap = ConnectionCap(runner.server, http["max_connections"], self._evicted)
        try:
            self._server = await asyncio.get_running_loop().create_server(self._cap, self.host, self.port,
                                                                          reuse_address=True)
            if not self._server.sockets:  # asyncio skips an address whose socket() fails (a forbidden family)
                self._server.close()
                raise OSError(f"no socket could be opened for {self.host}:{self.port} (the address family is not "
                              f"allowed here: under systemd, RestrictAddressFamilies= lacks AF_INET/AF_INET6)")
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("HTTP API on http://%s:%d/v1 (%s)", self.host, self.port,
                 "bearer token required" if self.token else "no token")

    def _evicted(self) -> None:
        """Log the first connection closed for room and then every 100th, not each of a flood."""
        self._evictions += 1
        if self._evictions % 100 == 1:
            log.warning("HTTP: [http] max_connections (%d) reached; closing the oldest idle connection to make room "
                        "(%d so far)", self.config.get("http", "max_connections"), self._evictions)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._checker.shutdown(wait=False, cancel_futures=True)

    # -- middleware: errors and the token ----------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        busy = self._cap.busy if self._cap is not None else set()
        busy.add(request.protocol)
        try:
            self._doors(request)
            return await handler(request)
        except ApiError as err:
            return _error_response(err, request.path.startswith("/api/"))
        except web.HTTPRequestEntityTooLarge:
            return _error_response(self._too_large(), request.path.startswith("/api/"))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error_response(ApiError(exc.status, f"{request.method} {request.path}: {exc.reason}",
                                            "invalid_request_error", "not_found" if exc.status == 404 else None),
                                   request.path.startswith("/api/"))
        finally:
            busy.discard(request.protocol)

    def _doors(self, request: web.Request) -> None:
        """Raise ApiError unless this request may be served at all (see ``edgebot.http.doors``)."""
        if request.method == "OPTIONS":
            raise refuse_preflight()
        http = self.config.section("http")
        if self.check_hosts:
            check_host(request.headers.get("Host"), http["allowed_hosts"])
        check_origin(request.headers.get("Origin"), http["allowed_origins"], f"{request.scheme}://{request.host}")
        if self.token and not _public(request.path) and not token_ok(request.headers.get("Authorization", ""),
                                                                      self.token):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer <[http] token>)",
                           "invalid_request_error", "invalid_api_key")
        if request.method == "POST":
            check_json_type(request.content_type)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is larger than {self.max_body} bytes ([http] max_body_bytes)",
                        "invalid_request_error", "request_too_large")

    # -- routes ------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        state = self.engine.state
        if state == "ready":
            return _json(200, {"status": "ok"})
        message = self.engine.error or f"the model is {state}"
        return _json(503, {"status": state, "error": {"message": message, "type": "unavailable_error", "code": 503}})

    async def models(self, request: web.Request) -> web.Response:
        return _json(200, {"object": "list", "data": [{"id": self.model_id, "object": "model",
                                                       "created": self.created, "owned_by": "edgebot"}]})

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, within ``[http] body_timeout_s``, while at most ``max_request_bodies`` are read at once."""
        http = self.config.section("http")
        if request.content_length is not None and request.content_length > self.max_body:
            raise self._too_large()
        if self._bodies >= http["max_request_bodies"]:
            raise ApiError(503, f"{self._bodies} request bodies are arriving already ([http] max_request_bodies); "
                                f"try again shortly", "server_error", "overloaded")
        self._bodies += 1
        try:
            return await asyncio.wait_for(request.read(), http["body_timeout_s"])
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {http['body_timeout_s']:g} s "
                                f"([http] body_timeout_s)", "invalid_request_error", "timeout") from None
        finally:
            self._bodies -= 1

    async def read_json(self, request: web.Request) -> Any:
        """A small request body as JSON (``/api/show``); 413/408/503 as for any body, 400 when not JSON."""
        raw = await self._read_body(request)
        try:
            return json.loads(raw)
        except RecursionError:
            raise bad("the body is nested too deeply") from None
        except ValueError as exc:
            raise bad(f"the body is not valid JSON: {exc}") from None

    def _check(self, raw: bytes, prepare: Optional[Callable[[Any], Any]] = None) -> ChatRequest:
        """Decode and validate a body, and check its schema's grammar (on the check thread: CPU-bound).
        ``prepare`` turns another API's decoded body into the OpenAI body first (Ollama's)."""
        try:
            body = json.loads(raw)
        except RecursionError:
            raise bad("the body is nested too deeply to be a chat request") from None
        except ValueError as exc:
            raise bad(f"the body is not valid JSON: {exc}") from None
        if prepare is not None:
            body = prepare(body)
        http = self.config.section("http")
        req = parse_chat(body, self.max_prompt_chars, self.config.get("llm", "n_ctx"), http["max_messages"])
        if req.json_schema is not None:
            what, param = ("tools[].function.parameters", "tools") if req.tools is not None else \
                ("response_format.json_schema.schema", "response_format")
            try:
                self.engine.backend.check_grammar(req.json_schema)
            except (ValueError, RecursionError) as exc:
                raise bad(f"{what} cannot be used: {str(exc)[:500]}", param, "schema_unsupported") from None
        return req

    async def checked(self, request: web.Request, prepare: Optional[Callable[[Any], Any]] = None) -> ChatRequest:
        """Read the body and validate it on the check thread (at most ``CHECK_S`` seconds)."""
        raw = await self._read_body(request)
        checking = self._checker.submit(self._check, raw, prepare)
        try:
            req = await asyncio.wait_for(asyncio.wrap_future(checking), CHECK_S)
        except asyncio.TimeoutError:
            if checking.running():  # stuck in this request's own check: later requests get a fresh thread
                self._checker.shutdown(wait=False, cancel_futures=False)
                self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgebot-http-check")
                log.error("HTTP: a request's check ran over %g s; its thread is abandoned (it may go on using CPU; "
                          "restart edgebotd if this repeats)", CHECK_S)
            raise ApiError(503, f"checking the request took more than {CHECK_S:g} s (other requests may be "
                                f"waiting to be checked); try again, or send a simpler JSON schema",
                           "server_error", "overloaded") from None
        return req

    def ended_error(self, ev: JobEnded) -> ApiError:
        """An ended job that produced no answer, as the HTTP error to report."""
        return _ended_error(ev)

    async def open_stream(self, req: ChatRequest, show_think: bool = True,
                          id_prefix: str = "chatcmpl") -> AskStream:
        """Open ``req``'s ask and wait until its job starts; ApiError when it is refused or ends first.
        The caller closes the stream (``stream.close()``) when it stops reading."""
        try:
            stream = self.asks.open(self._spec(req, show_think, id_prefix))
        except EngineBusy as exc:
            raise ApiError(429, f"the engine queue is full: {exc}", "rate_limit_exceeded", "rate_limit_exceeded") from None
        except EngineNotReady as exc:
            raise ApiError(503, f"not ready: {exc}", "server_error", "model_not_ready") from None
        try:
            first = await stream.next()  # a cancelled wait closes the stream by itself
        except asyncio.CancelledError:
            log.info("HTTP client left; cancelled %s (still queued)", stream.job.id)
            raise
        if isinstance(first, JobEnded):
            raise _ended_error(first)
        return stream

    async def chat(self, request: web.Request) -> web.StreamResponse:
        req = await self.checked(request)
        stream = await self.open_stream(req)
        try:
            if req.stream:
                return await self._stream(request, req, stream)
            return await self._collect(stream, req.tools is not None)
        finally:
            if stream.ended is None:  # client gone (handler cancelled) or write failed: free the engine
                stream.close("the HTTP client left")
                log.info("HTTP client left; cancelled %s", stream.job.id)

    def _spec(self, req: ChatRequest, show_think: bool = True, id_prefix: str = "chatcmpl") -> AskSpec:
        return AskSpec(id=f"{id_prefix}-{secrets.token_hex(12)}", text=req.question, source="http",
                       show_think=show_think, max_tokens=req.max_tokens, think_budget=0 if req.no_think else None,
                       history=req.history, sampling=req.overrides() or None, stop=req.stop)

    async def _collect(self, stream: AskStream, tools: bool = False) -> web.Response:
        got = await stream.collect()
        ev = got.ended
        if ev.reason not in FINISH:
            raise _ended_error(ev)
        body = completion(stream.job.id, int(time.time()), self.model_id, got.answer, got.thinking,
                          FINISH[ev.reason], ev.stats)
        if tools:
            fc.shape_completion(body, got.answer)
        return _json(200, body)

    async def _stream(self, request: web.Request, req: ChatRequest, stream: AskStream) -> web.StreamResponse:
        """Send the answer as server-sent events (the job has started)."""
        job = stream.job
        created = int(time.time())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        await resp.write(chunk(job.id, created, self.model_id, {"role": "assistant", "content": ""}))
        calls = fc.CallStream() if req.tools is not None else None
        while True:
            batch = [await stream.next()]
            while stream.pending():
                batch.append(await stream.next())
            out = bytearray()
            kind, text = "", ""
            end: Optional[JobEnded] = None
            for ev in batch:
                if isinstance(ev, JobDelta) and calls is not None and not ev.think:
                    if text:
                        out += chunk(job.id, created, self.model_id, {kind: text})
                        kind, text = "", ""
                    out += b"".join(chunk(job.id, created, self.model_id, d) for d in fc.call_deltas(calls, ev.text))
                elif isinstance(ev, JobDelta):
                    k = "reasoning_content" if ev.think else "content"
                    if k != kind and text:
                        out += chunk(job.id, created, self.model_id, {kind: text})
                        text = ""
                    kind, text = k, text + ev.text
                elif isinstance(ev, JobEnded):
                    end = ev
            if text:
                out += chunk(job.id, created, self.model_id, {kind: text})
            if end is not None:
                if end.reason in FINISH:
                    finish = FINISH[end.reason]
                    if calls is not None:
                        tail, finish = fc.finish_deltas(calls, finish)
                        out += b"".join(chunk(job.id, created, self.model_id, d) for d in tail)
                    out += chunk(job.id, created, self.model_id, {}, finish)
                    if req.include_usage:
                        out += chunk(job.id, created, self.model_id, None, stats=end.stats)
                    out += DONE
                else:
                    out += sse_error(_ended_error(end))
            await resp.write(bytes(out))
            if end is not None:
                await resp.write_eof()
                return resp
