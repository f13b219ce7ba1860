"""The bus hub inside edgebotd: Unix socket, framing, limits, peer checks, subscriptions.

What a message *means* is decided by a handler (``edgebot.dispatch``); the hub only moves
typed messages in and out, so it never waits on the engine or on a slow client.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from edgebot.bus import codec
from edgebot.bus.messages import AnswerDelta, Error, Hello, Message, ThinkDelta
from edgebot.bus.peercred import AllowList, PeerCred, read_peercred
from edgebot.bus.sockdir import check_socket_dir
from edgebot.config.schema import default

log = logging.getLogger(__name__)


@dataclass
class Limits:
    """Per-client limits: line length in bytes, outbox in events, rate in messages/s, the first
    message within ``first_message_s`` seconds, at most ``max_clients`` connections and
    ``max_clients_per_uid`` of one uid (root and edgebotd's own user exempt)."""

    max_line_bytes: int = default("bus.max_line_bytes")
    queue_max: int = default("bus.client_queue_max")
    rate: float = default("bus.client_rate")
    burst: int = default("bus.client_burst")
    first_message_s: float = default("bus.first_message_s")
    max_clients: int = default("bus.max_clients")
    max_clients_per_uid: int = default("bus.max_clients_per_uid")  # 0: no limit

MERGE_LIMIT = 64 * 1024  # characters: a merged delta never grows past this, so lines stay far below the limit


class Connection:
    """One bus client. ``send`` never blocks: events wait in the outbox for the writer task."""

    _ids = itertools.count(1)

    def __init__(self, hub: "Hub", reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: PeerCred) -> None:
        self.id = next(self._ids)
        self.hub = hub
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.name = f"client-{self.id}"
        self.role = ""  # from hello; "" until the client said hello
        self.greeted = False
        self.subscriptions: set[str] = set()
        self.inflight: set[str] = set()
        self.closed = False
        self._outbox: collections.deque[Message] = collections.deque()
        self._wake = asyncio.Event()
        self._tokens = float(hub.limits.burst)
        self._last = time.monotonic()

    def wants(self, type_name: str) -> bool:
        return type_name in self.subscriptions or "*" in self.subscriptions

    def send(self, msg: Message) -> None:
        """Queue an event; consecutive deltas of one answer merge while the client is behind."""
        if self.closed:
            return
        last = self._outbox[-1] if self._outbox else None
        if isinstance(msg, (AnswerDelta, ThinkDelta)) and type(last) is type(msg) and last.id == msg.id \
                and len(last.text) < MERGE_LIMIT:  # type: ignore[union-attr]
            last.text += msg.text  # type: ignore[union-attr]
        else:
            if len(self._outbox) >= self.hub.limits.queue_max:
                log.warning("%s: %d undelivered events, disconnecting a client that does not read",
                            self.name, len(self._outbox))
                self.close()
                return
            # copy deltas so a later merge never changes a message shared with another client
            if isinstance(msg, (AnswerDelta, ThinkDelta)):
                msg = type(msg)(id=msg.id, text=msg.text)
            self._outbox.append(msg)
        self._wake.set()

    def take_token(self) -> bool:
        """Rate limit: False when the client sent more than its burst above its rate."""
        now = time.monotonic()
        limits = self.hub.limits
        self._tokens = min(float(limits.burst), self._tokens + (now - self._last) * limits.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    async def write_loop(self) -> None:
        """Write what is queued. Any failure closes this connection, loudly when it is not the peer
        going away: a writer that died silently would leave the client waiting forever."""
        try:
            while not self.closed:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    batch = b"".join(self._encode(m) for m in self._drain())
                    self.writer.write(batch)
                    await self.writer.drain()
        except (ConnectionError, OSError):
            self.close()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - never a silent, wedged connection
            log.exception("%s: the writer failed; closing the connection", self.name)
            self.close()

    def _encode(self, msg: Message) -> bytes:
        try:
            return codec.encode(msg)
        except (ValueError, TypeError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
            log.error("%s: cannot send %s (%s); closing the connection (a bug in edgebotd: please report it)",
                      self.name, msg.TYPE, exc)
            raise

    def _drain(self) -> list[Message]:
        items = list(self._outbox)
        self._outbox.clear()
        return items

    async def flush(self, timeout: float = 1.0) -> None:
        """Give the writer a moment to deliver what is queued (used before closing)."""
        deadline = time.monotonic() + timeout
        while self._outbox and not self.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake.set()
            self.writer.close()


Handler = Callable[[Connection, Message], Awaitable[None]]


class Hub:
    """Accepts clients on a Unix socket and feeds their messages to ``handler``."""

    def __init__(self, handler: Handler, limits: Limits, allowed_users: list[str], allowed_groups: list[str],
                 on_disconnect: Callable[[Connection], None] = lambda c: None) -> None:
        self.handler = handler
        self.limits = limits
        self.allow = AllowList(allowed_users, allowed_groups)
        self.on_disconnect = on_disconnect
        self.connections: set[Connection] = set()
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.path: Optional[str] = None
        self._owns_path = False  # True when we bound the socket (never unlink one systemd passed us)
        self._inode = 0  # st_ino of the socket file we bound
        self._guard: Optional[asyncio.Task[None]] = None
        self._old_servers: list[asyncio.AbstractServer] = []
        self.taps: list[Callable[[Message], None]] = []  # in-process observers of every published message

    async def start(self, path: str, inherited: Optional[socket.socket] = None) -> None:
        """Serve on ``inherited`` (socket activation) or bind ``path`` (mode 0660)."""
        if inherited is not None:
            self._server = await asyncio.start_unix_server(self._serve, sock=inherited,
                                                           limit=self.limits.max_line_bytes + 1)
            self.path = inherited.getsockname() or path
            log.info("bus on inherited socket %s", self.path)
            return
        await self._bind(path)
        log.info("bus on %s", path)
        self._guard = asyncio.create_task(self._guard_path(path))

    async def _bind(self, path: str) -> None:
        """Bind ``path`` with mode 0660 (from the umask at bind time, never a chmod of the path) and
        give it group ``edgebot`` with ``lchown``, which never follows a symlink: in a directory
        another user could write, the path may be swapped for a link between bind and chown."""
        prepare_socket_path(path)
        old_umask = os.umask(0o117)
        try:
            server = await asyncio.start_unix_server(self._serve, path=path, limit=self.limits.max_line_bytes + 1)
        finally:
            os.umask(old_umask)
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            server.close()
            raise OSError(f"{path} was replaced right after it was bound (now not our socket); "
                          f"check who else can write {os.path.dirname(path)}")
        self._server = server
        _chgrp_edgebot(path)
        self._inode = st.st_ino
        self.path = path
        self._owns_path = True

    async def _guard_path(self, path: str, every_s: float = 2.0) -> None:
        """Every ``every_s`` seconds: if our socket file was deleted, bind it again (connected clients
        are unaffected either way); if another socket now sits at the path, leave it alone and never
        unlink it at exit."""
        while self._owns_path:
            await asyncio.sleep(every_s)
            try:
                inode = os.stat(path).st_ino
            except FileNotFoundError:
                log.warning("the bus socket %s was deleted; binding it again", path)
                if self._server is not None:
                    self._old_servers.append(self._server)
                try:
                    await self._bind(path)
                except OSError as exc:
                    log.error("cannot bind the bus socket %s again: %s", path, exc)
                continue
            except OSError:
                continue
            if inode != self._inode:
                log.warning("another socket replaced %s; this edgebotd no longer serves that path", path)
                self._owns_path = False

    def publish(self, msg: Message, skip: Optional[Connection] = None) -> int:
        """Send ``msg`` to every subscriber of its type (except ``skip``); returns how many."""
        for tap in list(self.taps):
            try:
                tap(msg)
            except Exception:  # noqa: BLE001 - an observer must never break delivery to clients
                log.exception("a bus tap failed on %s", msg.TYPE)
        n = 0
        for conn in list(self.connections):
            if conn is not skip and conn.wants(msg.TYPE):
                conn.send(msg)
                n += 1
        return n

    async def close(self) -> None:
        """Stop accepting, deliver what is queued (0.5 s at most), close every client."""
        if self._guard is not None:
            self._guard.cancel()
        for server in self._old_servers:
            server.close()
        if self._server is not None:
            self._server.close()
        conns = list(self.connections)
        await asyncio.gather(*(c.flush(0.5) for c in conns))
        for conn in conns:
            conn.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()
        if self._owns_path and self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        peer = read_peercred(writer.get_extra_info("socket"))
        conn = Connection(self, reader, writer, peer)
        writer_task = asyncio.create_task(conn.write_loop())
        if not self.allow.allows(peer):
            log.warning("refused bus client uid=%d gid=%d pid=%d", peer.uid, peer.gid, peer.pid)
            conn.send(Error("forbidden", f"uid {peer.uid} is not allowed on this bus; add the user to the "
                                         f"'edgebot' group or to [bus] allowed_users"))
            await conn.flush()
            conn.close()
            await writer_task
            return
        refusal = self._admit(peer)
        if refusal:
            log.warning("refused bus client uid=%d pid=%d: %s", peer.uid, peer.pid, refusal)
            conn.send(Error("busy", refusal))
            await conn.flush()
            conn.close()
            await writer_task
            return
        self.connections.add(conn)
        try:
            await self._read_loop(conn)
        finally:
            self.connections.discard(conn)
            await conn.flush(0.2)
            conn.close()
            self.on_disconnect(conn)
            writer_task.cancel()

    def _admit(self, peer: PeerCred) -> str:
        """Room for one more client of ``peer``? "" when yes, else why not. At most
        ``max_clients_per_uid`` per uid (root and edgebotd's own user, the bridges', are exempt); when
        the hub is full the oldest connection that never said hello gives way."""
        per_uid = self.limits.max_clients_per_uid
        if per_uid and peer.uid not in (0, os.getuid()):
            mine = sum(1 for c in self.connections if c.peer.uid == peer.uid)
            if mine >= per_uid:
                return (f"uid {peer.uid} already has {mine} connections to edgebotd ([bus] max_clients_per_uid); "
                        f"close some")
        if len(self.connections) >= self.limits.max_clients:
            silent = min((c for c in self.connections if not c.greeted), key=lambda c: c.id, default=None)
            if silent is None:
                return f"edgebotd already serves {len(self.connections)} clients ([bus] max_clients)"
            log.warning("%s never said hello; closing it to make room for a new client", silent.name)
            silent.send(Error("busy", "closing this connection: the bus is full and it never said hello"))
            self.connections.discard(silent)
            asyncio.get_running_loop().call_later(0.2, silent.close)
        return ""

    async def _read_loop(self, conn: Connection) -> None:
        first = True
        while not conn.closed:
            try:
                if first:
                    line = await asyncio.wait_for(conn.reader.readline(), self.limits.first_message_s)
                    first = False
                else:
                    line = await conn.reader.readline()
            except asyncio.TimeoutError:
                conn.send(Error("timeout", f"no message within {self.limits.first_message_s:g} s of connecting; "
                                           f"closing the connection (send hello first)"))
                return
            except (asyncio.LimitOverrunError, ValueError):
                conn.send(Error("line-too-long", f"a line exceeded {self.limits.max_line_bytes} bytes; "
                                                 f"closing the connection"))
                return
            except (ConnectionError, OSError):
                return
            if not line:
                return
            if not conn.take_token():
                conn.send(Error("flood", f"more than {self.limits.rate:g} messages/s; closing the connection"))
                return
            if not line.strip():
                continue
            try:
                msg = codec.decode(line)
            except codec.ProtocolError as exc:
                conn.send(Error(exc.code, exc.message, exc.msg_id))
                continue
            if isinstance(msg, Hello):
                conn.greeted, conn.role = True, msg.role
            try:
                await self.handler(conn, msg)
            except Exception as exc:  # noqa: BLE001 - a handler bug must not take the bus down
                log.exception("handling %s from %s", msg.TYPE, conn.name)
                conn.send(Error("internal", f"internal error handling {msg.TYPE}: {exc}"))


def prepare_socket_path(path: str) -> None:
    """Create the socket's directory and check that only we (or root) control it
    (:func:`sockdir.check_socket_dir`); remove a stale socket, refuse a live one or a non-socket."""
    directory = os.path.dirname(path) or "."
    check_socket_dir(path)  # before creating anything inside a directory someone else controls
    os.makedirs(directory, mode=0o755, exist_ok=True)
    check_socket_dir(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; remove it or use another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:  # refused, timed out, not a socket: nobody is serving it
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"another edgebotd is already serving {path}; stop it first (systemctl stop edgebot) "
                  f"or use another --socket")


def _chgrp_edgebot(path: str) -> None:
    try:
        import grp

        gid = grp.getgrnam("edgebot").gr_gid
        os.chown(path, -1, gid, follow_symlinks=False)  # lchown: a link swapped in is changed, not its target
    except (KeyError, PermissionError, OSError):
        pass

