"""A scripted microcontroller on a real pty, for the serial bridge's tests and bench.

The bridge opens the pty's slave end through ``port_link``, a symlink standing in for a
``/dev/serial/by-id/...`` path; the board talks on the master end in raw mode. ``unplug`` closes
the pty (the bridge then reads end-of-file, as on a USB unplug) and ``plug`` makes a new pty and
points the symlink at it (a replug, possibly as a different /dev/pts number).
Every line read from the host is checked: terminated, at most 128 bytes, correct ``*HH``.
"""

from __future__ import annotations

import os
import select
import time
import tty
from pathlib import Path
from typing import Optional

from edgebot.bridges.serial.chunking import unescape
from edgebot.bridges.serial.protocol import MAX_LINE_BYTES, checksum


class BoardError(AssertionError):
    """The host sent something the protocol does not allow, or the line went away."""


class PtyBoard:
    """The microcontroller's side of a serial line (blocking, with timeouts in seconds)."""

    def __init__(self, port_link: Path) -> None:
        self.port_link = Path(port_link)
        self.master: Optional[int] = None
        self.slave: Optional[int] = None
        self.buf = bytearray()
        self.received: list[bytes] = []  # every host line, without its terminator
        self.plug()

    def plug(self) -> None:
        """A new pty whose slave path the symlink now names (atomically repointed)."""
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        tmp = self.port_link.with_name(self.port_link.name + ".new")
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(os.ttyname(self.slave), tmp)
        os.replace(tmp, self.port_link)
        self.buf.clear()

    def unplug(self) -> None:
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None

    close = unplug

    # -- sending ----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.master is not None, "board is unplugged"
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def send(self, text: str, with_checksum: bool = True, end: bytes = b"\n") -> None:
        """Send one line; ``*HH`` is added unless ``with_checksum`` is False."""
        body = text.encode()
        self.write(body + (b"*%02X" % checksum(body) if with_checksum else b"") + end)

    # -- receiving --------------------------------------------------------------------------------

    def read_line(self, timeout: float) -> Optional[bytes]:
        """The next host line (checked, without ``*HH\\n``), or None when nothing came in ``timeout``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.master is None:
                return None
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                return None
            try:
                data = os.read(self.master, 4096)
            except OSError as exc:
                raise BoardError(f"line gone: {exc}") from None
            self.buf += data
        raw, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        self.received.append(raw)
        if len(raw) > MAX_LINE_BYTES or len(raw) < 4 or raw[-3:-2] != b"*":
            raise BoardError(f"malformed host line {raw!r}")
        body = raw[:-3]
        if int(raw[-2:], 16) != checksum(body) or raw[-2:] != raw[-2:].upper():
            raise BoardError(f"bad checksum from host: {raw!r}")
        return body

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """Skip host lines until one starting with ``prefix``; returns it (without ``*HH``)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise TimeoutError(f"no {prefix!r} from the host within {timeout} s; got {self.received[-5:]}")
            if line.startswith(prefix.encode()):
                return line.decode()

    def hello(self, firmware: str = "testboard-1.0", timeout: float = 30.0, rx: Optional[int] = None) -> str:
        """Say HELLO (as after a reset) and wait for the host's."""
        self.send(f"HELLO 0 {firmware}" + (f" rx={rx}" if rx else ""))
        return self.expect("HELLO 0 edgebot", timeout)

    def collect(self, ident: int, timeout: float = 60.0, ack: bool = True) -> tuple[str, str, list[int]]:
        """Read ``A <ident>`` chunks (acknowledging each at once) until ``E <ident>``.

        Returns (answer text, end reason, seqs in the order received).
        """
        parts: dict[int, bytes] = {}
        seqs: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise TimeoutError(f"no E {ident} within {timeout} s; got {self.received[-5:]}")
            if line.startswith(b"A %d " % ident):
                _, _, seq_s, text = (line.split(b" ", 3) + [b""])[:4]
                seq = int(seq_s)
                seqs.append(seq)
                parts.setdefault(seq, text)
                if ack:
                    self.send(f"K {ident} {seq}")
            elif line.startswith(b"E %d " % ident):
                answer = unescape(b"".join(parts[k] for k in sorted(parts)))
                return answer, line.split(b" ")[2].decode(), seqs
            elif line.startswith(b"ERR %d " % ident):
                raise BoardError(f"question {ident} refused: {line!r}")

    def ask(self, ident: int, question: str, timeout: float = 60.0) -> tuple[str, str]:
        """``Q`` and the whole answer: (text, end reason)."""
        self.send(f"Q {ident} {question}")
        text, reason, _ = self.collect(ident, timeout)
        return text, reason
