"""systemd integration: sd_notify (READY/STATUS/WATCHDOG/STOPPING), socket activation, journald.

The notify protocol is spoken directly (a non-blocking datagram, see ``notify``); systemd-python,
when installed, provides the journald log handler.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
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


# syslog priorities for journald's "<N>" line prefix (sd-daemon.h: SD_ERR "<3>", SD_WARNING "<4>", ...)
SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def stderr_is_journal() -> bool:
    """True when stderr is the journald stream systemd connected (``$JOURNAL_STREAM`` is its
    ``device:inode``), so a ``<N>`` prefix on each line sets the entry's priority."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalPrefixFormatter(logging.Formatter):
    """Prefixes every line of a record with its syslog priority (``<3>`` for ERROR, ``<4>`` WARNING,
    ``<6>`` INFO, ``<7>`` DEBUG): journald's stdout stream reads one entry per line, so a traceback's
    continuation lines keep the record's priority too. Needs no systemd-python."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = max((lvl for lvl in SYSLOG_PRIORITY if lvl <= record.levelno), default=logging.DEBUG)
        prefix = f"<{SYSLOG_PRIORITY[level]}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def setup_logging(level: str) -> None:
    """Log to journald when started by systemd, else to stderr with a timestamp.

    Under systemd: systemd-python's JournalHandler when it is installed; otherwise stderr with a
    ``<N>`` priority prefix per line when stderr is the journal stream (so ``journalctl -p err``
    finds errors), or plain lines (systemd adds the time) when stderr goes elsewhere.
    """
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]

            handler = JournalHandler(SYSLOG_IDENTIFIER=os.path.basename(sys.argv[0]) or "edgebot")
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        except ImportError:
            handler = logging.StreamHandler()
            if stderr_is_journal():
                handler.setFormatter(JournalPrefixFormatter("%(levelname)s %(name)s: %(message)s"))
            else:
                handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
