"""The remote backend: a board's edgebotd answering from a second edgebotd's HTTP API on loopback
(a real OpenAI-compatible server, real llama.cpp on both sides), falling back to its own model when
that server is stopped mid-session and returning when it is back; and, in-process, against FAKE
servers that stall (before answering, in the middle of the thinking, in the middle of the answer),
fail with HTTP 500, or are not there at all."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import BusConn
from edgebot.engine.backends.llama import LlamaBackend
from edgebot.engine.backends.remote import RemoteBackend
from edgebot.engine.jobs import EngineSettings, Job, JobDelta, JobEnded
from edgebot.engine.scheduler import Engine
from edgebot.testing.script_model import DEFAULT_SCRIPT, Script, write_script_model
from test_http_api import free_port

pytest.importorskip("aiohttp")  # the remote edgebotd serves HTTP

REMOTE = Script(think=("Remote", " thinks", " hard."), close=("</th", "ink>\n\n"), answer=("Server", " says", " five."))


@pytest.fixture(scope="module")
def remote_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_script_model(tmp_path_factory.mktemp("models") / "remote.gguf", REMOTE)


def collect(bus: BusConn, id_: str, text: str, **extra: Any) -> tuple[str, str, dict[str, Any]]:
    """Ask with thinking shown; (answer, thinking, answer-end data)."""
    bus.ask(id_, text, think="show", **extra)
    answer, thinking = [], []
    while True:
        ev = bus.recv(60)
        assert ev is not None
        if ev["data"].get("id") != id_:
            continue
        if ev["type"] == "answer-delta":
            answer.append(ev["data"]["text"])
        elif ev["type"] == "think-delta":
            thinking.append(ev["data"]["text"])
        elif ev["type"] in ("answer-end", "error"):
            return "".join(answer), "".join(thinking), ev["data"]


def test_remote_edgebotd_then_fallback_then_back(daemon_factory: Any, script_model: Path, remote_model: Path) -> None:
    port = free_port()
    remote_cfg = f"[http]\nenabled = true\nport = {port}\n"
    remote = daemon_factory(remote_model, remote_cfg)
    board = daemon_factory(script_model, f'[llm]\nbackend = "remote"\nremote_url = "http://127.0.0.1:{port}/v1"\n'
                                         f'remote_timeout_s = 5\nremote_retry_s = 0\n')
    bus = board.connect()
    try:
        answer, thinking, end = collect(bus, "r1", "What is 2+2?", session="cli:class")
        assert (answer, thinking, end["reason"]) == (REMOTE.answer_text, REMOTE.think_text, "stop")
        assert end["stats"]["backend"] == "remote"
        first_prompt = end["stats"]["prompt_tokens"]

        remote.stop()  # the server goes away mid-session: the board answers by itself
        answer, thinking, end = collect(bus, "r2", "And 3+3?", session="cli:class")
        assert (answer, thinking, end["stats"]["backend"]) == (DEFAULT_SCRIPT.answer_text, DEFAULT_SCRIPT.think_text,
                                                               "local")
        assert "unavailable" in board.log_text()

        daemon_factory(remote_model, remote_cfg)  # back on the same port (READY=1 awaited)
        answer, thinking, end = collect(bus, "r3", "And 4+4?", session="cli:class")
        assert (answer, end["stats"]["backend"]) == (REMOTE.answer_text, "remote")
        assert end["stats"]["prompt_tokens"] > first_prompt + len("What is 2+2?")  # the history went along
        assert "is back" in board.log_text()
    finally:
        bus.close()


# -- in-process, against FAKE servers ------------------------------------------------------------------


class FakeServer:
    """A FAKE OpenAI-compatible server on 127.0.0.1: answers GET /models, and to a POST sends
    ``head`` + ``events`` then holds the connection open (a stall) until closed."""

    def __init__(self, status: int = 200, events: tuple[dict[str, Any], ...] = (), send_head: bool = True) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.status, self.events, self.send_head = status, events, send_head
        self.posts: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = int(next((h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")),
                              b"0"))
            while len(body) < length:
                body += conn.recv(65536)
            if head.startswith(b"GET"):
                payload = b'{"object": "list", "data": [{"id": "fake"}]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
                return
            self.posts.put(json.loads(body))
            if self.status != 200:
                payload = b'{"error": {"message": "boom", "type": "server_error"}}'
                conn.sendall(b"HTTP/1.1 %d Oops\r\nContent-Length: %d\r\n\r\n%s" % (self.status, len(payload), payload))
                return
            if self.send_head:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for ev in self.events:
                line = b"data: " + json.dumps({"choices": [{"index": 0, "delta": ev}]}).encode() + b"\n\n"
                conn.sendall(b"%x\r\n%s\r\n" % (len(line), line))
            self.done.wait(30)  # the stall

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        for t in self.threads:
            t.join(10)


def run_engine(backend: RemoteBackend) -> Engine:
    ready = threading.Event()
    engine = Engine(backend, EngineSettings(), on_state=lambda s, m: s in ("ready", "failed") and ready.set())
    engine.start()
    assert ready.wait(30) and engine.state == "ready"
    return engine


def ask(engine: Engine, id_: str = "q") -> tuple[str, str, JobEnded, float]:
    events: "queue.Queue[Any]" = queue.Queue()
    t0 = time.monotonic()
    engine.submit(Job(id=id_, text="What is 2+2?", source="cli", sink=events.put, show_think=True))
    answer, thinking = [], []
    while True:
        ev = events.get(timeout=30)
        if isinstance(ev, JobDelta):
            (thinking if ev.think else answer).append(ev.text)
        elif isinstance(ev, JobEnded):
            return "".join(answer), "".join(thinking), ev, time.monotonic() - t0


@pytest.mark.parametrize("events, send_head", [((), False), ((), True)])
def test_a_remote_that_stalls_before_answering_falls_back(script_model: Path, events: tuple, send_head: bool) -> None:
    fake = FakeServer(events=events, send_head=send_head)
    engine = run_engine(RemoteBackend(fake.url, timeout_s=0.5, retry_s=60,
                                      local=LlamaBackend(str(script_model), n_ctx=1024)))
    try:
        answer, thinking, end, took = ask(engine)
        assert (answer, thinking, end.reason, end.stats["backend"]) == \
            (DEFAULT_SCRIPT.answer_text, DEFAULT_SCRIPT.think_text, "stop", "local")
        assert took >= 0.5 and fake.posts.get(timeout=1)["stream"] is True  # it waited for the timeout
        answer, _, end, took = ask(engine, "q2")  # marked down: the next answer goes local at once,
        assert end.stats["backend"] == "local" and fake.posts.empty()  # without trying the remote
    finally:
        engine.shutdown()
        fake.close()


def test_a_stall_in_the_thinking_continues_it_locally(script_model: Path) -> None:
    fake = FakeServer(events=({"role": "assistant", "content": ""}, {"reasoning_content": "Remote began. "}))
    engine = run_engine(RemoteBackend(fake.url, timeout_s=0.5, local=LlamaBackend(str(script_model), n_ctx=1024)))
    try:
        answer, thinking, end, _ = ask(engine)
        assert thinking == "Remote began. " + DEFAULT_SCRIPT.think_text
        assert (answer, end.reason, end.stats["backend"]) == (DEFAULT_SCRIPT.answer_text, "stop", "local")
    finally:
        engine.shutdown()
        fake.close()


def test_a_stall_in_the_answer_ends_it_with_an_error(script_model: Path) -> None:
    fake = FakeServer(events=({"reasoning_content": "Hm."}, {"content": "Half an ans"}))
    engine = run_engine(RemoteBackend(fake.url, timeout_s=0.5, local=LlamaBackend(str(script_model), n_ctx=1024)))
    try:
        answer, thinking, end, _ = ask(engine)
        assert (answer, thinking) == ("Half an ans", "Hm.")  # never repeated by a fallback
        assert (end.reason, end.code, end.stats["backend"]) == ("error", "backend", "remote")
        assert "stopped in the middle of the answer" in end.message
    finally:
        engine.shutdown()
        fake.close()


def test_http_errors_and_dead_ports(script_model: Path) -> None:
    fake = FakeServer(status=500)
    engine = run_engine(RemoteBackend(fake.url, timeout_s=2, local=LlamaBackend(str(script_model), n_ctx=1024)))
    try:
        answer, _, end, _ = ask(engine)
        assert (answer, end.stats["backend"]) == (DEFAULT_SCRIPT.answer_text, "local")
    finally:
        engine.shutdown()
        fake.close()
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    engine = run_engine(RemoteBackend(dead, timeout_s=60, local=None))
    try:
        answer, _, end, took = ask(engine)
        assert (answer, end.reason, end.code) == ("", "error", "backend") and "unavailable" in end.message
        assert took < 30  # a refused connection is known at once, not after the 60 s timeout
    finally:
        engine.shutdown()


def test_remote_without_fallback_streams_reasoning_and_content(script_model: Path) -> None:
    """Without a local model (``fallback = "none"``): reasoning_content becomes thinking, content the answer,
    and the request carries the conversation, sampling and the JSON schema."""
    fake = FakeServer(events=({"reasoning_content": "Think "}, {"reasoning_content": "more."},
                              {"content": "Four"}, {"content": "."}))
    engine = run_engine(RemoteBackend(fake.url, "m1", timeout_s=0.5, local=None))
    try:
        events: "queue.Queue[Any]" = queue.Queue()
        from edgebot.engine.backend import SamplingParams
        engine.submit(Job(id="s", text="Q?", source="http", sink=events.put, show_think=True, max_tokens=50,
                          sampling=SamplingParams(temperature=0.2, seed=9, json_schema='{"type": "object"}')))
        answer, thinking = [], []
        while True:
            ev: Optional[Any] = events.get(timeout=30)
            if isinstance(ev, JobDelta):
                (thinking if ev.think else answer).append(ev.text)
            if isinstance(ev, JobEnded):
                break
        # the fake then stalls without [DONE]: that is an error only after the answer began
        assert ("".join(thinking), "".join(answer)) == ("Think more.", "Four.")
        post = fake.posts.get(timeout=1)
        assert post["messages"] == [{"role": "user", "content": "Q?"}] and post["model"] == "m1"
        assert (post["temperature"], post["seed"], post["max_tokens"]) == (0.2, 9, 50)
        assert post["response_format"]["json_schema"]["schema"] == {"type": "object"}
    finally:
        engine.shutdown()
        fake.close()
