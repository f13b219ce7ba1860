"""The classroom panel's server side against a real edgebotd (no browser): security headers,
the token, CORS closed, static files, the /panel/api conversations and asks, push-to-talk and
say through the bus, the live voice state, conversations surviving a restart, ``[http] ui``."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from conftest import Daemon
from edgebot.testing.script_model import DEFAULT_SCRIPT

pytest.importorskip("aiohttp")

TOKEN = "panel-api-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    def __init__(self, port: int, token: str = TOKEN) -> None:
        self.port, self.token = port, token

    def request(self, method: str, path: str, body: Optional[Any] = None, headers: Optional[dict[str, str]] = None,
                token: Optional[str] = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = {"Authorization": f"Bearer {self.token if token is None else token}"} if (token or self.token) else {}
        if method == "POST":
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        try:
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Optional[Any] = None, **kw: Any) -> tuple[int, Any]:
        status, _, raw = self.request(method, path, body, **kw)
        return status, json.loads(raw) if raw else None

    def ask(self, cid: str, text: str) -> list[dict[str, Any]]:
        status, headers, raw = self.request("POST", f"/panel/api/conversations/{cid}/ask", {"text": text})
        assert status == 200 and headers["content-type"].startswith("text/event-stream"), raw
        return [json.loads(block[6:]) for block in raw.decode().split("\n\n") if block.startswith("data: ")]


def board(tmp: Path, model: Path, extra: str = "", conversations: Optional[Path] = None) -> tuple[Daemon, Http]:
    port = free_port()
    d = Daemon(tmp, model, f'[http]\nenabled = true\nport = {port}\nhost = "0.0.0.0"\ntoken = "{TOKEN}"\n'
                           f'conversations_dir = "{conversations or tmp / "conversations"}"\n{extra}')
    return d, Http(port)


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory, script_model: Path) -> Iterator[tuple[Daemon, Http]]:
    d, h = board(tmp_path_factory.mktemp("panel-api"), script_model)
    yield d, h
    d.stop()


def test_page_is_public_with_a_strict_policy_and_the_api_needs_the_token(panel: tuple[Daemon, Http]) -> None:
    d, h = panel
    status, headers, body = h.request("GET", "/", token="")
    assert status == 200 and b'<script defer src="/panel/static/panel.js">' in body
    csp = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert b"<script>" not in body and b" on" not in body.lower().replace(b" one", b"")  # no inline script
    assert headers["x-content-type-options"] == "nosniff" and "access-control-allow-origin" not in headers
    assert h.request("GET", "/panel/static/panel.js", token="")[0] == 200
    status, err = h.json("GET", "/panel/api/info", token="")
    assert status == 401 and err["error"]["code"] == "invalid_api_key"
    status, info = h.json("GET", "/panel/api/info")
    assert status == 200 and info["state"] == "ready" and info["voice"]["state"] == "idle"


def test_cross_origin_requests_are_refused_and_the_panels_own_origin_is_not(panel: tuple[Daemon, Http]) -> None:
    d, h = panel
    for path in ("/panel/api/info", "/v1/models"):
        status, err = h.json("GET", path, headers={"Origin": "http://evil.example"})
        assert status == 403 and err["error"]["code"] == "origin_not_allowed", err
    status, err = h.json("POST", "/panel/api/listen", headers={"Origin": "http://evil.example",
                                                               "Content-Type": "application/json"})
    assert status == 403
    status, err = h.json("POST", "/panel/api/listen", b"{}", headers={"Content-Type": "text/plain"})
    assert status == 415  # what a page could send without a preflight
    # the page as a tablet on the LAN loads it: its requests carry its own origin, under any name
    own = {"Host": f"robot.local:{h.port}", "Origin": f"http://robot.local:{h.port}"}
    assert h.json("GET", "/panel/api/info", headers=own)[0] == 200
    assert h.json("POST", "/panel/api/conversations", headers={**own, "Content-Type": "application/json"})[0] == 201
    assert h.json("GET", "/panel/api/info", headers={**own, "Origin": "http://robot.local:9"})[0] == 403
    status, headers, _ = h.request("OPTIONS", "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 403 and not any(k.startswith("access-control-") for k in headers)


def test_static_files_are_gzipped_cached_and_confined(panel: tuple[Daemon, Http]) -> None:
    d, h = panel
    status, headers, body = h.request("GET", "/panel/static/vendor/katex.min.js", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip" and "max-age" in headers["cache-control"]
    assert gzip.decompress(body).startswith(b"!function") or b"katex" in gzip.decompress(body)[:2000].lower()
    assert h.request("GET", "/panel/static/x", headers={"If-None-Match": headers["etag"]})[0] == 404
    assert h.request("GET", "/panel/static/vendor/katex.min.js", headers={"If-None-Match": headers["etag"]})[0] == 304
    for path in ("/panel/static/../server.py", "/panel/static/%2e%2e/server.py", "/panel/static//etc/passwd"):
        assert h.request("GET", path)[0] == 404, path


def test_conversation_api_and_bad_requests(panel: tuple[Daemon, Http]) -> None:
    d, h = panel
    status, conv = h.json("POST", "/panel/api/conversations")
    assert status == 201 and len(conv["id"]) == 12
    events = h.ask(conv["id"], "What is 2+2?")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "queued" and kinds[1] == "start" and kinds[-1] == "end" and "think" in kinds
    assert "".join(e["text"] for e in events if e["type"] == "delta") == DEFAULT_SCRIPT.answer_text
    assert "".join(e["text"] for e in events if e["type"] == "think") == DEFAULT_SCRIPT.think_text
    assert events[-1]["reason"] == "stop" and events[-1]["stats"]["completion_tokens"] == len(DEFAULT_SCRIPT.pieces)
    status, full = h.json("GET", f"/panel/api/conversations/{conv['id']}")
    assert full["title"] == "What is 2+2?" and full["exchanges"][0]["answer"] == DEFAULT_SCRIPT.answer_text
    assert h.json("GET", "/panel/api/conversations/0123456789ab")[0] == 404
    assert h.json("GET", "/panel/api/conversations/not-an-id")[0] == 404
    status, err = h.json("POST", f"/panel/api/conversations/{conv['id']}/ask", b"{not json")
    assert status == 400 and "not valid JSON" in err["error"]["message"]
    status, err = h.json("POST", f"/panel/api/conversations/{conv['id']}/ask", {"text": "  "})
    assert status == 400 and err["error"]["param"] == "text"
    status, err = h.json("POST", f"/panel/api/conversations/{conv['id']}/ask", {"text": "x" * 70000})
    assert status == 400 and "at most" in err["error"]["message"]
    status, err = h.json("POST", "/panel/api/asks/panel-0000/cancel")
    assert status == 404 and "already ended" in err["error"]["message"]
    assert h.json("DELETE", f"/panel/api/conversations/{conv['id']}")[0] == 200
    assert h.json("GET", f"/panel/api/conversations/{conv['id']}")[0] == 404
    assert not (d.tmp / "conversations" / f"{conv['id']}.json").exists()


def test_listen_and_say_reach_the_bridges(panel: tuple[Daemon, Http]) -> None:
    d, h = panel
    status, err = h.json("POST", "/panel/api/listen")
    assert status == 409 and err["error"]["code"] == "no_speech_in" and "edgebot-speech-in" in err["error"]["message"]
    status, err = h.json("POST", "/panel/api/say", {"text": "hello"})
    assert status == 409 and err["error"]["code"] == "no_speech_out"
    bridge = d.connect()  # stands where speech-in and speech-out would: a real bus client
    bridge.send("subscribe", types=["listen", "say"])
    bridge.expect("ack")
    assert h.json("POST", "/panel/api/listen") == (200, {"delivered": 1})
    assert bridge.expect("listen")["data"] == {}
    assert h.json("POST", "/panel/api/say", {"text": "The answer is 4."}) == (200, {"delivered": 1})
    assert bridge.expect("say")["data"]["text"] == "The answer is 4."
    bridge.close()


def test_voice_state_follows_the_bus(panel: tuple[Daemon, Http]) -> None:
    d, h = panel
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=30)
    conn.request("GET", "/panel/api/voice", headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    assert resp.status == 200

    def snapshot() -> dict[str, Any]:
        while True:
            line = resp.fp.readline().decode()
            if line.startswith("data: "):
                return json.loads(line[6:])

    assert snapshot()["state"] in ("idle", "listening")  # an earlier test's push-to-talk may still listen
    speech = d.connect(hello=False)  # plays speech-in (the test runs as root, so it may take the role)
    speech.send("hello", client="speech-in", role="speech-in")
    speech.expect("welcome")
    out = d.connect(hello=False)  # and speech-out: only it may say what is being spoken
    out.send("hello", client="speech-out", role="speech-out")
    out.expect("welcome")
    speech.send("audio-device", bridge="speech-in", state="ready", device="test")
    assert snapshot()["microphone"] == "ready"
    speech.send("heard", text="what is two", final=False)
    assert snapshot() | {"since": 0} == {"state": "hearing", "heard": "what is two", "microphone": "ready",
                                         "speaker": "unknown", "since": 0}
    speech.ask("voice-1", "what is two plus two", session="voice", source="voice", speak=True)
    states = [snapshot()["state"]]
    speech.expect("answer-end", id="voice-1")
    out.send("speaking", state="start", id="voice-1")
    while states[-1] != "speaking":
        states.append(snapshot()["state"])
    assert "thinking" in states
    out.send("speaking", state="stop", id="voice-1")
    assert snapshot()["state"] == "idle"
    speech.close()
    out.close()
    conn.close()


def test_conversations_survive_a_restart(tmp_path: Path, script_model: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    d, h = board(tmp_path / "a", script_model, conversations=tmp_path / "kept")
    try:
        _, conv = h.json("POST", "/panel/api/conversations")
        first = h.ask(conv["id"], "What is 2+2?")[-1]["stats"]
    finally:
        d.stop()
    d, h = board(tmp_path / "b", script_model, conversations=tmp_path / "kept")  # same conversations_dir, a fresh engine without the session
    try:
        listed = h.json("GET", "/panel/api/conversations")[1]["conversations"]
        assert [c["id"] for c in listed] == [conv["id"]]
        second = h.ask(conv["id"], "What is 2+2?")[-1]["stats"]
        # the stored conversation was handed to the engine as history: the prompt holds the first turn
        assert second["prompt_tokens"] > first["prompt_tokens"] + len(DEFAULT_SCRIPT.answer_text)
        assert len(h.json("GET", f"/panel/api/conversations/{conv['id']}")[1]["exchanges"]) == 2
    finally:
        d.stop()


def test_ui_off_serves_no_page(tmp_path: Path, script_model: Path) -> None:
    d, h = board(tmp_path, script_model, "ui = false\n")
    try:
        assert h.request("GET", "/", token="")[0] == 404
        assert h.request("GET", "/panel/api/info")[0] == 404
        assert h.request("GET", "/v1/models")[0] == 200
    finally:
        d.stop()


def test_a_page_that_leaves_cancels_its_answer(tmp_path: Path, slow_loop_model: Path) -> None:
    d, h = board(tmp_path, slow_loop_model, "[llm]\nn_ctx = 4096\nmax_tokens = 4000\n")
    try:
        _, conv = h.json("POST", "/panel/api/conversations")
        sock = socket.create_connection(("127.0.0.1", h.port), timeout=30)
        body = json.dumps({"text": "Count forever."}).encode()
        sock.sendall(f"POST /panel/api/conversations/{conv['id']}/ask HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        seen = b""
        while b'"type": "delta"' not in seen:  # the endless answer is streaming
            chunk = sock.recv(65536)
            assert chunk, seen
            seen += chunk
        sock.close()  # the tablet went away
        bus = d.connect()
        assert bus.wait_idle(10)["queue"]["running"] is None  # the engine stopped, no Stop needed
        bus.close()
        # the cancelled exchange is not kept (nobody saw its end)
        assert h.json("GET", f"/panel/api/conversations/{conv['id']}")[1]["exchanges"] == []
    finally:
        d.stop()
