"""Each door against the bus on the same edgebotd and model: time from the ask to the first answer
character (and, for Home Assistant's Wyoming door, which answers in one piece, to the whole answer).

One edgebotd (``[http] enabled``, ``[llm] n_threads = 1``) on the script test model by default (its
prompt and tokens cost almost nothing, so what is left is each door's own cost), a mosquitto broker
on a free loopback port with the real ``edgebot-mqtt``, and the real ``edgebot-wyoming``. Runs take
turns: bus ask (JSON lines on the Unix socket, thinking hidden) → MQTT (paho publishes on
``PREFIX/ask`` at QoS 1, waits for the first ``delta`` on ``PREFIX/answer/ID``) → Ollama
``/api/chat`` streaming (first NDJSON line with content) → Wyoming ``transcript`` (``handled``).
Each run has its own question number. Medians over ``--runs``.

    .venv/bin/python bench/bench_doors.py [--runs 30] [--model PATH] [--no-broker-nodelay]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from edgebot.testing.broker import Mosquitto, free_port  # noqa: E402
from edgebot.testing.script_model import write_script_model  # noqa: E402
from engine_clients import JsonLineBus  # noqa: E402

BIN = Path(sys.executable).parent
QUESTION = "Question {n}: what is 2+2?"


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EDGEBOT_BOARD": "generic-x86"}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


class Bus(JsonLineBus):
    async def ask(self, id_: str, text: str) -> tuple[float, float]:
        """(ms to the first answer delta, ms to answer-end)."""
        t0 = time.perf_counter()
        await self.send("ask", id=id_, text=text, source="cli")
        first = None
        while True:
            ev = json.loads(await self.r.readline())
            if ev["type"] == "answer-delta" and first is None:
                first = time.perf_counter()
            elif ev["type"] == "answer-end":
                return (first - t0) * 1000, (time.perf_counter() - t0) * 1000
            elif ev["type"] == "error":
                raise RuntimeError(ev["data"])


class Mqtt:
    def __init__(self, url: str) -> None:
        import paho.mqtt.client as paho

        host, port = url.removeprefix("mqtt://").split(":")
        self.got: "queue.Queue[tuple[float, str, bytes]]" = queue.Queue()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-doors")
        self.c.on_message = lambda c, u, m: self.got.put((time.perf_counter(), m.topic, bytes(m.payload)))
        self.c.connect(host, int(port))
        self.c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the bridge does
        self.c.subscribe("bench/answer/+", 1)
        self.c.loop_start()

    def ask(self, id_: str, text: str) -> float:
        t0 = time.perf_counter()
        self.c.publish("bench/ask", json.dumps({"id": id_, "text": text}), qos=1)
        first = None
        while True:
            t, topic, payload = self.got.get(timeout=60)
            msg = json.loads(payload)
            if msg["id"] != id_:
                continue
            if msg["type"] == "delta" and first is None:
                first = t
            if msg["type"] == "end":
                return (first - t0) * 1000

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


async def ollama_chat(s: aiohttp.ClientSession, port: int, text: str) -> float:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": text}]}
    t0 = time.perf_counter()
    first = None
    async with s.post(f"http://127.0.0.1:{port}/api/chat", json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if first is None and line.strip() and json.loads(line)["message"]["content"]:
                first = time.perf_counter()
    return (first - t0) * 1000


async def wyoming_handle(port: int, text: str) -> float:
    from wyoming.asr import Transcript
    from wyoming.client import AsyncTcpClient
    from wyoming.handle import Handled

    t0 = time.perf_counter()
    async with AsyncTcpClient("127.0.0.1", port) as c:
        await c.write_event(Transcript(text=text).event())
        ev = await c.read_event()
    assert ev is not None and Handled.is_type(ev.type), ev
    return (time.perf_counter() - t0) * 1000


async def run(model: Path, runs: int, broker_nodelay: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-doors-"))
    http_port, wy_port = free_port(), free_port()
    sock = str(tmp / "bus.sock")
    broker = Mosquitto(tmp, tcp_nodelay=broker_nodelay)
    broker.start()
    (tmp / "e.toml").write_text(f"[llm]\nn_threads = 1\n[http]\nenabled = true\nport = {http_port}\n"
                                f"model_name = \"m\"\n[mqtt]\nbroker = \"{broker.url}\"\nprefix = \"bench\"\n"
                                f"client_id = \"bench-bridge\"\n[wyoming]\nuri = \"tcp://127.0.0.1:{wy_port}\"\n")
    cfg = ["--config", str(tmp / "e.toml"), "--socket", sock, "--log-level", "WARNING"]
    procs = [start([str(BIN / "edgebotd"), *cfg, "--model", str(model)], tmp / "edgebotd.log")]
    try:
        deadline = time.monotonic() + 120
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(f"http://127.0.0.1:{http_port}/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("edgebotd did not become ready")
                await asyncio.sleep(0.1)
            procs += [start([str(BIN / "edgebot-mqtt"), *cfg], tmp / "mqtt.log"),
                      start([str(BIN / "edgebot-wyoming"), *cfg], tmp / "wyoming.log")]
            bus = await Bus().open(sock)
            mqtt = Mqtt(broker.url)
            for _ in range(100):  # both bridges up: one answer through each
                try:
                    await wyoming_handle(wy_port, "warm up")
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            await asyncio.get_running_loop().run_in_executor(None, mqtt.ask, "warm", "warm up")
            await ollama_chat(s, http_port, "warm up")
            res: dict[str, list[float]] = {"bus": [], "bus-end": [], "mqtt": [], "ollama": [], "wyoming": []}
            for i in range(runs):
                first, end = await bus.ask(f"b{i}", QUESTION.format(n=4 * i))
                res["bus"].append(first)
                res["bus-end"].append(end)
                res["mqtt"].append(await asyncio.get_running_loop().run_in_executor(
                    None, mqtt.ask, f"m{i}", QUESTION.format(n=4 * i + 1)))
                res["ollama"].append(await ollama_chat(s, http_port, QUESTION.format(n=4 * i + 2)))
                res["wyoming"].append(await wyoming_handle(wy_port, QUESTION.format(n=4 * i + 3)))
            mqtt.close()
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(30)
        broker.stop()
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\n## Doors: ask to the first answer character ({model.name}, {runs} runs each, medians; "
          f"load average {os.getloadavg()[0]:.1f})\n")
    print("| door | ms | door − bus |\n|---|---|---|")
    print(f"| bus (JSON lines, Unix socket) | {med['bus']:.1f} | |")
    mqtt_name = f"MQTT (edgebot-mqtt, mosquitto on loopback, QoS 1, set_tcp_nodelay {str(broker_nodelay).lower()})"
    print(f"| {mqtt_name} | {med['mqtt']:.1f} | {med['mqtt'] - med['bus']:+.1f} ms |")
    print(f"| Ollama /api/chat (streamed NDJSON) | {med['ollama']:.1f} | {med['ollama'] - med['bus']:+.1f} ms |")
    print(f"\nWhole answer: bus {med['bus-end']:.1f} ms, Wyoming transcript → handled {med['wyoming']:.1f} ms "
          f"({med['wyoming'] - med['bus-end']:+.1f} ms)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--model", help="a GGUF (default: the script test model, written to a temporary file)")
    ap.add_argument("--no-broker-nodelay", action="store_true", help="mosquitto as Debian configures it "
                    "(set_tcp_nodelay false): Nagle's algorithm on the broker's side")
    args = ap.parse_args()
    model = Path(args.model) if args.model else write_script_model(Path(tempfile.mkdtemp()) / "script.gguf")
    asyncio.run(run(model, args.runs, not args.no_broker_nodelay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
