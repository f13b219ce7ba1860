"""edgebot-serial: latency from a token leaving the engine to its last byte on the wire, and
answer throughput against the line rate, over a pty paced like a real UART.

A pty moves bytes instantly, so the board here models the wire: bytes the bridge writes arrive
one after another at ``baud / 10`` bytes per second (8N1) after the previous byte, and the board
handles a line only when its last byte would have arrived; its ``K`` takes its own wire time back.
The board acknowledges every chunk at once. The time a token leaves the engine is when a bus
subscriber sees its ``answer-delta`` (same process clock as the board).

    .venv/bin/python bench/bench_serial.py [--questions 8] [--shape-model PATH] [--baud 115200]

Regimes:
- latency on the script model (~300 tokens/s here, faster than a board, slower than the line) and,
  when the same-shape 1.5B model is cached (``bench/shape_model.py``), at its real per-token cost;
- throughput with a script model whose pieces are long, so text comes faster than the line
  carries it: text bytes delivered per second / line rate, windows 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket as socketlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgebot.bridges.serial.chunking import escape_units
from edgebot.bridges.serial.protocol import checksum
from edgebot.testing.script_model import DEFAULT_SCRIPT, Script, write_script_model
from edgebot.testing.serial_board import PtyBoard

BIN = Path(sys.executable).parent
SHAPE_MODEL = Path(os.environ.get("EDGEBOT_BENCH_CACHE", Path.home() / ".cache" / "edgebot" / "bench")) \
    / "r1-distill-qwen-1.5b-shape-Q4_K_M.gguf"
LONG_SCRIPT = Script(
    think=("Okay", " thinking."),
    close=("</th", "ink>\n\n"),
    answer=tuple(f" Part {w} of a long answer." for w in  # <= 32 bytes a piece (llama-cpp-python's
                 ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")),  # piece buffer)
    loop=True,
)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


class Bus:
    """A bus subscriber recording (monotonic time, text) of every answer-delta, per id."""

    def __init__(self, path: str) -> None:
        self.sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.sendall(b'{"type":"hello","data":{"client":"bench-serial"}}\n'
                          b'{"type":"subscribe","data":{"types":["answer-delta","answer-end"]}}\n')
        self.deltas: dict[str, list[tuple[float, str]]] = {}
        self.ended: dict[str, str] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            data = self.sock.recv(65536)
            now = time.monotonic()
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            with self.cond:
                for line in lines:
                    ev = json.loads(line)
                    d = ev["data"]
                    if ev["type"] == "answer-delta":
                        self.deltas.setdefault(d["id"], []).append((now, d["text"]))
                    elif ev["type"] == "answer-end":
                        self.ended[d["id"]] = d["reason"]
                self.cond.notify_all()


class PacedBoard:
    """The board's end of the pty behind a wire of ``baud`` bits/s (10 bits a byte)."""

    def __init__(self, port: Path, baud: int) -> None:
        self.pty = PtyBoard(port)
        self.byte_s = 10.0 / baud
        self.wire_free = 0.0  # when the host->board wire finishes its last byte
        self.buf = bytearray()

    def send_paced(self, text: str) -> None:
        body = text.encode()
        line = body + b"*%02X\n" % checksum(body)
        time.sleep(len(line) * self.byte_s)  # its last byte reaches the host after its wire time
        self.pty.write(line)

    def lines(self, until: float):
        """Yield (line without *HH, wire start of its first byte, wire time of its last byte)."""
        master = self.pty.master
        starts: list[float] = []
        while time.monotonic() < until:
            ready, _, _ = select.select([master], [], [], max(0.0, until - time.monotonic()))
            if not ready:
                continue
            data = os.read(master, 4096)
            now = time.monotonic()
            for b in data:
                start = max(self.wire_free, now)
                self.wire_free = start + self.byte_s
                self.buf.append(b)
                starts.append(start)
                if b == 0x0A:
                    line = bytes(self.buf[:-1])
                    first = starts[0]
                    self.buf.clear()
                    starts.clear()
                    done = self.wire_free
                    time.sleep(max(0.0, done - time.monotonic()))  # the line is there only now
                    yield line[:-3], first, done


def start_daemon(tmp: Path, model: Path, config: str) -> tuple[subprocess.Popen, str]:
    sock = str(tmp / "bus.sock")
    cfg = tmp / "edgebot.toml"
    cfg.write_text(config)
    env = {**os.environ, "EDGEBOT_BOARD": "generic-x86"}
    proc = subprocess.Popen([str(BIN / "edgebotd"), "--config", str(cfg), "--model", str(model), "--socket", sock,
                             "--log-level", "WARNING"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = subprocess.run([str(BIN / "edgebot-cli"), "--socket", sock, "status", "--wait", "300"], capture_output=True,
                       text=True, env={**env, "EDGEBOT_SOCKET": sock}, timeout=330)
    if r.returncode != 0:
        proc.kill()
        raise SystemExit(f"edgebotd did not start: {r.stderr}")
    return proc, sock


def run_bridge(tmp: Path, sock: str, port: Path, keys: str) -> subprocess.Popen:
    cfg = tmp / "serial.toml"
    cfg.write_text(f'[[serial]]\nport = "{port}"\nhello_timeout_s = 5.0\n{keys}\n')
    return subprocess.Popen([str(BIN / "edgebot-serial"), "--config", str(cfg), "--socket", sock, "--log-level",
                             "WARNING"], env={**os.environ, "EDGEBOT_BOARD": "generic-x86"})


def scenario(model: Path, keys: str, questions: int, baud: int, max_tokens: int, n_threads: int = 0) -> dict[str, Any]:
    """Ask ``questions`` times; per-token latency (s) and per-answer throughput (text bytes/s)."""
    tmp = Path(tempfile.mkdtemp(prefix="edgebot-bench-serial-"))
    daemon, sock = start_daemon(tmp, model, f"[llm]\nmax_tokens = {max_tokens}\nn_threads = {n_threads}\n")
    bus = Bus(sock)
    port = tmp / "ttyBENCH"
    board = PacedBoard(port, baud)
    bridge = run_bridge(tmp, sock, port, keys)
    latencies: list[float] = []
    throughputs: list[float] = []
    gen_rates: list[float] = []
    try:
        time.sleep(0.5)  # let the bridge open the port (it waits for our HELLO)
        board.pty.send("HELLO 0 bench rx=128")
        for line, _, _ in board.lines(time.monotonic() + 30):
            if line.startswith(b"HELLO"):
                break
        for q in range(1, questions + 1):
            board.send_paced(f"Q {q} Tell me a long story, number {q}.")
            chunks: list[tuple[bytes, float, float]] = []
            seen: set[int] = set()
            for line, first, done in board.lines(time.monotonic() + 600):
                if line.startswith(b"A %d " % q):
                    _, _, seq_s, text = line.split(b" ", 3)
                    if int(seq_s) not in seen:
                        seen.add(int(seq_s))
                        chunks.append((text, first, done))
                    board.send_paced(f"K {q} {seq_s.decode()}")
                elif line.startswith(b"E %d " % q):
                    break
            prefix = f"serial:{port.name}:{q}:"
            with bus.cond:
                bus.cond.wait_for(lambda: any(i.startswith(prefix) for i in bus.ended), 30)  # noqa: B023
                bus_id = next(i for i in bus.ended if i.startswith(prefix))
                deltas = list(bus.deltas.get(bus_id, []))
            # map each delta's last escaped byte to the chunk that carried it
            ends, total = [], 0
            for chunk, _, done in chunks:
                total += len(chunk)
                ends.append((total, done))
            offset = 0
            for t, text in deltas:
                offset += sum(len(u) for u, _ in escape_units(text))
                if offset == 0:
                    continue
                done = next((d for e, d in ends if e >= offset), None)
                if done is not None:
                    latencies.append(done - t)
            if len(chunks) > 2:
                throughputs.append(total / (chunks[-1][2] - chunks[0][1]))
                gen_rates.append(offset / (deltas[-1][0] - deltas[0][0]) if deltas[-1][0] > deltas[0][0] else 0.0)
    finally:
        bridge.terminate()
        bridge.wait(10)
        daemon.terminate()
        daemon.wait(30)
        board.pty.close()
    return {"latencies": latencies, "throughputs": throughputs, "gen_rates": gen_rates}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--shape-model", default=str(SHAPE_MODEL))
    args = p.parse_args()
    line_rate = args.baud / 10
    tmp = Path(tempfile.mkdtemp(prefix="edgebot-bench-models-"))
    slow = write_script_model(tmp / "slow-loop.gguf", replace(DEFAULT_SCRIPT, loop=True), n_embd=512, n_layers=4,
                              n_ff=2048)
    long_model = write_script_model(tmp / "long-pieces.gguf", LONG_SCRIPT)
    rows = []

    def latency_row(name: str, res: dict[str, Any]) -> None:
        lat = res["latencies"]
        gen = statistics.median(res["gen_rates"]) if res["gen_rates"] else float("nan")
        rows.append(f"| {name} | {gen:.0f} | {len(lat)} | {1000 * statistics.median(lat):.1f} | "
                    f"{1000 * pct(lat, 0.95):.1f} |")
        print(rows[-1], flush=True)

    print("| answer text from | generated, bytes/s | tokens | latency median, ms | latency p95, ms |")
    res = scenario(slow, "window = 1\n", args.questions, args.baud, 120)
    latency_row("script model (loop), window 1", res)
    if Path(args.shape_model).is_file():
        res = scenario(Path(args.shape_model), "window = 1\nthink_budget = 0\n", max(2, args.questions // 4),
                       args.baud, 40)
        latency_row("1.5B-shape Q4_K_M, window 1", res)
    else:
        print(f"(no {args.shape_model}: run bench/shape_model.py for the board-cost regime)")
    print()
    print(f"| window | generated, bytes/s | delivered text, bytes/s | / line rate ({line_rate:.0f} B/s) |")
    for window in (1, 2):
        res = scenario(long_model, f"window = {window}\nthink_budget = 0\n", max(2, args.questions // 2), args.baud,
                       300, n_threads=1)  # one core for the model, one for the bridge and the board
        thr = statistics.median(res["throughputs"])
        print(f"| {window} | {statistics.median(res['gen_rates']):.0f} | {thr:.0f} | {thr / line_rate:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
