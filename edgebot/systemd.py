"""systemd integration: sd_notify (READY/STATUS/WATCHDOG/STOPPING), socket activation, journald.

The notify protocol is spoken directly (a non-blocking datagram, see ``notify``); systemd-python,
when installed, provides the journald log handler.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; False when not under systemd.

    Never blocks: the watchdog ping is sent from the event loop, and a datagram socket whose
    reader has fallen behind would otherwise stall the loop (libsystemd's sd_notify blocks there,
    which is why this is done here rather than through systemd-python). A ping that cannot be
    queued is dropped; the next one follows within half the watchdog period.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.sendto(state.encode(), address)
        return True
    except BlockingIOError:
        log.debug("sd_notify queue full, dropped %r", state.split("\n", 1)[0])
        return False
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", path, exc)
        return False


def watchdog_interval() -> Optional[float]:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


def listen_sockets() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (``LISTEN_FDS``/``LISTEN_PID``), then unset them."""
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    if not pid or not count or not pid.isdigit() or int(pid) != os.getpid():
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count) if count.isdigit() else 0):
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise OSError(f"LISTEN_FDS passed fd {fd}, which is not an open socket ({exc.strerror or exc}); "
                          f"check the .socket unit") from None
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise OSError(f"LISTEN_FDS passed fd {fd}, which is not a Unix stream socket; "
                          f"edgebot.socket must use ListenStream=<path>")
        sock.setblocking(False)
        socks.append(sock)
    return socks


def setup_logging(level: str) -> None:
    """Log to journald when started by systemd (and systemd-python is there), else to stderr."""
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]

            handler = JournalHandler(SYSLOG_IDENTIFIER="edgebotd")
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        except ImportError:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
