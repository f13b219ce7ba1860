"""Ollama's API on edgebotd's HTTP server: ``/api/version``, ``/api/tags``, ``/api/show``, ``/api/ps``,
``/api/chat`` and ``/api/generate`` (NDJSON streams or one JSON object), so tools that speak to an
Ollama server (Open WebUI's Ollama connection, Home Assistant's Ollama integration, the ``ollama``
Python client, editor plug-ins) work against the board.

A thin translator: a request is rewritten into the OpenAI chat body that :func:`edgebot.http.chat.parse_chat`
validates on the check thread (one set of rules for both APIs), run through :meth:`HttpApi.open_stream`,
and the engine's events are shaped as Ollama's messages. Errors are Ollama's ``{"error": "..."}``.
Model management (pull, push, create, copy, delete) is refused with a message saying how models
are managed here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from aiohttp import web

from edgebot.engine.jobs import JobDelta, JobEnded
from edgebot.http import tools as fc
from edgebot.http.chat import ApiError, bad

if TYPE_CHECKING:
    from edgebot.asks import AskStream
    from edgebot.http.server import HttpApi

log = logging.getLogger(__name__)

API_VERSION = "0.12.0"
"""The Ollama API level these endpoints follow (what ``/api/version`` reports)."""
HONOURED_OPTIONS = ("temperature", "top_p", "seed", "num_predict", "stop")
"""``options`` edgebot applies; others (num_ctx, top_k, mirostat …) are accepted and ignored."""
MANAGED = ("models are managed on the board, not over this API: `edgebot-cli model pull NAME`, "
           "`edgebot-cli model list` and [llm] model in /etc/edgebot/edgebot.toml (docs/install.md)")


def now_iso() -> str:
    """Ollama's ``created_at``: UTC, RFC 3339 with nanoseconds' worth of digits."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _format(value: Any) -> Optional[dict[str, Any]]:
    """Ollama ``format`` ("json" or a JSON schema) as an OpenAI ``response_format``."""
    if value in (None, ""):
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise bad("format must be \"json\" or a JSON schema object", "format")


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """Ollama ``options`` as OpenAI body fields (only what edgebot honours)."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise bad("options must be an object", "options")
    out = {k: options[k] for k in ("temperature", "top_p", "seed", "stop") if options.get(k) is not None}
    predict = options.get("num_predict")
    if predict is not None:
        if isinstance(predict, bool) or not isinstance(predict, int):
            raise bad("options.num_predict must be an integer", "options")
        if predict > 0:
            out["max_tokens"] = predict  # -1 (unlimited) and -2 (fill the context) take [llm] max_tokens
    return out


def to_openai(body: Any, kind: str) -> dict[str, Any]:
    """An ``/api/chat`` or ``/api/generate`` body as the OpenAI chat body ``parse_chat`` validates."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    if kind == "chat":
        messages = body.get("messages")
        if isinstance(messages, list):
            for i, msg in enumerate(messages):
                if isinstance(msg, dict) and msg.get("images"):
                    raise bad("images are not supported: the model reads text only", f"messages[{i}].images")
    else:
        if body.get("images"):
            raise bad("images are not supported: the model reads text only", "images")
        if body.get("suffix"):
            raise bad("suffix (fill-in-the-middle) is not supported", "suffix")
        if body.get("raw"):
            raise bad("raw prompts are not supported: edgebot always applies the model's chat template", "raw")
        prompt, system = body.get("prompt"), body.get("system")
        if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
            raise bad("prompt (and system) must be strings", "prompt")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    stream = body.get("stream", True)  # Ollama streams unless told not to
    if not isinstance(stream, bool):
        raise bad("stream must be true or false", "stream")
    out: dict[str, Any] = {"model": body.get("model", ""), "messages": messages, "stream": stream, **_options(body)}
    fmt = _format(body.get("format"))
    if fmt is not None:
        out["response_format"] = fmt
    if body.get("tools"):
        out["tools"] = body["tools"]
    return out


def _think(body: dict[str, Any]) -> bool:
    think = body.get("think", False)
    if think in ("high", "medium", "low"):  # gpt-oss levels: thinking on
        return True
    if not isinstance(think, bool):
        raise bad("think must be true or false", "think")
    return think


def done_fields(stats: dict[str, Any], started: float, reason: str) -> dict[str, Any]:
    """The last message's counters: tokens, durations in nanoseconds."""
    completion = int(stats.get("completion_tokens") or 0)
    rate = float(stats.get("tokens_per_s") or 0.0)
    return {"done": True, "done_reason": reason, "total_duration": int((time.monotonic() - started) * 1e9),
            "load_duration": 0, "prompt_eval_count": int(stats.get("prompt_tokens") or 0),
            "prompt_eval_duration": int(float(stats.get("ttft_ms") or 0.0) * 1e6), "eval_count": completion,
            "eval_duration": int(completion / rate * 1e9) if rate > 0 else 0}


@lru_cache(maxsize=4)
def _gguf_details(path: str, size: int, mtime: float) -> dict[str, Any]:
    """Ollama's ``details`` of a model file (empty values where the header says nothing)."""
    details: dict[str, Any] = {"parent_model": "", "format": "gguf", "family": "", "families": [],
                               "parameter_size": "", "quantization_level": ""}
    try:
        from edgebot.gguf_info import read_gguf

        info = read_gguf(path)
    except Exception:  # noqa: BLE001 - not a GGUF (rkllm), unreadable: the details stay empty
        return {**details, "format": Path(path).suffix.lstrip(".")}
    family = info.architecture or ""
    label = info.metadata.get("general.size_label")
    quant = [t for t in ("Q4_K_M", "Q4_0", "Q5_K_M", "Q8_0", "F16") if t.lower() in Path(path).name.lower()]
    return {**details, "family": family, "families": [family] if family else [],
            "parameter_size": label if isinstance(label, str) else "", "quantization_level": quant[0] if quant else ""}


class _Loaded(Exception):
    """An empty chat/generate: Ollama's request to load (or, with keep_alive 0, unload) the model."""

    def __init__(self, unload: bool) -> None:
        super().__init__("load" if not unload else "unload")
        self.unload = unload


class OllamaApi:
    """The ``/api/*`` routes of one :class:`HttpApi`."""

    def __init__(self, api: "HttpApi") -> None:
        self.api = api
        self.name = api.model_id if ":" in api.model_id else f"{api.model_id}:latest"

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/version", self.version)
        r.add_get("/api/tags", self.tags)
        r.add_get("/api/ps", self.ps)
        r.add_post("/api/show", self.show)
        r.add_post("/api/chat", self.chat)
        r.add_post("/api/generate", self.generate)
        for path in ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/{digest}"):
            r.add_route("*", path, self.managed)
        for path in ("/api/embed", "/api/embeddings"):
            r.add_post(path, self.no_embeddings)

    # -- models ----------------------------------------------------------------------------------

    def _model(self) -> dict[str, Any]:
        path = self.api.config.get("llm", "model")
        try:
            st = Path(path).stat()
            size, mtime = st.st_size, st.st_mtime
        except OSError:
            size, mtime = 0, 0.0
        digest = hashlib.sha256(f"{path}:{size}:{mtime}".encode()).hexdigest()  # identity, not the file's hash
        return {"name": self.name, "model": self.name, "size": size, "digest": digest,
                "modified_at": datetime.fromtimestamp(mtime, timezone.utc).isoformat() if mtime else now_iso(),
                "details": _gguf_details(path, size, mtime)}

    def check_model(self, name: Any) -> None:
        """404 unless ``name`` is the one model (with or without its tag)."""
        if not isinstance(name, str) or not name:
            raise bad("model is required (see /api/tags)", "model")
        if name not in (self.name, self.api.model_id) and name.removesuffix(":latest") != self.api.model_id:
            raise ApiError(404, f"model '{name}' not found: this edgebot serves only '{self.name}' (GET /api/tags); "
                                f"{MANAGED}", "not_found_error", "model_not_found", "model")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": API_VERSION})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [self._model()]})

    async def ps(self, request: web.Request) -> web.Response:
        if self.api.engine.state != "ready":
            return web.json_response({"models": []})
        return web.json_response({"models": [{**self._model(), "expires_at": "2999-01-01T00:00:00Z",
                                              "size_vram": 0, "context_length": self.api.config.get("llm", "n_ctx")}]})

    async def show(self, request: web.Request) -> web.Response:
        body = await self.api.read_json(request)
        self.check_model(body.get("model") or body.get("name"))
        model = self._model()
        capabilities = ["completion", "thinking"] + (["tools"] if self.api.tools_supported else [])
        return web.json_response({"modelfile": f"# served by edgebot from {self.api.config.get('llm', 'model')}\n",
                                  "parameters": "", "template": "", "details": model["details"],
                                  "model_info": {"general.architecture": model["details"]["family"],
                                                 "context_length": self.api.config.get("llm", "n_ctx")},
                                  "capabilities": capabilities, "modified_at": model["modified_at"]})

    async def managed(self, request: web.Request) -> web.Response:
        raise ApiError(501, f"{request.path} is not offered by edgebot: {MANAGED}", "invalid_request_error",
                       "not_supported")

    async def no_embeddings(self, request: web.Request) -> web.Response:
        raise ApiError(501, "embeddings are not offered by edgebot (its model is a chat model)",
                       "invalid_request_error", "not_supported")

    # -- answers ----------------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "chat")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "generate")

    async def _answer(self, request: web.Request, kind: str) -> web.StreamResponse:
        seen: dict[str, Any] = {}

        def prepare(body: Any) -> dict[str, Any]:
            """On the check thread: the Ollama body as the OpenAI body ``parse_chat`` validates."""
            if not isinstance(body, dict):
                raise bad("the body must be a JSON object")
            self.check_model(body.get("model"))
            seen["think"] = _think(body)
            empty = body.get("messages") in (None, []) if kind == "chat" else not body.get("prompt")
            if empty:
                raise _Loaded(body.get("keep_alive") in (0, "0", "0s"))  # Ollama's "load" / "unload" request
            return to_openai(body, kind)  # keep_alive is accepted: the model always stays loaded

        try:
            req = await self.api.checked(request, prepare)
        except _Loaded as done:
            head = {"model": self.name, "created_at": now_iso()}
            msg = {"message": {"role": "assistant", "content": ""}} if kind == "chat" else {"response": ""}
            return web.json_response({**head, **msg, "done": True, "done_reason": "unload" if done.unload else "load"})
        started = time.monotonic()
        stream = await self.api.open_stream(req, show_think=seen["think"], id_prefix="ollama")
        try:
            calls = fc.CallStream() if req.tools is not None else None
            if req.stream:
                return await self._stream(request, kind, stream, started, calls)
            return await self._collect(kind, stream, started, calls)
        finally:
            stream.close()

    def _piece(self, kind: str, text: str, thinking: str) -> dict[str, Any]:
        head = {"model": self.name, "created_at": now_iso()}
        if kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            return {**head, "message": message, "done": False}
        return {**head, "response": text, **({"thinking": thinking} if thinking else {}), "done": False}

    async def _collect(self, kind: str, stream: "AskStream", started: float,
                       calls: Optional[fc.CallStream]) -> web.Response:
        got = await stream.collect()
        ev = got.ended
        if ev.reason not in ("stop", "length"):
            raise self.api.ended_error(ev)
        piece = self._piece(kind, got.answer, got.thinking)
        if calls is not None and kind == "chat":
            piece["message"].update(fc.ollama_message(got.answer))
        return web.json_response({**piece, **done_fields(ev.stats, started, ev.reason)})

    async def _stream(self, request: web.Request, kind: str, stream: Any, started: float,
                      calls: Optional[fc.CallStream]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        while True:
            batch = [await stream.next()]
            while stream.pending():
                batch.append(await stream.next())
            text = "".join(ev.text for ev in batch if isinstance(ev, JobDelta) and not ev.think)
            if calls is not None:  # a constrained answer: only a plain answer's text streams; a call comes at the end
                text = "".join(t for k, t in calls.feed(text) if k == "content")
            thought = "".join(ev.text for ev in batch if isinstance(ev, JobDelta) and ev.think)
            out = bytearray()
            if text or thought:
                out += json.dumps(self._piece(kind, text, thought), ensure_ascii=False).encode() + b"\n"
            end = next((ev for ev in batch if isinstance(ev, JobEnded)), None)
            if end is not None:
                if end.reason in ("stop", "length"):
                    last = {**self._piece(kind, "", ""), **done_fields(end.stats, started, end.reason)}
                    call = fc.ollama_message(calls.raw) if calls is not None and kind == "chat" else {}
                    if call.get("tool_calls"):
                        last["message"]["tool_calls"] = call["tool_calls"]
                else:
                    last = {"error": self.api.ended_error(end).message}
                out += json.dumps(last, ensure_ascii=False).encode() + b"\n"
            await resp.write(bytes(out))
            if end is not None:
                await resp.write_eof()
                return resp
