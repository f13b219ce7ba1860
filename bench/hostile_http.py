"""Figures for issue 12's HTTP items (by hand, not in CI): what each attack costs edgebotd now.

    .venv/bin/python bench/hostile_http.py [--half-open 1100] [--slow-bodies 300]

Starts a real edgebotd on the test GGUF with the HTTP API on loopback (default limits but [http] max_request_bodies = 32, so all 28 heavy requests are read at once)
and measures: each schema bomb's answer time; 3,000 empty turns and the voice ask behind them; the
most messages allowed; a bus ask of ``<think>`` x 149,000; the longest gap between WATCHDOG=1 pings
while 28 heavy requests are validated at once; ``--half-open`` connections that never finish their
headers (fds, the bus and a real request meanwhile, when they are closed); ``--slow-bodies``
authenticated 1 MB bodies that stall halfway (resident memory). The figures go into
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "hostile")]

from conftest import Daemon  # noqa: E402 - the tests' real-daemon harness
from edgebot.testing.script_model import write_script_model  # noqa: E402
from http_client import QUESTION, WatchdogWatch, chat, open_fds  # noqa: E402
from test_http_api import free_port  # noqa: E402
from test_schema_bombs import BOMBS, schema_request  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - start


def voice_wait(d: Daemon, after_http: bool = False) -> float:
    """Seconds a voice ask takes to its answer-end; with ``after_http``, sent once an HTTP job runs
    (or 10 s have passed)."""
    bus = d.connect()
    deadline = time.monotonic() + 10
    while after_http and time.monotonic() < deadline:
        bus.send("status")
        if str(bus.expect("status-report")["data"]["queue"]["running"]).startswith("chatcmpl"):
            break
        time.sleep(0.01)  # pacing the poll (the bus's flood limit)
    start = time.monotonic()
    _, end = bus.answer(f"voice-{start}", "What is 2+2?", timeout=600, source="voice")
    bus.close()
    assert end["type"] == "answer-end" and end["data"]["reason"] == "stop", end
    return time.monotonic() - start


def behind(d: Daemon, port: int, body: dict[str, Any], auth: dict[str, str]) -> tuple[int, float, float]:
    """(status, seconds) of an HTTP request, and how long a voice ask sent once it runs (or 10 s later) took."""
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(r=timed(chat, port, body, auth, 600)))
    t.start()
    v = voice_wait(d, after_http=True)
    t.join()
    (status, _), took = out["r"]
    return status, took, v


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--half-open", type=int, default=1100)
    p.add_argument("--slow-bodies", type=int, default=300)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hostile-http-"))
    model = write_script_model(tmp / "script.gguf")
    port = free_port()
    (tmp / "d").mkdir()
    d = Daemon(tmp / "d", model, f'[http]\nenabled = true\nport = {port}\ntoken = "t"\nmax_request_bodies = 32\n', env={"WATCHDOG_USEC": "200000"})
    auth = {"Authorization": "Bearer t"}
    try:
        answers = [timed(chat, port, schema_request(s), auth) for s, _ in BOMBS.values()]
        print(f"schema bombs ({len(BOMBS)}): statuses {sorted({a[0][0] for a in answers})}, slowest "
              f"{max(a[1] for a in answers) * 1000:.0f} ms; daemon alive: {d.proc.poll() is None}")
        turns = [{"role": r, "content": ""} for _ in range(3000) for r in ("user", "assistant")]
        status, took, v = behind(d, port, {"model": "m", "messages": turns + QUESTION}, auth)
        print(f"3,000 empty turns: {status} in {took * 1000:.0f} ms; a voice ask sent with it answered in {v:.2f} s")
        most = [{"role": r, "content": "" if r == "assistant" else "hello there " * 42}
                for _ in range(127) for r in ("user", "assistant")]
        status, took, v = behind(d, port, {"model": "m", "messages": most + QUESTION}, auth)
        chars = sum(len(m["content"]) for m in most)
        print(f"255 messages, {chars} characters (the most allowed): {status} in {took:.2f} s; voice waited {v:.2f} s")
        bus = d.connect()
        (_, end), took = timed(lambda: bus.answer("t", "<think>" * 149_000, timeout=600))
        bus.close()
        print(f"bus ask of <think> x 149,000: {end['data'].get('code') or end['data'].get('reason')} in {took:.2f} s")
        watch = WatchdogWatch(d)
        watch.wait_pings(3)
        wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(900)}}
        largest = {"type": "object", "properties": {f"o{j}": {"type": "object", "properties": {
            f"p{i}": {"type": "integer"} for i in range(63)}} for j in range(4)}}
        bodies = [schema_request(wide)] * 12 + [schema_request(largest)] * 6 + [
            {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "<think>" * 9300},
                                                          *QUESTION]}] * 10
        start = time.monotonic()
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda b=b: statuses.append(chat(port, b, auth, 600)[0])) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        end_t = time.monotonic()
        watch.wait_pings(2)
        print(f"{len(bodies)} heavy requests at once: statuses {dict((s, statuses.count(s)) for s in set(statuses))}, "
              f"all answered in {end_t - start:.2f} s; longest gap between "
              f"WATCHDOG=1 pings {watch.max_gap(start, end_t) * 1000:.0f} ms (period 100 ms)")
        watch.stop()
        base = open_fds(d.proc.pid)
        socks = []
        for _ in range(args.half_open):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(s)
        time.sleep(1.0)  # let the daemon accept what it will (a measurement, not a test)
        fds = open_fds(d.proc.pid)
        cli = d.cli("status")
        (status, _), took = timed(chat, port, {"model": "m", "messages": QUESTION}, auth)
        start = time.monotonic()
        for s in socks:
            s.settimeout(60)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
        closed = time.monotonic() - start
        for s in socks:
            s.close()
        print(f"{args.half_open} half-open connections: daemon fds {base} -> {fds}; edgebot-cli status exit "
              f"{cli.returncode}; a real request {status} in {took:.2f} s; the last half-open one closed "
              f"{closed:.1f} s later ([http] header_timeout_s = 10)")
        rss0 = rss_kib(d.proc.pid)
        slow = []
        refused = 0
        for _ in range(args.slow_bodies):
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(2)
            slow.append(s)
            try:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n" + b" " * 500_000)
            except OSError:  # refused (503) or not read: what the daemon does with the rest
                refused += 1
        time.sleep(2.0)
        rss1 = rss_kib(d.proc.pid)
        for s in slow:
            s.close()
        print(f"{args.slow_bodies} stalled 1 MB bodies (500 KB sent each, {refused} not taken whole): RSS {rss0} -> "
              f"{rss1} KiB (+{(rss1 - rss0) / 1024:.1f} MiB)")
    finally:
        d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
