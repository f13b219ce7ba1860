"""The remote backend: answers from an OpenAI-compatible server on the LAN (vLLM, llama-server,
another edgebotd), with the on-board model as the fallback for any answer the remote cannot give.

It sits behind the same ``Backend`` interface, so the engine, every bridge and the CLI work
unchanged. The remote's stream becomes the engine's flagged pieces: ``reasoning_content`` (or
``reasoning``) is thinking and the first ``content`` after it ends the thinking; ``<think>`` tags
inside ``content`` are split as the local model's would be. A fallback in the middle of the
thinking continues it on the local model, and the think budget's ``</think>`` (which a remote
stream cannot take) hides the rest of the remote's thinking.

Health: the first failure (refused, timed out, an HTTP error) marks the remote down; answers are
then local for ``retry_s`` seconds, after which a probe (``GET /models``) decides per answer
whether the remote is back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from edgebot.engine.backend import (Backend, BackendInfo, GenerationResult, PieceCallback, PreparedPrompt,
                                    SamplingParams)
from edgebot.engine.backends.http_client import Cancelled, RemoteError, request
from edgebot.engine.prompt import Turn
from edgebot.engine.think import CLOSE_TAG, OPEN_TAG, Piece, PieceSplitter

log = logging.getLogger(__name__)

CLOSE_INJECT = "\n" + CLOSE_TAG
"""What closes the local model's thinking when the remote's thinking was already cut short."""
PROBE_TIMEOUT_S = 2.0


@dataclass
class RemotePrompt(PreparedPrompt):
    """The conversation as OpenAI ``messages``, plus the local model's prompt for a fallback.

    ``tokens`` are the local model's when there is one (so trimming fits the fallback); without,
    ``count`` is an estimate (a quarter of the UTF-8 bytes) used only to trim history to ``n_ctx``.
    """

    messages: list[dict[str, str]] = field(default_factory=list)
    local: Optional[PreparedPrompt] = None
    no_think: bool = False  # the engine closed the thinking before it began (think budget 0)


def to_messages(turns: list[Turn], question: Optional[str], persona: str = "") -> list[dict[str, str]]:
    """OpenAI chat messages for a conversation; ``persona`` starts the first user turn (no system prompt)."""
    messages: list[dict[str, str]] = []
    for turn in turns:
        messages += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.answer}]
    if question is not None:
        messages.append({"role": "user", "content": question})
    if persona and messages:
        messages[0] = {"role": "user", "content": persona.rstrip() + "\n\n" + messages[0]["content"]}
    return messages


class RemoteBackend(Backend):
    """An OpenAI-compatible server; ``local`` (a loaded-on-start backend) answers when it cannot."""

    def __init__(self, url: str, model: str = "", *, api_key: str = "", timeout_s: float = 10.0,
                 retry_s: float = 30.0, local: Optional[Backend] = None, n_ctx: int = 4096) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.local = local
        self.n_ctx = local.info().n_ctx if local is not None else n_ctx
        self._down_since: Optional[float] = None  # monotonic time of the last failure; None = healthy
        self._lock = threading.Lock()

    # -- health ----------------------------------------------------------------------------------

    def _probe(self) -> bool:
        """GET /models: True when the server answers 200 (and learn the model name if not set)."""
        try:
            resp = request("GET", self.url + "/models", api_key=self.api_key,
                           timeout_s=min(self.timeout_s, PROBE_TIMEOUT_S))
            try:
                body = resp.read_all()
            finally:
                resp.close()
        except (RemoteError, Cancelled) as exc:
            log.debug("remote %s probe failed: %s", self.url, exc)
            return False
        if resp.status != 200:
            log.debug("remote %s probe: HTTP %d", self.url, resp.status)
            return False
        if not self.model:
            try:
                self.model = json.loads(body)["data"][0]["id"]
                log.info("remote %s serves model %s", self.url, self.model)
            except (ValueError, KeyError, IndexError, TypeError):
                pass
        return True

    def _usable(self) -> bool:
        """Whether this answer should try the remote (probing it when the retry time is up)."""
        with self._lock:
            down = self._down_since
        if down is None or self.local is None:
            return True
        if time.monotonic() - down < self.retry_s:
            return False
        if self._probe():
            with self._lock:
                self._down_since = None
            log.info("remote %s is back; answering from it again", self.url)
            return True
        with self._lock:
            self._down_since = time.monotonic()
        return False

    def _mark_down(self, why: str) -> None:
        with self._lock:
            first = self._down_since is None
            self._down_since = time.monotonic()
        if first:
            log.warning("remote %s unavailable (%s); %s", self.url, why,
                        f"answering on the board for at least {self.retry_s:g} s" if self.local else
                        "no fallback configured")

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._down_since is None

    # -- Backend -----------------------------------------------------------------------------------

    def load(self) -> None:
        if self.local is not None:
            self.local.load()
        if self._probe():
            log.info("remote %s reachable (model %s)", self.url, self.model or "?")
        else:
            self._mark_down("the start-up probe failed")

    def info(self) -> BackendInfo:
        return BackendInfo(name="remote", model=f"{self.model or '(remote)'} at {self.url}", n_ctx=self.n_ctx)

    def close(self) -> None:
        if self.local is not None:
            self.local.close()

    def prepare(self, turns: list[Turn], question: Optional[str], persona: str = "") -> PreparedPrompt:
        messages = to_messages(turns, question, persona)
        local = self.local.prepare(turns, question, persona) if self.local is not None else None
        if local is not None:
            return RemotePrompt(tokens=local.tokens, starts_thinking=False, messages=messages, local=local)
        estimate = sum(len(m["content"].encode()) for m in messages) // 4 + 4 * len(messages) + 1
        return RemotePrompt(tokens=[], starts_thinking=False, count=estimate, messages=messages)

    def extend(self, prompt: PreparedPrompt, text: str) -> PreparedPrompt:
        assert isinstance(prompt, RemotePrompt)
        local = self.local.extend(prompt.local, text) if self.local is not None and prompt.local else None
        return RemotePrompt(tokens=local.tokens if local else prompt.tokens, starts_thinking=False, count=prompt.count,
                            messages=prompt.messages, local=local, no_think=CLOSE_TAG in text or prompt.no_think)

    def prefill(self, prompt: PreparedPrompt, stop: Callable[[], bool]) -> int:
        """Re-base the local cache only while answers are local; the remote keeps its own cache."""
        assert isinstance(prompt, RemotePrompt)
        if self.local is None or prompt.local is None or self.healthy:
            return 0
        return self.local.prefill(prompt.local, stop)

    def generate(self, prompt: PreparedPrompt, params: SamplingParams, max_tokens: int,
                 cancel: threading.Event, on_piece: PieceCallback) -> GenerationResult:
        assert isinstance(prompt, RemotePrompt)
        stream = _Relay(on_piece, prompt.no_think)
        if self._usable():
            try:
                return self._remote(prompt, params, max_tokens, cancel, stream)
            except RemoteError as exc:
                self._mark_down(str(exc))
                if stream.answered or self.local is None:
                    what = "stopped in the middle of the answer" if stream.answered else "is unavailable"
                    return GenerationResult("error", prompt_tokens=prompt.n_tokens, backend="remote",
                                            completion_tokens=stream.pieces,
                                            message=f"the remote server {self.url} {what}: {exc}")
                log.info("answer falls back to the local model (%d remote pieces kept)", stream.pieces)
        if self.local is None or prompt.local is None:
            return GenerationResult("error", prompt_tokens=prompt.n_tokens, backend="remote",
                                    message=f"the remote server {self.url} is unavailable and there is no fallback")
        return self._local(prompt.local, params, max_tokens, cancel, stream)

    # -- the two paths -------------------------------------------------------------------------

    def _remote(self, prompt: RemotePrompt, params: SamplingParams, max_tokens: int, cancel: threading.Event,
                stream: "_Relay") -> GenerationResult:
        body: dict[str, Any] = {"model": self.model or "default", "messages": prompt.messages, "stream": True,
                                "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
                                "temperature": params.temperature, "top_p": params.top_p}
        if params.seed >= 0:
            body["seed"] = params.seed
        if params.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": json.loads(params.json_schema), "strict": True}}
        result = GenerationResult("stop", prompt_tokens=prompt.n_tokens, backend="remote")
        usage: dict[str, Any] = {}
        try:
            resp = request("POST", self.url + "/chat/completions", body, api_key=self.api_key,
                           timeout_s=self.timeout_s, cancel=cancel)
        except Cancelled:
            result.reason = "cancelled"
            return result
        try:
            if resp.status != 200:
                raise RemoteError(f"HTTP {resp.status} {resp.reason}: {_error_text(resp)}")
            for data in resp.events():
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise RemoteError(f"not JSON in the event stream: {data[:80]!r}") from None
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:
                    raise RemoteError(f"the server reported: {str(chunk['error'])[:200]}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                    if reasoning:
                        stream.reasoning(reasoning)
                    if delta.get("content"):
                        stream.content(delta["content"])
                    if choice.get("finish_reason") == "length":
                        result.reason = "length"
                if cancel.is_set():
                    result.reason = "cancelled"
                    break
        except Cancelled:
            result.reason = "cancelled"
        finally:
            resp.close()
        stream.finish()
        result.completion_tokens = int(usage.get("completion_tokens") or stream.pieces)
        result.prompt_tokens = int(usage.get("prompt_tokens") or result.prompt_tokens)
        return result

    def _local(self, local: PreparedPrompt, params: SamplingParams, max_tokens: int, cancel: threading.Event,
               stream: "_Relay") -> GenerationResult:
        assert self.local is not None
        inject = stream.prepare_local(local.starts_thinking)
        if inject:
            local = self.local.extend(local, inject)
        result = self.local.generate(local, params, max(1, max_tokens - stream.pieces), cancel, stream.forward)
        result.completion_tokens += stream.pieces
        result.backend = "local"
        return result


class _Relay:
    """Turns remote deltas into the engine's flagged pieces: ``reasoning_content`` is thinking, the
    first ``content`` after it ends the thinking (a shared ``PieceSplitter`` keeps ``<think>`` tags
    inside ``content`` as the model meant them)."""

    def __init__(self, on_piece: PieceCallback, no_think: bool) -> None:
        self.on_piece = on_piece
        self.split = PieceSplitter(False)
        self.pieces = 0  # on_piece calls: the count of "tokens" when the server reports no usage
        self.answered = False  # answer text has reached the engine: a fallback would repeat it
        self.opened = False  # the stream has entered thinking
        self.synthetic = False  # ...through an <think> this relay added for reasoning_content
        self.cut = no_think  # the thinking was closed by the engine: drop the remote's reasoning

    def _send(self, text: str) -> Optional[str]:
        piece = self.split.feed(text)
        self.opened |= self.split.thinking or bool(piece.think)
        self.answered |= bool(piece.answer.strip())
        inject = self.on_piece(piece)
        if inject:
            self.on_piece(self.split.inject(inject))
            if CLOSE_TAG in inject:
                self.cut = True
        return inject

    def forward(self, piece: Piece) -> Optional[str]:
        """The local model's pieces during a fallback (counted by the local backend itself)."""
        self.answered |= bool(piece.answer.strip())
        inject = self.on_piece(piece)
        if inject and CLOSE_TAG in inject:
            self.cut = True
        return inject

    def reasoning(self, text: str) -> None:
        if self.cut or (self.opened and not self.split.thinking):
            return  # thinking already closed (think budget, or the answer began): never shown as answer
        self.pieces += 1
        if not self.split.thinking:
            text, self.synthetic = OPEN_TAG + text, True
        self._send(text)

    def content(self, text: str) -> None:
        self.pieces += 1
        if self.split.thinking and self.synthetic:
            text, self.synthetic = CLOSE_TAG + text, False  # reasoning_content is over: close our <think>
        self._send(text)

    def finish(self) -> None:
        """The remote's stream ended: what the splitter held back goes out."""
        self.on_piece(self.split.flush())

    def prepare_local(self, local_thinks: bool) -> str:
        """Before a fallback: the local model's stream takes over from where this one stopped.
        Returns text to append to the local prompt (closing its thinking), or ""."""
        if local_thinks and (self.cut or (self.opened and not self.split.thinking)):
            return CLOSE_INJECT  # the answer is past the thinking: the local model must not think
        return ""


def _error_text(resp: Any) -> str:
    """The message of an OpenAI-shaped error body, or the start of the body."""
    try:
        raw = resp.read_all(65536)
    except (RemoteError, Cancelled):
        return ""
    try:
        return str(json.loads(raw)["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace")
