"""Clients for bench/bench_engine.py: an edgebotd started for the bench, asks over its bus (edgebot's own
BusClient), and a llama-server started for the bench, asked over its OpenAI-compatible HTTP API.

Every ask records the wall-clock (``time.perf_counter``) moment it was sent and the moment of each
streamed piece (thinking or answer), so TTFT and decode rates are what a client sees.
"""

from __future__ import annotations

import asyncio
import ctypes
import http.client
import json
import os
import signal
import socket as socketlib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgebot.bus import messages as m
from edgebot.bus.client import BusClient

BIN = Path(sys.executable).parent


def _die_with_parent() -> None:
    """In the child: SIGTERM it when the bench process dies, even by a crash (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)



class JsonLineBus:
    """A raw JSON-lines bus connection for the benches (no edgebot client code in the timing): hello, send."""

    async def open(self, path: str) -> "JsonLineBus":
        self.r, self.w = await asyncio.open_unix_connection(path, limit=1 << 22)
        await self.send("hello", client="bench")
        await self.r.readline()
        return self

    async def send(self, type_: str, **data: Any) -> None:
        self.w.write((json.dumps({"type": type_, "data": data}) + "\n").encode())
        await self.w.drain()


@dataclass
class AskResult:
    """One answer as the client saw it."""

    sent: float
    stamps: list[float] = field(default_factory=list)
    """Arrival of every streamed piece (thinking and answer), seconds (perf_counter)."""
    text: str = ""
    """The answer text (thinking excluded)."""
    reason: str = ""
    prompt_tokens: int = 0
    evaluated_tokens: int = 0
    """Prompt tokens actually evaluated (prompt minus those reused from the KV cache)."""
    completion_tokens: int = 0

    @property
    def ttft(self) -> float:
        """Seconds from sending the ask to its first streamed piece."""
        return self.stamps[0] - self.sent if self.stamps else float("nan")

    @property
    def decode_rate(self) -> float:
        """(tokens - 1) / (last piece - first piece), tokens/s."""
        span = self.stamps[-1] - self.stamps[0] if len(self.stamps) > 1 else 0.0
        return (self.completion_tokens - 1) / span if span > 0 else float("nan")


def aggregate(results: list[AskResult]) -> tuple[float, float]:
    """(overall, all-streaming) aggregate decode tokens/s of concurrent askers.

    overall: sum of (tokens - 1) over the span from the first asker's first piece to the last
    asker's last piece (one-at-a-time answering scores its prompt gaps here). all-streaming: pieces
    that arrived while every asker was streaming, over that window (nan when answers never overlap;
    a piece is one token unless the reader fell behind and deltas merged).
    """
    firsts = [r.stamps[0] for r in results if r.stamps]
    lasts = [r.stamps[-1] for r in results if r.stamps]
    span = max(lasts) - min(firsts)
    overall = sum(max(r.completion_tokens - 1, 0) for r in results) / span if span > 0 else float("nan")
    lo, hi = max(firsts), min(lasts)
    if hi <= lo:
        return overall, float("nan")
    inside = sum(1 for r in results for t in r.stamps if lo < t <= hi)
    return overall, inside / (hi - lo)


class Edgebotd:
    """An edgebotd for the bench: own temp dir, config, socket; ready when it says READY=1."""

    def __init__(self, model: str, config: str, log_level: str = "WARNING") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="edgebot-bench-"))
        self.sock = str(self.tmp / "bus.sock")
        notify = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
        notify.bind(str(self.tmp / "notify.sock"))
        (self.tmp / "bench.toml").write_text(config)
        env = {**os.environ, "NOTIFY_SOCKET": str(self.tmp / "notify.sock")}
        self.proc = subprocess.Popen([str(BIN / "edgebotd"), "--config", str(self.tmp / "bench.toml"), "--model", model,
                                      "--socket", self.sock, "--board", "generic-x86", "--log-level", log_level],
                                     env=env, preexec_fn=_die_with_parent)
        notify.settimeout(600)
        while b"READY=1" not in notify.recv(4096):
            pass
        self.notify = notify  # kept open: edgebotd keeps notifying (watchdog, STOPPING=1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.notify.close()


async def bus_ask(sock: str, id_: str, text: str, *, session: Optional[str] = None, source: str = "cli",
                  max_tokens: int = 64, think_budget: Optional[int] = None,
                  connected: Optional[asyncio.Event] = None, after: Optional[asyncio.Event] = None,
                  pieces_seen: Optional[asyncio.Event] = None, pieces: int = 1) -> AskResult:
    """Ask edgebotd over the bus (thinking shown) and collect the answer.

    ``after``: wait for this event before sending (``connected`` is set once connected, so that
    concurrent askers can connect first and send together; connecting is not timed).
    ``pieces_seen`` is set when ``pieces`` pieces have arrived (to start something mid-answer).
    """
    client = await BusClient.connect(sock, "bench")
    try:
        if connected is not None:
            connected.set()
        if after is not None:
            await after.wait()
        res = AskResult(sent=time.perf_counter())
        await client.send(m.Ask(id=id_, text=text, session=session, source=source, think="show",
                                max_tokens=max_tokens, think_budget=think_budget))
        while True:
            msg = await client.recv()
            if msg is None:
                raise ConnectionError("edgebotd closed the connection mid-answer")
            if isinstance(msg, (m.ThinkDelta, m.AnswerDelta)) and msg.id == id_:
                res.stamps.append(time.perf_counter())
                if isinstance(msg, m.AnswerDelta):
                    res.text += msg.text
                if pieces_seen is not None and len(res.stamps) >= pieces:
                    pieces_seen.set()
            elif isinstance(msg, m.AnswerEnd) and msg.id == id_:
                st = msg.stats
                res.reason, res.prompt_tokens = msg.reason, int(st.get("prompt_tokens", 0))
                res.evaluated_tokens = res.prompt_tokens - int(st.get("cached_tokens", 0))
                res.completion_tokens = int(st.get("completion_tokens", len(res.stamps)))
                return res
            elif isinstance(msg, m.Error) and msg.id == id_:
                raise RuntimeError(f"edgebotd refused ask {id_}: {msg.code} {msg.message}")
    finally:
        await client.close()


async def bus_cancel(sock: str, id_: str) -> None:
    client = await BusClient.connect(sock, "bench")
    try:
        await client.send(m.Cancel(id=id_))
    finally:
        await client.close()


async def bus_status(sock: str) -> dict[str, Any]:
    client = await BusClient.connect(sock, "bench")
    try:
        await client.send(m.Status())
        while True:
            msg = await client.recv()
            if isinstance(msg, m.StatusReport):
                return msg.__dict__
            if msg is None:
                raise ConnectionError("edgebotd closed the connection")
    finally:
        await client.close()


class LlamaServer:
    """A llama-server for the bench on 127.0.0.1 (a free port), ready when /health answers 200."""

    def __init__(self, binary: str, model: str, args: list[str]) -> None:
        with socketlib.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([binary, "-m", model, "--host", "127.0.0.1", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {self.proc.returncode}; see {self.log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)  # polling a starting server: nothing to wait on but its port
        raise TimeoutError("llama-server did not become healthy in 600 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


class ContextFull(Exception):
    """llama-server refused a request whose prompt does not fit the slot's context."""


def http_chat(port: int, messages: list[dict[str, str]], *, max_tokens: int, think_budget: int,
              seed: int) -> AskResult:
    """One streaming ``/v1/chat/completions`` to llama-server; evaluated tokens from its ``timings``."""
    body = json.dumps({"messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": 0.6,
                       "top_p": 0.95, "top_k": 40, "seed": seed, "reasoning_budget_tokens": think_budget,
                       "cache_prompt": True})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    res = AskResult(sent=time.perf_counter())
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        err = resp.read().decode(errors="replace")
        if "exceed" in err and "context" in err:
            raise ContextFull(err)
        raise RuntimeError(f"llama-server answered {resp.status}: {err[:300]}")
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        for choice in chunk.get("choices", []):
            delta = choice.get("delta", {})
            if delta.get("content") or delta.get("reasoning_content"):
                res.stamps.append(time.perf_counter())
                res.text += delta.get("content") or ""
            if choice.get("finish_reason"):
                res.reason = choice["finish_reason"]
        if "timings" in chunk:
            t = chunk["timings"]
            res.evaluated_tokens = int(t.get("prompt_n", 0))
            res.prompt_tokens = res.evaluated_tokens + int(t.get("cache_n", 0))
            res.completion_tokens = int(t.get("predicted_n", 0))
    conn.close()
    return res
