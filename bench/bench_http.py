"""The HTTP API against the bus on the same edgebotd and model: streaming overhead and requests/s.

1. Streaming overhead, on the 1.5B-shape model (``bench/shape_model.py``, the real model's per-token
   cost): runs alternate between a bus ask (``think: show``, JSONL over the Unix socket) and a
   streaming ``POST /v1/chat/completions``; each run has a fresh question number so neither reuses
   more cache than the other. Client-side: TTFT = request sent -> first delta (thinking or answer);
   decode tokens/s = (completion_tokens - 1) / (last delta - first delta).
2. Requests per second for short answers (the script test model: 17 tokens, thinking included),
   with N concurrent clients each sending requests back to back, non-streaming over HTTP and the
   same asks over the bus.

    .venv/bin/python bench/bench_http.py [--runs 5] [--tokens 64] [--clients 4] [--requests 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from engine_clients import JsonLineBus  # noqa: E402
BIN = Path(sys.executable).parent
THREADS = 1
QUESTION = ("Question {n}: a classroom robot is asked to explain, in two short sentences, why the sky "
            "looks blue during the day and red at sunset. What should it say?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Edgebotd:
    def __init__(self, model: Path, extra: str = "") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
        self.port = free_port()
        self.socket = str(self.tmp / "bus.sock")
        # one llama.cpp thread: on a shared 2-core machine, spinning worker threads make every run's speed
        # depend on the neighbours; both paths share this daemon, so the comparison is unaffected
        (self.tmp / "e.toml").write_text(f"[llm]\nn_threads = {THREADS}\n[http]\nenabled = true\nport = {self.port}\n"
                                         f"{extra}")
        env = {**os.environ, "EDGEBOT_BOARD": "generic-x86"}
        self.proc = subprocess.Popen([str(BIN / "edgebotd"), "--config", str(self.tmp / "e.toml"), "--model",
                                      str(model), "--socket", self.socket, "--log-level", "WARNING"], env=env)

    async def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                try:
                    async with s.get(f"http://127.0.0.1:{self.port}/health") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError("edgebotd did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class Bus(JsonLineBus):
    async def ask(self, id_: str, text: str, max_tokens: int) -> tuple[float, list[float], int]:
        """(send time, delta arrival times, completion_tokens)."""
        t0 = time.perf_counter()
        await self.send("ask", id=id_, text=text, source="cli", think="show", max_tokens=max_tokens)
        stamps: list[float] = []
        while True:
            ev = json.loads(await self.r.readline())
            if ev["type"] in ("think-delta", "answer-delta"):
                stamps.append(time.perf_counter())
            elif ev["type"] == "answer-end":
                return t0, stamps, ev["data"]["stats"]["completion_tokens"]
            elif ev["type"] == "error":
                raise RuntimeError(ev["data"])

    async def close(self) -> None:
        self.w.close()


async def http_stream(s: aiohttp.ClientSession, port: int, text: str, max_tokens: int
                      ) -> tuple[float, list[float], int]:
    body = {"model": "m", "stream": True, "max_tokens": max_tokens, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}]}
    t0 = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk["choices"]:
                if c["delta"].get("content") or c["delta"].get("reasoning_content"):
                    stamps.append(time.perf_counter())
    return t0, stamps, tokens


def rate(stamps: list[float], tokens: int) -> float:
    return (tokens - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else float("nan")


async def overhead(model: Path, runs: int, tokens: int) -> None:
    d = Edgebotd(model)
    try:
        await d.wait_ready()
        bus = await Bus().open(d.socket)
        res: dict[str, dict[str, list[float]]] = {"bus": {"ttft": [], "tps": []}, "http": {"ttft": [], "tps": []}}
        async with aiohttp.ClientSession() as s:
            await http_stream(s, d.port, "warm up", 4)
            for i in range(runs):
                for path in ("bus", "http"):
                    text = QUESTION.format(n=1000 + 2 * i + (path == "http"))
                    t0, stamps, n = (await bus.ask(f"b{i}", text, tokens) if path == "bus"
                                     else await http_stream(s, d.port, text, tokens))
                    res[path]["ttft"].append((stamps[0] - t0) * 1000)
                    res[path]["tps"].append(rate(stamps, n))
        await bus.close()
    finally:
        d.stop()
    med = {p: {k: statistics.median(v) for k, v in r.items()} for p, r in res.items()}
    print(f"\n## Streaming: HTTP against the bus ({model.name}, {tokens} tokens, {runs} runs each, medians)\n")
    print("| path | TTFT, ms | decode, tokens/s |\n|---|---|---|")
    for p in ("bus", "http"):
        print(f"| {p} | {med[p]['ttft']:.1f} | {med[p]['tps']:.2f} |")
    print(f"\nHTTP/bus decode ratio {med['http']['tps'] / med['bus']['tps']:.3f}; "
          f"TTFT difference {med['http']['ttft'] - med['bus']['ttft']:+.1f} ms")


async def throughput(model: Path, clients: int, requests: int) -> None:
    d = Edgebotd(model, f"[engine]\nqueue_max = {max(8, clients)}\n")
    try:
        await d.wait_ready()

        async def http_client(s: aiohttp.ClientSession, k: int) -> None:
            for j in range(requests):
                body = {"model": "m", "messages": [{"role": "user", "content": f"What is 2+2? ({k}.{j})"}]}
                async with s.post(f"http://127.0.0.1:{d.port}/v1/chat/completions", json=body) as r:
                    assert r.status == 200 and (await r.json())["choices"][0]["finish_reason"] == "stop"

        async def bus_client(k: int) -> None:
            bus = await Bus().open(d.socket)
            for j in range(requests):
                await bus.ask(f"t{k}.{j}", f"What is 2+2? ({k}.{j})", 64)
            await bus.close()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:
            await http_client(s, -1)  # warm up
            t = time.perf_counter()
            await asyncio.gather(*(http_client(s, k) for k in range(clients)))
            http_rps = clients * requests / (time.perf_counter() - t)
        t = time.perf_counter()
        await asyncio.gather(*(bus_client(k) for k in range(clients)))
        bus_rps = clients * requests / (time.perf_counter() - t)
    finally:
        d.stop()
    print(f"\n## Short answers, {clients} concurrent clients x {requests} requests ({model.name})\n")
    print("| path | requests/s |\n|---|---|")
    print(f"| HTTP, non-streaming | {http_rps:.1f} |\n| bus | {bus_rps:.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--model", help="for the overhead part: a GGUF path, 'shape' (default: the 1.5B-shape model) "
                    "or 'loop' (the looping script model, ~0.3 ms a token: transport overhead at its worst)")
    args = ap.parse_args()
    from dataclasses import replace

    from edgebot.testing.script_model import DEFAULT_SCRIPT, write_script_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-http-model-"))
    script = write_script_model(tmp / "script.gguf")
    if args.model in (None, "shape"):
        from shape_model import ensure_shape_model  # bench/shape_model.py

        model = ensure_shape_model()
    elif args.model == "loop":
        model = write_script_model(tmp / "loop.gguf", replace(DEFAULT_SCRIPT, loop=True), n_embd=512, n_layers=4,
                                   n_ff=2048)
    else:
        model = Path(args.model)
    asyncio.run(overhead(model, args.runs, args.tokens))
    asyncio.run(throughput(script, args.clients, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
