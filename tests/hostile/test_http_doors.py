"""Issue 12, items 4 and 12 and the HTTP "Low" items, against a real edgebotd: connections that never
finish their headers or bodies are closed after a timeout and cannot use up the daemon's file
descriptors (the bus and real HTTP requests are still served); at most [http] max_request_bodies
bodies are received at once; a web page cannot drive the API (Content-Type, Host, Origin, CORS
preflight); odd Authorization headers are 401, never 500; a deeply nested body is a 400."""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path
from typing import Iterator

import openai
import pytest

pytest.importorskip("aiohttp")  # the `http` extra

from conftest import Daemon
from edgebot.testing.script_model import DEFAULT_SCRIPT
from http_client import JSON, QUESTION, chat, open_fds, request
from test_http_api import free_port

TOKEN = "door-token"
MAX_CONNECTIONS = 8
HEADER_TIMEOUT_S = 1.5
PARTIAL = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, script_model: Path) -> Iterator[tuple[Daemon, int]]:
    """Loopback, no token, small limits so a test can fill them."""
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("edgebotd-doors"), script_model,
               f"[http]\nenabled = true\nport = {port}\nmax_connections = {MAX_CONNECTIONS}\n"
               f"header_timeout_s = {HEADER_TIMEOUT_S}\nbody_timeout_s = {HEADER_TIMEOUT_S}\nmax_request_bodies = 2\n"
               f'allowed_hosts = ["robot.local"]\nallowed_origins = ["http://robot.local:3000"]\n')
    yield d, port
    d.stop()


@pytest.fixture(scope="module")
def token_api(tmp_path_factory: pytest.TempPathFactory, script_model: Path) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("edgebotd-doors-token"), script_model,
               f'[http]\nenabled = true\nport = {port}\ntoken = "{TOKEN}"\n')
    yield d, port
    d.stop()


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the daemon closes ``sock`` (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_half_finished_connections_cannot_exhaust_the_daemon(api: tuple[Daemon, int]) -> None:
    d, port = api
    baseline = open_fds(d.proc.pid)
    idle = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(PARTIAL)  # headers that never end
        idle.append(s)
    try:
        # asyncio accepts a burst before it makes the connections' protocols, so the count settles
        # (each over the cap is closed at once); before the cap it stayed above 200
        deadline = time.monotonic() + 10
        while (fds := open_fds(d.proc.pid)) > baseline + MAX_CONNECTIONS + 4 and time.monotonic() < deadline:
            time.sleep(0.05)  # pacing a bounded poll of /proc: nothing announces the count
        assert fds <= baseline + MAX_CONNECTIONS + 4, fds
        status = d.cli("status")
        assert status.returncode == 0, status.stderr  # the bus still takes local clients
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        r = client.chat.completions.create(model="m", messages=QUESTION)
        assert r.choices[0].message.content == DEFAULT_SCRIPT.answer_text
        start = time.monotonic()
        assert all(closed_by_peer(s, HEADER_TIMEOUT_S + 5) for s in idle[-MAX_CONNECTIONS:])
        assert time.monotonic() - start < HEADER_TIMEOUT_S + 5
    finally:
        for s in idle:
            s.close()


def test_a_body_that_never_arrives_is_cut_off(api: tuple[Daemon, int]) -> None:
    d, port = api
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"model\": ")
        s.settimeout(HEADER_TIMEOUT_S + 5)
        reply = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    finally:
        s.close()


def test_at_most_max_request_bodies_are_received_at_once(api: tuple[Daemon, int]) -> None:
    d, port = api
    slow = []
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n{\"messages\": ")
        slow.append(s)
    try:
        deadline = time.monotonic() + 5
        while True:  # bounded poll: nothing announces that the daemon has started reading both bodies
            status, body = chat(port, {"model": "m", "messages": QUESTION})
            if status == 503 or time.monotonic() > deadline:
                break
        assert status == 503 and "max_request_bodies" in body["error"]["message"], body
    finally:
        for s in slow:
            s.close()
    deadline = time.monotonic() + HEADER_TIMEOUT_S + 5
    while (status := chat(port, {"model": "m", "messages": QUESTION})[0]) == 503 and time.monotonic() < deadline:
        pass  # the daemon notices the closed uploads
    assert status == 200


def test_the_fd_soft_limit_is_raised_to_the_hard_limit(api: tuple[Daemon, int]) -> None:
    d, _ = api
    line = next(x for x in Path(f"/proc/{d.proc.pid}/limits").read_text().splitlines()
                if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, line
    assert int(soft) >= resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_post_that_is_not_json_is_415(api: tuple[Daemon, int], content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    status, body, _ = request(api[1], "POST", "/v1/chat/completions",
                              b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', headers)
    assert status == 415 and "application/json" in body["error"]["message"], body


def test_json_with_a_charset_is_accepted(api: tuple[Daemon, int]) -> None:
    status, body = chat(api[1], {"model": "m", "messages": QUESTION},
                        {"Content-Type": "Application/JSON; charset=utf-8"})
    assert status == 200, body


@pytest.mark.parametrize("host, ok", [("127.0.0.1", True), ("localhost", True), ("[::1]", True),
                                      ("127.0.0.1:8080", True), ("robot.local", True), ("ROBOT.local:80", True),
                                      ("evil.example", False), ("evil.example:8080", False),
                                      ("localhost.evil.example", False), ("10.0.0.5", False)])
def test_a_foreign_host_header_is_refused_on_loopback(api: tuple[Daemon, int], host: str, ok: bool) -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends Host: evil.example."""
    status, body = chat(api[1], {"model": "m", "messages": QUESTION}, {"Host": host})
    assert (status == 200) == ok, (status, body)
    if not ok:
        assert status == 403 and "allowed_hosts" in body["error"]["message"]
    status, _, _ = request(api[1], "GET", "/v1/models", headers={"Host": host})
    assert (status == 200) == ok


@pytest.mark.parametrize("origin, ok", [("http://evil.example", False), ("null", False),
                                        ("http://localhost:5173", True), ("http://127.0.0.1", True),
                                        ("http://robot.local:3000", True), ("http://robot.local:4000", False)])
def test_a_cross_origin_request_is_refused(api: tuple[Daemon, int], origin: str, ok: bool) -> None:
    status, body = chat(api[1], {"model": "m", "messages": QUESTION}, {"Origin": origin})
    assert (status == 200) == ok, (status, body)
    if not ok:
        assert status == 403 and "allowed_origins" in body["error"]["message"]


def test_cors_preflights_are_refused(api: tuple[Daemon, int]) -> None:
    status, body, headers = request(api[1], "OPTIONS", "/v1/chat/completions",
                                    headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "content-type"})
    assert status == 403 and "cross-origin" in body["error"]["message"], body
    assert not any(k.startswith("access-control-allow") for k in headers), headers


@pytest.mark.parametrize("auth", [b"Bearer \xff", b"Bearer \xff\xfe\x00x", b"Bearer", b"Bearer ", b"Basic abc",
                                  "Bearer \u00e9".encode("latin-1")])
def test_odd_authorization_headers_are_401(token_api: tuple[Daemon, int], auth: bytes) -> None:
    s = socket.create_connection(("127.0.0.1", token_api[1]))
    try:
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Authorization: " + auth + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
                  b"Connection: close\r\n\r\n" + body)
        s.settimeout(30)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    finally:
        s.close()
    status = reply.split(b"\r\n", 1)[0].split(b" ")[1]
    assert status == b"401" or (status == b"400" and b"\x00" in auth), reply[:300]  # a NUL: aiohttp's parser says 400


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_the_bearer_scheme_is_case_insensitive(token_api: tuple[Daemon, int], scheme: str) -> None:
    status, body = chat(token_api[1], {"model": "m", "messages": QUESTION}, {"Authorization": f"{scheme} {TOKEN}"})
    assert status == 200, body


def test_a_deeply_nested_body_is_400(token_api: tuple[Daemon, int]) -> None:
    nested = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, body, _ = request(token_api[1], "POST", "/v1/chat/completions", nested,
                              {**JSON, "Authorization": f"Bearer {TOKEN}"})
    assert status == 400 and "nest" in body["error"]["message"], body
    assert token_api[0].proc.poll() is None
