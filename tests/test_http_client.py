"""The remote backend's HTTP client decodes UTF-8 across network reads and chunk boundaries.

A real Unix socket pair: the test writes a server-sent-event stream in two parts and waits until
the client has read the first part off the socket before it writes the second, so the client's
second read starts exactly at the split. Every byte offset of a CJK answer is tried, for a chunked
body (the split is also a chunk boundary) and a close-delimited one.
"""

from __future__ import annotations

import array
import fcntl
import json
import socket
import termios
import threading
import time

import pytest

from edgebot.engine.backends.http_client import Response

TEXT = "안녕하세요, 你好世界! ✓"
EVENTS = [json.dumps({"choices": [{"delta": {"content": TEXT}}]}, ensure_ascii=False), "[DONE]"]


def _unread(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue."""
    n = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, n)
    return n[0]


def _stream(style: str, split: int) -> tuple[bytes, bytes]:
    """The response (head and body) cut in two at body byte ``split``."""
    body = b"".join(b"data: " + ev.encode() + b"\n\n" for ev in EVENTS)
    first, second = body[:split], body[split:]
    if style == "chunked":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        a = b"%x\r\n%s\r\n" % (len(first), first) if first else b""
        b = (b"%x\r\n%s\r\n" % (len(second), second) if second else b"") + b"0\r\n\r\n"
        return head + a, b
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"  # close-delimited
    return head + first, second


def _read_events(style: str, split: int) -> list[str]:
    client, server = socket.socketpair()
    client.settimeout(0.01)
    first, second = _stream(style, split)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server.sendall(first)
            deadline = time.monotonic() + 10
            while _unread(client) and time.monotonic() < deadline:  # until the client has read it
                time.sleep(0.001)
            server.sendall(second)
            server.shutdown(socket.SHUT_WR)
        except OSError as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    resp = Response(client, timeout_s=10, cancel=None)
    try:
        resp._read_head()
        return list(resp.events())
    finally:
        resp.close()
        t.join(10)
        server.close()
        assert not errors


@pytest.mark.parametrize("style", ["chunked", "close-delimited"])
def test_cjk_split_at_every_byte_offset(style: str) -> None:
    body_len = sum(len(b"data: " + ev.encode() + b"\n\n") for ev in EVENTS)
    bad = []
    for split in range(1, body_len):
        events = _read_events(style, split)
        got = json.loads(events[0])["choices"][0]["delta"]["content"] if events else None
        if got != TEXT or len(events) != 1:
            bad.append((split, got))
    assert not bad, f"{len(bad)} split offsets garbled the text, e.g. {bad[:3]}"
