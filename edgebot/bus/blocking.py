"""A blocking bus client on a plain Unix socket, for short-lived callers (edgebot-cli, doctor).

Same protocol and the same errors as the asyncio ``client`` (which the long-running bridges use),
without importing asyncio or the message classes: messages are ``(type, data)`` envelopes from
``framing``, so ``edgebot-cli`` starts within a few milliseconds of a bare interpreter.
"""

from __future__ import annotations

import os
import select
import socket
import time

import edgebot
from edgebot.bus.framing import MAX_LINE_BYTES, ProtocolError, decode_envelope, encode_envelope
from edgebot.bus.sockdir import UnsafeSocketDir, check_socket_dir

TYPE_CHECKING = False  # typing itself costs ~2 ms at edgebot-cli's start-up; the annotations are strings
if TYPE_CHECKING:
    from typing import Any, Optional

    Envelope = tuple[str, dict[str, Any]]


class BusUnavailable(Exception):
    """The daemon's socket cannot be reached; the message says how to start it."""


class Interrupted(Exception):
    """The wake-up file descriptor given to ``recv`` became readable (a signal arrived)."""


def unavailable(path: str, exc: BaseException) -> BusUnavailable:
    """The error for a failed connect to ``path``, saying how to fix it (shared with the asyncio client)."""
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        return BusUnavailable(
            f"edgebotd is not running on {path} ({exc.strerror or exc}). Start it with "
            f"`sudo systemctl start edgebot`, or `edgebotd --model MODEL.gguf` for a foreground daemon, "
            f"or point --socket / EDGEBOT_SOCKET at the right socket.")
    if isinstance(exc, PermissionError):
        return BusUnavailable(f"permission denied on {path}: add your user to the 'edgebot' group "
                              f"(sudo usermod -aG edgebot $USER, then log in again)")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return BusUnavailable(f"cannot connect to edgebotd at {path}: timed out")
    return BusUnavailable(f"cannot connect to edgebotd at {path}: {exc}")


class BlockingBusClient:
    """One connection to edgebotd; ``recv`` returns ``(type, data)`` or None when it closed."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        self.welcome: dict[str, Any] = {}
        self._buf = b""

    @classmethod
    def connect(cls, path: str, client: str, role: str = "client", timeout: float = 5.0) -> "BlockingBusClient":
        """Connect and exchange hello/welcome within ``timeout`` seconds. A socket in a directory
        another user controls is never connected to (:func:`sockdir.check_socket_dir`)."""
        try:
            check_socket_dir(path)
        except UnsafeSocketDir as exc:
            raise BusUnavailable(str(exc)) from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise unavailable(path, exc) from None
        self = cls(sock, path)
        deadline = time.monotonic() + timeout
        try:
            self.send("hello", client=client, version=edgebot.__version__, role=role)
            while True:
                msg = self.recv(timeout=max(0.0, deadline - time.monotonic()))
                if msg is None:
                    raise BusUnavailable(f"edgebotd at {path} closed the connection during hello")
                if msg[0] == "welcome":
                    self.welcome = msg[1]
                    return self
                if msg[0] == "error":
                    raise BusUnavailable(f"edgebotd refused the connection: {msg[1].get('message')}")
        except TimeoutError:
            self.close()
            raise BusUnavailable(f"edgebotd at {path} did not answer hello within {timeout:g} s") from None
        except BusUnavailable:
            self.close()
            raise

    def send(self, type_name: str, **data: Any) -> None:
        """Send one message (``None`` fields are left out). A closed connection is noticed by ``recv``."""
        try:
            self.sock.sendall(encode_envelope(type_name, data))
        except OSError:
            pass

    def recv(self, timeout: Optional[float] = None, wake_fd: Optional[int] = None) -> Optional[Envelope]:
        """The next message, or None when the daemon closed the connection.

        ``timeout`` (seconds, None = forever) raises ``TimeoutError``; a readable ``wake_fd`` raises
        ``Interrupted``. A line that is not a valid envelope is returned as an ``error`` message.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE_BYTES:
                self._buf = b""
                return "error", {"code": "line-too-long",
                                 "message": f"edgebotd sent a line over {MAX_LINE_BYTES} bytes; it was skipped"}
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock] + ([wake_fd] if wake_fd is not None else []), [], [], left)
            if wake_fd is not None and wake_fd in ready:
                os.read(wake_fd, 512)
                raise Interrupted()
            if not ready:
                raise TimeoutError()
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError, InterruptedError):
                continue
            except OSError:
                return None
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return decode_envelope(line)
        except ProtocolError as exc:
            return "error", {"code": exc.code, "message": f"from edgebotd: {exc.message}"}

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
