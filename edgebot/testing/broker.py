"""A real mosquitto broker on a free loopback port, for the MQTT tests and bench (Debian: mosquitto).

Persistence is on (a database in the broker's own directory, written when it stops), so a restart
keeps persistent sessions, their subscriptions and queued QoS 1 messages, as a production broker
configured for it does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")


def mosquitto_binary() -> Optional[str]:
    """The mosquitto executable, or None when the package is not installed."""
    for name in MOSQUITTO_PATHS:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """``start()``/``stop()``/``restart()`` one broker process; ``url`` is ``mqtt://127.0.0.1:PORT``."""

    def __init__(self, workdir: Path, port: Optional[int] = None, tcp_nodelay: bool = True) -> None:
        """``tcp_nodelay``: mosquitto's ``set_tcp_nodelay`` (Debian's default is false)."""
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
        self.binary = binary
        self.dir = Path(workdir)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             f"set_tcp_nodelay {'true' if tcp_nodelay else 'false'}\n"
                             f"persistence true\n"
                             f"persistence_location {self.dir}/\nautosave_interval 0\n"
                             f"log_dest file {self.dir}/mosquitto.log\nlog_type all\n"
                             # as root mosquitto would switch to the user mosquitto, who cannot write here
                             + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start and wait (up to ``timeout_s`` seconds) until the port accepts connections."""
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}; see {self.dir}/mosquitto.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout_s} s") from None
                time.sleep(0.02)  # polling a port that is about to open: there is no event to wait on

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (mosquitto writes its persistence database) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""
