"""A small blocking HTTP/1.1 client for the remote backend, on the standard library only.

Why not ``http.client``: the remote backend runs on the engine worker thread and must notice a
cancel within a fraction of a second and a stalled server within ``timeout_s``, while a response
is streaming. ``http.client`` reads through a buffered file whose state is undefined after a
socket timeout, so this client owns the socket: it polls it every ``POLL_S`` seconds, checks the
cancel event in between, and decodes ``Content-Length``, chunked and close-delimited bodies and
server-sent events itself.
"""

from __future__ import annotations

import codecs
import json
import socket
import ssl
import threading
import time
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

POLL_S = 0.05
"""How often a waiting read checks the cancel event (seconds)."""
MAX_HEADER_BYTES = 64 * 1024


class RemoteError(Exception):
    """The server cannot be reached, answered with an error, or sent something unreadable."""


class RemoteTimeout(RemoteError):
    """Nothing arrived from the server within the timeout."""


class Cancelled(Exception):
    """The cancel event was set while waiting for the server."""


class Response:
    """One response: ``status``, ``headers`` (lower-case names), then the body via ``body()``,
    ``read_all()`` or ``events()``. Always ``close()`` it."""

    def __init__(self, sock: socket.socket, timeout_s: float, cancel: Optional[threading.Event]) -> None:
        self._sock = sock
        self._timeout_s = timeout_s
        self._cancel = cancel
        self._buf = b""
        self._eof = False
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}

    # -- raw reading -----------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Read more into the buffer; False at end of stream. Raises RemoteTimeout / Cancelled."""
        if self._eof:
            return False
        deadline = time.monotonic() + self._timeout_s
        while True:
            if self._cancel is not None and self._cancel.is_set():
                raise Cancelled()
            try:
                data = self._sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                if time.monotonic() >= deadline:
                    raise RemoteTimeout(f"nothing from the server for {self._timeout_s:g} s") from None
                continue
            except OSError as exc:
                raise RemoteError(f"connection lost: {exc}") from None
            if not data:
                self._eof = True
                return False
            self._buf += data
            return True

    def _readline(self) -> bytes:
        while b"\r\n" not in self._buf:
            if len(self._buf) > MAX_HEADER_BYTES:
                raise RemoteError("a header or chunk line is too long")
            if not self._fill():
                raise RemoteError("the connection closed in the middle of the response")
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _read_head(self) -> None:
        status = self._readline().decode("latin-1")
        parts = status.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise RemoteError(f"not an HTTP response: {status[:80]!r}")
        self.status, self.reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
        while True:
            line = self._readline().decode("latin-1")
            if not line:
                return
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def body(self) -> Iterator[bytes]:
        """The body in pieces as they arrive (chunked, Content-Length or until close)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self._readline():  # trailers, up to the empty line
                        pass
                    return
                while size > 0:
                    if not self._buf and not self._fill():
                        raise RemoteError("the connection closed inside a chunk")
                    data, self._buf = self._buf[:size], self._buf[size:]
                    size -= len(data)
                    yield data
                self._readline()
        length = self.headers.get("content-length")
        left = int(length) if length and length.isdigit() else None
        while left is None or left > 0:
            if not self._buf and not self._fill():
                if left:
                    raise RemoteError("the connection closed before the whole body arrived")
                return
            data = self._buf if left is None else self._buf[:left]
            self._buf = self._buf[len(data):]
            if left is not None:
                left -= len(data)
            yield data

    def read_all(self, limit: int = 1 << 20) -> bytes:
        out = b""
        for data in self.body():
            out += data
            if len(out) > limit:
                raise RemoteError(f"the response is larger than {limit} bytes")
        return out

    def events(self) -> Iterator[str]:
        """The ``data`` of each server-sent event, until ``[DONE]`` or the end of the body.

        The body is decoded with an incremental UTF-8 decoder: a character split across two network
        reads or two chunks (a CJK character is 3 bytes) is held until its last byte arrives.
        """
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text, data = "", []  # type: str, list[str]
        for chunk in self.body():
            text += decoder.decode(chunk)
            while "\n" in text:
                line, text = text.split("\n", 1)
                line = line.rstrip("\r")
                if not line:
                    if data:
                        payload, data = "\n".join(data), []
                        if payload == "[DONE]":
                            return
                        yield payload
                elif line.startswith("data:"):
                    data.append(line[5:][1:] if line[5:6] == " " else line[5:])
        if data and "\n".join(data) != "[DONE]":
            yield "\n".join(data)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def request(method: str, url: str, body: Optional[Any] = None, *, api_key: str = "", timeout_s: float = 10.0,
            cancel: Optional[threading.Event] = None) -> Response:
    """Send one request (``body`` as JSON) and return the response with its head read.

    ``timeout_s`` (seconds) bounds the connect and every wait for data. Raises RemoteError,
    RemoteTimeout or Cancelled.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    payload = b"" if body is None else json.dumps(body).encode()
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", "Accept-Encoding: identity",
            "User-Agent: edgebot", "Accept: text/event-stream, application/json"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    if api_key:
        head.append(f"Authorization: Bearer {api_key}")
    try:
        sock = socket.create_connection((parts.hostname, port), timeout=timeout_s)
    except socket.timeout:
        raise RemoteTimeout(f"could not connect to {parts.hostname}:{port} within {timeout_s:g} s") from None
    except OSError as exc:
        raise RemoteError(f"cannot connect to {parts.hostname}:{port}: {exc.strerror or exc}") from None
    try:
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        sock.settimeout(POLL_S)
        resp = Response(sock, timeout_s, cancel)
        resp._read_head()
    except (RemoteError, Cancelled):
        sock.close()
        raise
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise RemoteError(f"request to {parts.hostname}:{port} failed: {exc}") from None
    return resp
