"""Robot actions: time from an ask to the ``T`` line on the wire, and to the spoken confirmation,
by the phrase fast path and by the grammar-constrained model path.

A real edgebotd on a script GGUF whose answer is a tool call (thinking, then
``{"action": "led", "args": {"state": "on"}}``), the real edgebot-serial, and a board on a pty
that answers every ``T`` with ``R`` at once. For reference, the same model answers the same text
without actions declared (no grammar): the model path's extra cost is the grammar and the offer
text in the prompt.

    .venv/bin/python bench/bench_actions.py [--asks 30]
"""

from __future__ import annotations

import argparse
import json
import os
import socket as socketlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from edgebot.testing.script_model import Script, write_script_model
from edgebot.testing.serial_board import PtyBoard

BIN = Path(sys.executable).parent
TOOL_SCRIPT = Script(think=("The user", " wants light."), close=("</th", "ink>\n\n"),
                     answer=('{"action":', ' "led",', ' "args":', ' {"state":', ' "on"}}'),
                     after_close=("I switched", " the light on."))
ACTIONS = """
[[actions]]
name = "led"
description = "turn the LED on or off"
port = "ttyBENCH"
parameters = { properties = { state = { enum = ["on", "off"] } } }
phrases = { "turn on the light" = { state = "on" } }
"""


class Conn:
    def __init__(self, path: str) -> None:
        self.sock = socketlib.socket(socketlib.AF_UNIX)
        self.sock.connect(path)
        self.buf = b""

    def send(self, type_: str, **data: Any) -> None:
        self.sock.sendall((json.dumps({"type": type_, "data": data}) + "\n").encode())

    def until(self, type_: str, ident: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" not in self.buf:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("edgebotd closed the connection")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            ev = json.loads(line)
            if ev["type"] == type_ and ev["data"].get("id") == ident:
                return ev


def start(tmp: Path, model: Path, config: str, port: Optional[Path]) -> list[subprocess.Popen[bytes]]:
    cfg = tmp / "edgebot.toml"
    cfg.write_text(config)
    sock = str(tmp / "bus.sock")
    env = {**os.environ, "EDGEBOT_BOARD": "generic-x86"}
    env.pop("NOTIFY_SOCKET", None)
    procs = [subprocess.Popen([str(BIN / "edgebotd"), "--config", str(cfg), "--model", str(model), "--socket", sock],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    ok = subprocess.run([str(BIN / "edgebot-cli"), "--socket", sock, "status", "--wait", "60"], env=env,
                        capture_output=True, timeout=90)
    if ok.returncode:
        raise SystemExit(f"edgebotd did not start: {ok.stderr.decode()}")
    if port is not None:
        scfg = tmp / "serial.toml"
        scfg.write_text(f'[[serial]]\nport = "{port}"\nhello_timeout_s = 10.0\n')
        procs.append(subprocess.Popen([str(BIN / "edgebot-serial"), "--config", str(scfg), "--socket", sock,
                                       "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    return procs


def measure(conn: Conn, board: Optional[PtyBoard], text: str, n: int) -> tuple[list[float], list[float]]:
    """(ask -> T on the wire, ask -> answer-end) in milliseconds, ``n`` times."""
    to_t, to_end = [], []
    for i in range(n):
        ident = f"b{time.monotonic_ns()}-{i}"
        t0 = time.monotonic()
        conn.send("ask", id=ident, text=text)
        if board is not None:
            line = board.expect("T ", 30)
            to_t.append((time.monotonic() - t0) * 1000)
            board.send(f"R {line.split()[1]} ok LED on")
        conn.until("answer-end", ident)
        to_end.append((time.monotonic() - t0) * 1000)
    return to_t, to_end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asks", type=int, default=30)
    args = parser.parse_args()
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model = write_script_model(tmp / "tool.gguf", TOOL_SCRIPT)
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        board = PtyBoard(tmp / "a" / "ttyBENCH")
        procs = start(tmp / "a", model, ACTIONS, board.port_link)
        plain_procs = start(tmp / "b", model, "", None)
        try:
            board.hello()
            conn = Conn(str(tmp / "a" / "bus.sock"))
            measure(conn, board, "turn on the light", 3)  # warm up
            fast_t, fast_end = measure(conn, board, "turn on the light", args.asks)
            measure(conn, board, "It is dark in here", 3)
            model_t, model_end = measure(conn, board, "It is dark in here", args.asks)
            plain = Conn(str(tmp / "b" / "bus.sock"))
            measure(plain, None, "It is dark in here", 3)
            _, plain_end = measure(plain, None, "It is dark in here", args.asks)
        finally:
            for p in procs + plain_procs:
                p.terminate()
                p.wait(10)
            board.close()
    print(f"asks per case: {args.asks}; medians in ms")
    print(f"fast path   ask -> T {med(fast_t):7.2f}   ask -> answer-end {med(fast_end):7.2f}")
    print(f"model path  ask -> T {med(model_t):7.2f}   ask -> answer-end {med(model_end):7.2f}")
    print(f"plain ask (same model, no actions, no grammar)   ask -> answer-end {med(plain_end):7.2f}")
    print(f"model path T / plain answer-end: {med(model_t) / med(plain_end):.2f}x; "
          f"fast path T / model path T: {med(fast_t) / med(model_t):.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
