"""The HTTP API under pressure, on the slow looping model (an answer that never ends by itself):
a client that disconnects cancels its job, queued or running; a full queue answers 429; and
/health is 503 while the model loads (in-process, with the real backend's load held back)."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

aiohttp = pytest.importorskip("aiohttp")  # the `http` extra

from conftest import BusConn, Daemon
from edgebot.config import load_config
from edgebot.engine.backends.llama import LlamaBackend
from edgebot.engine.jobs import EngineSettings
from edgebot.engine.scheduler import Engine
from edgebot.http.server import HttpApi
from test_http_api import QUESTION, free_port


@pytest.fixture(scope="module")
def loop_api(tmp_path_factory: pytest.TempPathFactory, slow_loop_model: Path) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("edgebotd-http-load"), slow_loop_model,
               f"[engine]\nqueue_max = 1\n[http]\nenabled = true\nport = {port}\n")
    yield d, port
    d.stop()


def open_stream(port: int, max_tokens: int = 3000) -> http.client.HTTPConnection:
    """Start a streaming request and return its connection (headers are read once the job starts)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "m", "messages": QUESTION, "stream": True,
                                                              "max_tokens": max_tokens}),
                 {"Content-Type": "application/json"})
    return conn


def status_until(bus: BusConn, pred: Any, timeout: float = 20.0) -> dict[str, Any]:
    """Poll status until ``pred(report)`` holds, at most 50 times a second (under the bus's flood limit):
    nothing on the bus announces a queued HTTP job, so this is a bounded poll of a condition."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bus.send("status")
        report = bus.expect("status-report")["data"]
        if pred(report):
            return report
        time.sleep(0.02)
    raise TimeoutError("status never matched")


def test_disconnect_mid_stream_cancels_the_job(loop_api: tuple[Daemon, int]) -> None:
    daemon, port = loop_api
    bus = daemon.connect()
    try:
        conn = open_stream(port)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        got = b""
        while got.count(b'"content"') < 3:  # some answer text is streaming
            got += resp.read1(4096)
        running = status_until(bus, lambda r: r["queue"]["running"] is not None)["queue"]["running"]
        assert running.startswith("chatcmpl-")
        resp.close()  # the client goes away mid-stream
        conn.close()
        report = status_until(bus, lambda r: r["queue"]["idle"])
        assert report["queue"]["running"] is None and report["state"] == "ready"
        assert "cancelled chatcmpl-" in daemon.log_text()
    finally:
        bus.close()


def test_full_queue_is_429_and_leaving_clients_free_it(loop_api: tuple[Daemon, int]) -> None:
    daemon, port = loop_api
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=30)
    bus = daemon.connect()
    try:
        running = open_stream(port)
        head = running.getresponse()
        assert head.status == 200  # the head goes out when the job starts
        left = daemon.log_text().count("HTTP client left")
        queued = open_stream(port)  # waits in the queue (queue_max = 1): no response head yet
        status_until(bus, lambda r: r["queue"]["waiting"] == 1)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="m", messages=QUESTION, max_tokens=5)
        assert err.value.status_code == 429 and err.value.body["code"] == "rate_limit_exceeded"
        assert err.value.response.headers["Retry-After"] == "1"
        queued.close()  # leaving while queued removes the job from the queue
        status_until(bus, lambda r: r["queue"]["waiting"] == 0)
        head.close()
        running.close()
        status_until(bus, lambda r: r["queue"]["idle"])
        assert daemon.log_text().count("HTTP client left") == left + 2  # both cancelled, not finished
        r = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=5)  # still serving
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    finally:
        bus.close()


class HeldLoad(LlamaBackend):
    """The real backend, whose model load waits until the test lets it go."""

    def __init__(self, *args: Any, gate: threading.Event, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate = gate

    def load(self) -> None:
        assert self.gate.wait(30), "the test never released the load"
        super().load()


def test_health_is_503_while_loading_then_200(script_model: Path) -> None:
    port = free_port()
    config = load_config(None, environ={}, overrides={"http.enabled": True, "http.port": port,
                                                      "llm.model": str(script_model)})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        gate = threading.Event()
        engine = Engine(HeldLoad(str(script_model), n_ctx=512, gate=gate), EngineSettings(),
                        on_state=lambda s, m: s == "ready" and loop.call_soon_threadsafe(ready.set))
        api = HttpApi(config, engine)
        await api.start()
        engine.start()
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as s:
                async with s.get("/health") as r:
                    assert r.status == 503 and (await r.json())["status"] in ("starting", "loading")
                async with s.post("/v1/chat/completions", json={"model": "m", "messages": QUESTION}) as r:
                    assert r.status == 503 and (await r.json())["error"]["code"] == "model_not_ready"
                gate.set()
                await asyncio.wait_for(ready.wait(), 30)
                async with s.get("/health") as r:
                    assert (r.status, await r.json()) == (200, {"status": "ok"})
                async with s.post("/v1/chat/completions", json={"model": "m", "messages": QUESTION}) as r:
                    assert r.status == 200 and (await r.json())["choices"][0]["finish_reason"] == "stop"
        finally:
            gate.set()
            await asyncio.to_thread(engine.shutdown)
            await api.close()

    asyncio.run(main())


def test_non_loopback_without_token_is_a_config_error(tmp_path: Path, script_model: Path) -> None:
    from conftest import EDGEBOTD
    import os
    import subprocess

    cfg = tmp_path / "e.toml"
    cfg.write_text('[http]\nenabled = true\nhost = "0.0.0.0"\nport = 1\n')
    env = {**os.environ, "EDGEBOT_BOARD": "generic-x86"}
    p = subprocess.run([EDGEBOTD, "--config", str(cfg), "--model", str(script_model), "--socket",
                        str(tmp_path / "b.sock")], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 78 and "[http] token must be set" in p.stderr
