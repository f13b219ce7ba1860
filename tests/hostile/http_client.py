"""Small real HTTP clients for the hostile HTTP tests: one request over ``http.client`` (any method,
body and headers, nothing added but what is given), a watcher that timestamps every ``WATCHDOG=1``
the daemon sends, and the daemon's open file descriptors from /proc."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from typing import Any, Optional

from conftest import Daemon

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
JSON = {"Content-Type": "application/json"}


def request(port: int, method: str, path: str, body: Any = None, headers: Optional[dict[str, str]] = None,
            timeout: float = 30.0) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request; ``body`` a dict (sent as JSON) or bytes. Returns (status, JSON body or {}, headers)."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")}
        return resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def chat(port: int, body: dict[str, Any], headers: Optional[dict[str, str]] = None,
         timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """POST /v1/chat/completions as JSON; (status, body)."""
    status, parsed, _ = request(port, "POST", "/v1/chat/completions", body, {**JSON, **(headers or {})}, timeout)
    return status, parsed


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class WatchdogWatch:
    """Reads the daemon's NOTIFY_SOCKET in a thread and keeps the arrival time of every WATCHDOG=1."""

    def __init__(self, daemon: Daemon) -> None:
        self.sock: socket.socket = daemon.notify.sock
        self.pings: list[float] = []
        self._arrived = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sock.settimeout(0.05)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            if "WATCHDOG=1" in msg.splitlines():
                with self._arrived:
                    self.pings.append(time.monotonic())
                    self._arrived.notify_all()

    def wait_pings(self, n: int, timeout: float = 10.0) -> None:
        """Block until ``n`` more pings than now have arrived."""
        with self._arrived:
            target = len(self.pings) + n
            if not self._arrived.wait_for(lambda: len(self.pings) >= target, timeout):
                raise TimeoutError(f"only {len(self.pings)} of {target} WATCHDOG=1 pings within {timeout} s")

    def max_gap(self, since: float, until: float) -> float:
        """Longest time (seconds) without a ping within [since, until], edges included."""
        times = [since] + [t for t in self.pings if since <= t <= until] + [until]
        return max(b - a for a, b in zip(times, times[1:]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
