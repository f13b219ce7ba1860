"""Who may talk to the HTTP API, and how many at once: the checks that run before a request's body
is read, and the connection cap. No aiohttp import here, so the checks are plain functions.

- **Host** (DNS rebinding): while the API listens on loopback, a request's ``Host`` must be a
  loopback name or address or one of ``[http] allowed_hosts``: a web page whose own name was made to
  resolve to 127.0.0.1 still sends its own name.
- **Origin**: a browser says which page sent a request; only this server's own pages (the panel),
  loopback pages and ``[http] allowed_origins`` may. CORS preflights (``OPTIONS``) are always refused, so no browser will send
  a cross-origin request with a JSON body or a token.
- **Content-Type**: a POST must say ``application/json``; the "simple" types a page can send
  without a preflight (``text/plain``, forms) are refused.
- **Authorization**: ``Bearer <token>``, the scheme in any case; any bytes compare safely.
- **Connections**: at most ``[http] max_connections``; a new one closes the oldest connection that is
  not in the middle of a request (idle, or still sending its headers), else it is answered 503.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit

from edgebot.http.chat import ApiError

FORBIDDEN = "invalid_request_error"
STALE_S = 5.0
"""A handler made this long ago whose connection never came up is no longer counted (seconds)."""


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address, without port or brackets) names this machine's loopback."""
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a ``Host`` header value (``[::1]:8080`` -> ``::1``, ``a.b:80`` -> ``a.b``), lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def check_host(header: Optional[str], allowed: Iterable[str]) -> None:
    """Raise 403 unless ``header`` names loopback or an allowed host (no header: a non-browser client)."""
    if header is None:
        return
    name = host_name(header)
    if is_loopback(name) or name in {h.lower().rstrip(".") for h in allowed}:
        return
    raise ApiError(403, f"Host {header[:100]!r} is not this server's name; a loopback API answers only to "
                        f"localhost, loopback addresses and [http] allowed_hosts (add the name there if you "
                        f"reach the board by it)", FORBIDDEN, "host_not_allowed")


def _origin(value: str) -> str:
    return value.strip().lower().rstrip("/")


def check_origin(header: Optional[str], allowed: Iterable[str], own: Optional[str] = None) -> None:
    """Raise 403 when a browser page from another origin sent the request.

    ``own`` is this server's origin as the request names it (``http://`` + its Host): the panel's
    page, served by this server, may call it from any name the board is reached by. (A page on a
    rebound DNS name gets here only where the Host check does not apply, beyond loopback, and there
    the token is required, which such a page does not have.)
    """
    if header is None:
        return
    if own is not None and _origin(header) == _origin(own):
        return
    parts = urlsplit(header.strip())
    try:
        local = parts.scheme in ("http", "https") and parts.hostname is not None and is_loopback(parts.hostname)
    except ValueError:
        local = False
    if local or _origin(header) in {_origin(a) for a in allowed}:
        return
    raise ApiError(403, f"requests from web pages of origin {header[:100]!r} are refused; add it to "
                        f"[http] allowed_origins to allow it", FORBIDDEN, "origin_not_allowed")


def refuse_preflight() -> ApiError:
    return ApiError(403, "cross-origin requests are not allowed (CORS preflight refused); call the API from a "
                         "server or a page on an origin in [http] allowed_origins", FORBIDDEN, "cors_refused")


def check_json_type(content_type: str) -> None:
    """Raise 415 unless the (already parsed, lower-case) media type is JSON."""
    if content_type != "application/json":
        raise ApiError(415, f"the body must be JSON sent with Content-Type: application/json (got "
                            f"{content_type[:100]!r})", FORBIDDEN, "unsupported_media_type")


def token_ok(header: str, token: bytes) -> bool:
    """``Authorization: Bearer <token>`` (the scheme in any case) carries ``token``; never raises."""
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), token)


def refusal_bytes(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection (for use before aiohttp is involved)."""
    body = json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": code}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Retry-After: 1\r\nConnection: close\r\n\r\n").encode() + body


class _Refuse:
    """A protocol that answers 503 and closes: for a connection over the cap when none can give way."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    def connection_made(self, transport: Any) -> None:
        transport.write(self.reply)
        transport.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class _Counted:
    """An aiohttp connection handler, counted by the cap from the moment it is made until its
    connection is lost. Passes every protocol call through to the handler."""

    def __init__(self, cap: "ConnectionCap", inner: Any) -> None:
        self.cap, self.inner = cap, inner
        self.made = time.monotonic()
        self.connected = False

    def connection_made(self, transport: Any) -> None:
        self.connected = True
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.cap.live.pop(self, None)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> Any:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionCap:
    """Wraps aiohttp's protocol factory (its ``web.Server``): at most ``limit`` connections.

    Counted from the moment the factory makes a handler (asyncio makes many before connecting any
    in a burst of accepts), oldest first; the middleware tells which handlers are in the middle of a
    request (``busy``). A connection over the cap closes the oldest connected one that is not, so a
    client that opens many and never finishes its headers cannot keep others out; when every one is
    busy, the new one is answered 503."""

    def __init__(self, server: Any, limit: int, on_evict: Callable[[], None] = lambda: None) -> None:
        self.server = server
        self.limit = limit
        self.on_evict = on_evict
        self.live: dict[_Counted, None] = {}  # insertion order: oldest first
        self.busy: set[Any] = set()  # aiohttp RequestHandlers running a request
        self.refusal = refusal_bytes(503, "Service Unavailable", f"more than {limit} HTTP connections are busy "
                                     f"([http] max_connections); try again shortly", "too_many_connections")

    def __call__(self) -> Any:
        if len(self.live) >= self.limit:  # first forget any whose connection never came up (a failed accept)
            for stale in [c for c in self.live if not c.connected and time.monotonic() - c.made > STALE_S]:
                del self.live[stale]
        if len(self.live) >= self.limit:
            victim = next((c for c in self.live if c.inner.transport is not None and c.inner not in self.busy), None)
            if victim is None:
                return _Refuse(self.refusal)
            del self.live[victim]
            victim.inner.force_close()
            self.on_evict()
        counted = _Counted(self, self.server())
        self.live[counted] = None
        return counted
