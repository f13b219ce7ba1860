"""edgebot-mqtt end to end: a real mosquitto on a free loopback port, the real bridge process, a real
edgebotd on the script GGUF, and paho-mqtt on the other side as the robot / dashboard. Every wait is
on an MQTT message or a bus event, bounded by a timeout."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from edgebot.testing.broker import Mosquitto, mosquitto_binary

from conftest import BIN, Daemon, stop_process

paho = pytest.importorskip("paho.mqtt.client", reason="the mqtt extra (paho-mqtt) is not installed")

EDGEBOT_MQTT = str(BIN / "edgebot-mqtt")
ANSWER = "The answer is 4."
PREFIX = "t/bot"
ACTIONS = '''
[robot]
model_actions = false
result_timeout_s = 8.0

[[actions]]
name = "led"
description = "turn the LED on or off"
port = "mqtt"
parameters = { properties = { state = { enum = ["on", "off"] } } }
phrases = { "turn on the light" = { state = "on" }, "light {state}" = {} }
'''


def need_mosquitto() -> None:
    if mosquitto_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("the MQTT tests need mosquitto (.ci/run installs it)")
        pytest.skip("the MQTT tests need mosquitto (apt-get install mosquitto)")


class Client:
    """A paho-mqtt client (persistent session) whose messages land in a queue."""

    def __init__(self, url: str, client_id: str, topics: list[str]) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.got: "queue.Queue[tuple[str, bytes, bool]]" = queue.Queue()
        self.topics = topics
        self.connected: "queue.Queue[bool]" = queue.Queue()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.c.reconnect_delay_set(1, 2)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, msg: self.got.put((msg.topic, bytes(msg.payload), bool(msg.retain)))
        self.c.connect(host, int(port), keepalive=10)
        self.c.loop_start()
        assert self.connected.get(timeout=10)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        client.subscribe([(t, 1) for t in self.topics])
        self.connected.put(True)

    def publish(self, topic: str, payload: bytes | str) -> None:
        self.c.publish(topic, payload, qos=1)

    def expect(self, match: Callable[[str, bytes], bool], timeout: float = 30.0) -> tuple[str, bytes, bool]:
        """The next message for which ``match(topic, payload)`` holds (others are dropped)."""
        while True:
            try:
                topic, payload, retained = self.got.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no matching MQTT message within {timeout} s") from None
            if match(topic, payload):
                return topic, payload, retained

    def answer(self, ident: Optional[str] = None, timeout: float = 30.0) -> tuple[list[dict], dict]:
        """The messages of one answer on PREFIX/answer/<ident or any>: (start and deltas, end)."""
        msgs: list[dict] = []
        while True:
            _, payload, _ = self.expect(lambda t, p: t.startswith(f"{PREFIX}/answer/") and
                                        (ident is None or t == f"{PREFIX}/answer/{ident}"), timeout)  # noqa: B023
            msg = json.loads(payload)
            if msg["type"] == "end":
                return msgs, msg
            msgs.append(msg)
            ident = msg["id"]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class MqttBridgeProc:
    """The real ``edgebot-mqtt`` process against ``broker`` and ``daemon``."""

    def __init__(self, tmp: Path, daemon: Daemon, broker: Mosquitto, keys: str = "", prefix: str = PREFIX,
                 client_id: str = "edgebot-test") -> None:
        cfg = tmp / "mqtt.toml"
        cfg.write_text(f'[mqtt]\nbroker = "{broker.url}"\nprefix = "{prefix}"\nclient_id = "{client_id}"\n'
                       f"keepalive_s = 5\n{keys}\n")
        self.log_path = tmp / "edgebot-mqtt.log"
        self.log = open(self.log_path, "ab")
        env = {**os.environ, "EDGEBOT_BOARD": "generic-x86"}
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen([EDGEBOT_MQTT, "--config", str(cfg), "--socket", daemon.socket,
                                      "--log-level", "DEBUG"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> int:
        code = stop_process(self.proc, 10)
        self.log.close()
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    need_mosquitto()
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def robot(tmp_path_factory: pytest.TempPathFactory, script_model: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("edgebotd"), script_model, ACTIONS)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, robot: Daemon, broker: Mosquitto) -> Iterator[MqttBridgeProc]:
    watcher = Client(broker.url, "watch-online", [f"{PREFIX}/status"])
    b = MqttBridgeProc(tmp_path_factory.mktemp("mqtt"), robot, broker)
    watcher.expect(lambda t, p: p == b"online")
    watcher.close()
    yield b
    b.stop()


@pytest.fixture
def client(broker: Mosquitto, bridge: MqttBridgeProc, request: pytest.FixtureRequest) -> Iterator[Client]:
    c = Client(broker.url, f"test-{request.node.name}"[:60],
               [f"{PREFIX}/answer/+", f"{PREFIX}/error", f"{PREFIX}/status", f"{PREFIX}/action/+"])
    yield c
    c.close()


def test_plain_ask_streams_the_exact_scripted_answer(client: Client) -> None:
    client.publish(f"{PREFIX}/ask", "What is 2+2?")
    msgs, end = client.answer()
    assert msgs[0]["type"] == "start" and msgs[0]["question"] == "What is 2+2?"
    deltas = [m["text"] for m in msgs if m["type"] == "delta"]
    assert deltas, "the answer is streamed in delta messages (the bus merges pieces a slow reader has not taken)"
    assert "".join(deltas) == ANSWER
    assert not [m for m in msgs if m["type"] == "think"], "thinking only when asked for"
    assert end["reason"] == "stop" and end["text"] == ANSWER
    assert end["stats"]["completion_tokens"] > 0 and "ttft_ms" in end["stats"]


def test_json_ask_with_id_and_thinking(client: Client) -> None:
    client.publish(f"{PREFIX}/ask", json.dumps({"id": "q-7", "text": "What is 2+2?", "think": True,
                                                "session": "kid1"}))
    msgs, end = client.answer("q-7")
    thinking = "".join(m["text"] for m in msgs if m["type"] == "think")
    assert "the user asks what 2+2 is" in thinking.lower()
    assert "".join(m["text"] for m in msgs if m["type"] == "delta") == ANSWER
    assert end["id"] == "q-7" and end["text"] == ANSWER and "</think>" not in end["text"]


def test_status_is_retained_and_clean_stop_says_offline(broker: Mosquitto, bridge: MqttBridgeProc) -> None:
    late = Client(broker.url, "late-status", [f"{PREFIX}/status"])
    topic, payload, retained = late.expect(lambda t, p: True, timeout=10)
    assert (topic, payload, retained) == (f"{PREFIX}/status", b"online", True)
    late.close()


@pytest.mark.parametrize("payload, code", [
    (b"{not json", "bad-json"),
    (b"\xff\xfe binary", "bad-json"),
    (b"   ", "bad-field"),
    (b'{"text": "hi"}}', "bad-json"),
    (json.dumps({"text": "hi", "colour": "red"}).encode(), "bad-field"),
    (json.dumps({"text": "hi", "id": "a/b/#"}).encode(), "bad-field"),
    (json.dumps({"text": 42}).encode(), "bad-field"),
    (json.dumps({"text": "hi", "think": "maybe"}).encode(), "bad-field"),
    (json.dumps({"text": "hi", "max_tokens": 0}).encode(), "bad-field"),
    (b"x" * 70000, "too-long"),
])
def test_malformed_ask_gets_an_error_and_the_bridge_carries_on(client: Client, bridge: MqttBridgeProc,
                                                               payload: bytes, code: str) -> None:
    client.publish(f"{PREFIX}/ask", payload)
    _, body, _ = client.expect(lambda t, p: t == f"{PREFIX}/error")
    err = json.loads(body)
    assert err["code"] == code and err["topic"] == f"{PREFIX}/ask" and err["message"]
    assert bridge.proc.poll() is None
    client.publish(f"{PREFIX}/ask", "What is 2+2?")
    assert client.answer()[1]["text"] == ANSWER


def test_bad_cancel_and_stray_result_get_errors(client: Client, bridge: MqttBridgeProc) -> None:
    for topic, payload, code in [(f"{PREFIX}/cancel", b"nobody", "not-found"),
                                 (f"{PREFIX}/cancel", b"{\"id\": 5}", "bad-field"),
                                 (f"{PREFIX}/action/led/result", b"ok LED on", "unknown-id"),
                                 (f"{PREFIX}/action/led/result", b"maybe", "bad-field")]:
        client.publish(topic, payload)
        _, body, _ = client.expect(lambda t, p: t == f"{PREFIX}/error")
        err = json.loads(body)
        assert (err["code"], err["topic"]) == (code, topic), err
    assert bridge.proc.poll() is None


def test_action_round_trip(client: Client) -> None:
    """A phrase runs the declared action on an MQTT device: the device gets exactly the arguments and
    its result is what the asker hears."""
    client.publish(f"{PREFIX}/ask", json.dumps({"id": "a1", "text": "Turn on the light!"}))
    topic, payload, _ = client.expect(lambda t, p: t.startswith(f"{PREFIX}/action/"))
    assert (topic, json.loads(payload)) == (f"{PREFIX}/action/led", {"state": "on"})
    client.publish(f"{PREFIX}/action/led/result", "ok LED on")
    _, end = client.answer("a1")
    assert end["reason"] == "stop" and end["text"] == "Done: LED on"
    client.publish(f"{PREFIX}/ask", json.dumps({"id": "a2", "text": "light off"}))
    topic, payload, _ = client.expect(lambda t, p: t.startswith(f"{PREFIX}/action/"))
    assert json.loads(payload) == {"state": "off"}
    client.publish(f"{PREFIX}/action/led/result", json.dumps({"ok": False, "text": "the LED is stuck"}))
    assert client.answer("a2")[1]["text"] == "I could not do that: the LED is stuck"


def test_undeclared_arguments_never_reach_the_device(client: Client) -> None:
    """The safety rules are edgebotd's: a phrase with an invalid argument is refused before publishing."""
    client.publish(f"{PREFIX}/ask", json.dumps({"id": "a3", "text": "light purple"}))
    _, end = client.answer("a3")
    assert end["text"].startswith("I could not do that:") and "purple" in end["text"]
    with pytest.raises(queue.Empty):
        while True:  # nothing was published on an action topic meanwhile
            topic, _, _ = client.got.get_nowait()
            assert not topic.startswith(f"{PREFIX}/action/")


def test_broker_restart_loses_nothing_at_qos1(client: Client, broker: Mosquitto, bridge: MqttBridgeProc) -> None:
    """A question published while the broker is down reaches the bridge after the restart, and its whole
    answer reaches the asker: persistent sessions and QoS 1 on both sides."""
    client.publish(f"{PREFIX}/ask", json.dumps({"id": "before", "text": "What is 2+2?"}))
    assert client.answer("before")[1]["text"] == ANSWER
    broker.stop()
    client.publish(f"{PREFIX}/ask", json.dumps({"id": "during", "text": "What is 2+2?"}))  # queued by paho
    broker.start()
    msgs, end = client.answer("during", timeout=60)
    assert "".join(m["text"] for m in msgs if m["type"] == "delta") == ANSWER
    assert end["text"] == ANSWER and end["reason"] == "stop"
    assert bridge.proc.poll() is None
    late = Client(broker.url, "late-restart", [f"{PREFIX}/status"])
    assert late.expect(lambda t, p: True, timeout=10)[1:] == (b"online", True)
    late.close()


def test_cancel_ends_a_running_answer(tmp_path: Path, broker: Mosquitto, slow_loop_model: Path,
                                      daemon_factory: Any) -> None:
    """An answer that would never end (the looping script model) stops on PREFIX/cancel."""
    d = daemon_factory(slow_loop_model, "[llm]\nmax_tokens = 100000\n")
    watch = Client(broker.url, "watch-cancel", ["slow/#"])
    b = MqttBridgeProc(tmp_path, d, broker, prefix="slow", client_id="edgebot-slow")
    try:
        watch.expect(lambda t, p: t == "slow/status" and p == b"online", timeout=20)
        watch.publish("slow/ask", json.dumps({"id": "long", "text": "Count forever."}))
        watch.expect(lambda t, p: t == "slow/answer/long" and json.loads(p)["type"] == "delta")
        watch.publish("slow/cancel", "long")
        _, payload, _ = watch.expect(lambda t, p: t == "slow/answer/long" and json.loads(p)["type"] == "end")
        assert json.loads(payload)["reason"] == "cancelled"
    finally:
        assert b.stop() == 0
        watch.close()


def test_edgebotd_restart_is_reported_and_survived(tmp_path: Path, broker: Mosquitto, script_model: Path,
                                                   daemon_factory: Any) -> None:
    """The bus going away turns PREFIX/status offline (an ask then gets an error, not silence); the
    supervisor reconnects when edgebotd is back, and the status returns to online."""
    sock = str(tmp_path / "bus.sock")
    d = daemon_factory(script_model, socket_path=sock)
    watch = Client(broker.url, "watch-restart", ["re/#"])
    b = MqttBridgeProc(tmp_path, d, broker, prefix="re", client_id="edgebot-re")
    try:
        watch.expect(lambda t, p: t == "re/status" and p == b"online", timeout=20)
        d.stop()
        watch.expect(lambda t, p: t == "re/status" and p == b"offline", timeout=20)
        watch.publish("re/ask", json.dumps({"id": "lost", "text": "What is 2+2?"}))
        _, body, _ = watch.expect(lambda t, p: t == "re/error")
        assert json.loads(body)["code"] == "not-ready" and "not reachable" in json.loads(body)["message"]
        daemon_factory(script_model, socket_path=sock)
        watch.expect(lambda t, p: t == "re/status" and p == b"online", timeout=30)
        watch.publish("re/ask", json.dumps({"id": "back", "text": "What is 2+2?"}))
        _, payload, _ = watch.expect(lambda t, p: t == "re/answer/back" and json.loads(p)["type"] == "end")
        assert json.loads(payload)["text"] == ANSWER
    finally:
        assert b.stop() == 0
        watch.close()


def test_last_will_when_killed_then_back_online(tmp_path: Path, broker: Mosquitto, robot: Daemon,
                                                bridge: MqttBridgeProc) -> None:
    """Runs last in the module: it kills the shared bridge."""
    watch = Client(broker.url, "watch-will", [f"{PREFIX}/status"])
    watch.expect(lambda t, p: p == b"online", timeout=10)
    bridge.proc.send_signal(signal.SIGKILL)
    bridge.proc.wait(10)
    _, payload, _ = watch.expect(lambda t, p: True, timeout=20)
    assert payload == b"offline", "the broker publishes the last will when the bridge dies"
    late = Client(broker.url, "late-will", [f"{PREFIX}/status"])
    assert late.expect(lambda t, p: True, timeout=10)[1:] == (b"offline", True), "the will is retained"
    late.close()
    again = MqttBridgeProc(tmp_path, robot, broker)
    try:
        watch.expect(lambda t, p: p == b"online", timeout=20)
        assert again.stop() == 0
        watch.expect(lambda t, p: p == b"offline", timeout=10)  # a clean stop says offline too
    finally:
        again.stop()
        watch.close()


def test_node_red_flow_is_wired_to_the_bridges_topics() -> None:
    """examples/node-red/edgebot-flow.json imports as a flow: every wire and broker reference resolves,
    and its topics are the bridge's (default prefix)."""
    from edgebot.bridges.mqtt.protocol import Topics
    from conftest import REPO

    nodes = json.loads((REPO / "examples" / "node-red" / "edgebot-flow.json").read_text())
    by_id = {n["id"]: n for n in nodes}
    assert len(by_id) == len(nodes)
    for n in nodes:
        for out in n.get("wires", []):
            assert all(target in by_id for target in out), n["id"]
        if n["type"] in ("mqtt in", "mqtt out"):
            assert by_id[n["broker"]]["type"] == "mqtt-broker"
    t = Topics("edgebot")
    topics = {n["topic"] for n in nodes if n["type"] in ("mqtt in", "mqtt out")}
    assert topics == {t.ask, t.answer("+"), t.status, t.error, t.action("led"), t.action("led") + "/result"}
    assert t.result_action(t.action("led") + "/result") == "led"
