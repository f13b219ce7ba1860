"""One open serial port on the asyncio loop: pyserial opens and configures it (baud, raw mode,
exclusive lock), then the loop reads and writes its non-blocking file descriptor directly.

A vanished device (USB unplug, a closed pty) shows up as end-of-file or ``EIO`` on read or write;
the link then calls ``on_lost`` once and stops touching the descriptor.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import termios
from typing import Callable, Optional

import serial

log = logging.getLogger(__name__)

MAX_BACKLOG_BYTES = 512
"""Unwritten output beyond which droppable lines (ERR replies to noise) are dropped, bytes."""


class PortUnavailable(Exception):
    """The port cannot be opened now. ``state`` is ``waiting`` (absent, no permission) or ``busy``."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state
        self.message = message


def open_serial(path: str, baud: int) -> serial.Serial:
    """Open ``path`` exclusively (flock + TIOCEXCL) at ``baud`` bits/s, 8N1, raw, non-blocking."""
    ser = serial.Serial()
    ser.port = path
    ser.baudrate = baud
    ser.timeout = 0
    ser.exclusive = True
    try:
        ser.open()
    except serial.SerialException as exc:
        code = getattr(exc, "errno", None)
        text = str(exc)
        if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) or "exclusively lock" in text:
            raise PortUnavailable("busy", f"{path} is in use by another process") from None
        if code == errno.EACCES:
            raise PortUnavailable("waiting", f"permission denied on {path}: add the user to the 'dialout' "
                                  f"group") from None
        if code in (errno.ENOENT, errno.ENXIO, errno.ENODEV) or not os.path.exists(path):
            raise PortUnavailable("waiting", f"{path} is not there (board unplugged?)") from None
        raise PortUnavailable("waiting", f"cannot open {path}: {text}") from None
    except (OSError, ValueError) as exc:
        raise PortUnavailable("waiting", f"cannot open {path}: {exc}") from None
    try:
        fcntl.ioctl(ser.fd, termios.TIOCEXCL)  # later opens fail with EBUSY (except for root)
    except OSError:
        pass
    try:
        ser.reset_input_buffer()  # bytes from before this open belong to nobody
    except (OSError, serial.SerialException):
        pass
    return ser


class SerialLink:
    """Non-blocking I/O on an open port. ``on_data(bytes)`` for input; ``on_lost(reason)`` once."""

    def __init__(self, ser: serial.Serial, on_data: Callable[[bytes], None], on_lost: Callable[[str], None]) -> None:
        self.ser = ser
        self.fd: Optional[int] = ser.fd
        self.on_data = on_data
        self.on_lost = on_lost
        self._out = bytearray()
        self._writing = False
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(ser.fd, self._readable)

    @property
    def backlog(self) -> int:
        """Bytes accepted by :meth:`write` and not yet handed to the kernel."""
        return len(self._out)

    def write(self, data: bytes, droppable: bool = False) -> bool:
        """Queue ``data``; False when the port is gone or (``droppable``) the backlog is too long."""
        if self.fd is None or (droppable and len(self._out) > MAX_BACKLOG_BYTES):
            return False
        self._out += data
        self._flush()
        return True

    def _flush(self) -> None:
        while self._out and self.fd is not None:
            try:
                n = os.write(self.fd, self._out)
            except BlockingIOError:
                break
            except OSError as exc:
                self._lose(f"write failed: {exc.strerror or exc}")
                return
            del self._out[:n]
        want = bool(self._out) and self.fd is not None
        if want and not self._writing:
            self.loop.add_writer(self.fd, self._flush)  # type: ignore[arg-type]
        elif not want and self._writing and self.fd is not None:
            self.loop.remove_writer(self.fd)
        self._writing = want

    def _readable(self) -> None:
        if self.fd is None:
            return
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(f"read failed: {exc.strerror or exc}")
            return
        if not data:
            self._lose("end of file (device disconnected)")
            return
        self.on_data(data)

    def _lose(self, reason: str) -> None:
        if self.fd is None:
            return
        self._detach()
        self.on_lost(reason)

    def _detach(self) -> None:
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            if self._writing:
                self.loop.remove_writer(self.fd)
            self._writing = False
            self.fd = None

    def close(self) -> None:
        """Stop I/O and close the port (idempotent)."""
        self._detach()
        try:
            self.ser.close()
        except (OSError, serial.SerialException):
            pass
