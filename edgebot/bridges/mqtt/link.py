"""The broker side of edgebot-mqtt: one paho-mqtt client, its network thread, and asyncio.

paho's own network thread connects, keeps the connection alive and reconnects with backoff (1 s
doubling to 30 s); QoS 1/2 publications made while the broker is away wait in paho's queue and go
out after the reconnect. The session is persistent (``clean_session`` false), so the broker keeps
the bridge's subscriptions and queues questions for it while it restarts. Every callback is handed
to the asyncio loop with ``call_soon_threadsafe``; nothing else of the bridge runs on paho's thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit

from edgebot.bridges.mqtt.protocol import OFFLINE, Topics, check_prefix
from edgebot.config import Config, ConfigError

log = logging.getLogger(__name__)

RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30


@dataclass(frozen=True)
class MqttSettings:
    """``[mqtt]`` (units as in the schema: seconds, bytes, tokens)."""

    host: str
    port: int
    tls: bool
    client_id: str
    username: str = ""
    password: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    prefix: str = "edgebot"
    qos: int = 1
    keepalive_s: int = 30
    max_payload_bytes: int = 65536
    action_port: str = "mqtt"
    action_timeout_s: float = 4.0
    think_budget: int = -1

    @classmethod
    def from_config(cls, config: Config) -> "MqttSettings":
        """The section, the broker URL split and checked; ConfigError says what to write instead."""
        s = config.section("mqtt")
        url = urlsplit(s["broker"])
        if url.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not url.hostname:
            raise ConfigError(f"[mqtt] broker {s['broker']!r}: write mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        tls = url.scheme in ("mqtts", "ssl")
        try:
            port = url.port or (8883 if tls else 1883)
            prefix = check_prefix(s["prefix"])
        except ValueError as exc:
            raise ConfigError(f"[mqtt] broker or prefix: {exc}") from None
        if s["key_file"] and not s["cert_file"]:
            raise ConfigError("[mqtt] key_file is set but cert_file is not: give both for a client certificate")
        return cls(host=url.hostname, port=port, tls=tls,
                   client_id=s["client_id"] or f"edgebot-{socket.gethostname()}"[:64],
                   username=s["username"] or unquote(url.username or ""),
                   password=s["password"] or unquote(url.password or ""),
                   ca_file=s["ca_file"], cert_file=s["cert_file"], key_file=s["key_file"], prefix=prefix,
                   qos=s["qos"], keepalive_s=s["keepalive_s"], max_payload_bytes=s["max_payload_bytes"],
                   action_port=s["action_port"], action_timeout_s=s["action_timeout_s"],
                   think_budget=s["think_budget"])


class BrokerLink:
    """A connection to the broker that outlives its reconnects.

    ``on_message(topic, payload)`` and ``on_state(connected, why)`` are called on the asyncio loop.
    """

    def __init__(self, s: MqttSettings, subscriptions: list[str],
                 on_message: Callable[[str, bytes], None], on_state: Callable[[bool, str], None]) -> None:
        try:
            import paho.mqtt.client as paho
        except ImportError:
            raise ConfigError("edgebot-mqtt needs paho-mqtt: pip install 'edgebot[mqtt]'") from None
        self.s = s
        self.topics = Topics(s.prefix)
        self.subscriptions = subscriptions
        self._on_message = on_message
        self._on_state = on_state
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.connected = False
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=s.client_id, clean_session=False,
                             protocol=paho.MQTTv311)
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        if s.tls:
            try:
                client.tls_set(ca_certs=s.ca_file or None, certfile=s.cert_file or None, keyfile=s.key_file or None,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"[mqtt] ca_file/cert_file/key_file: {exc}") from None
        client.will_set(self.topics.status, OFFLINE, qos=s.qos, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(0)  # unlimited: QoS 1 answers wait for the broker to come back
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        self.client = client

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect in the background (retrying until the broker is there)."""
        self.loop = loop
        log.info("connecting to the MQTT broker %s:%d as %s%s", self.s.host, self.s.port, self.s.client_id,
                 " (TLS)" if self.s.tls else "")
        self.client.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive_s)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """Publish at ``[mqtt] qos``; queued by paho while the broker is away (QoS 1 and 2)."""
        self.client.publish(topic, payload, qos=self.s.qos, retain=retain)

    def stop(self, last: Optional[tuple[str, str]] = None, timeout_s: float = 2.0) -> None:
        """Publish ``last`` (topic, payload; retained) if connected, disconnect cleanly (no last will),
        stop the thread. Blocks up to ``timeout_s`` seconds for ``last`` to be acknowledged."""
        if last is not None and self.connected:
            info = self.client.publish(last[0], last[1], qos=max(1, self.s.qos), retain=True)
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho's thread -------------------------------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def _connected(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.s.host, self.s.port, reason)
            return
        sock = client.socket()
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Nagle's algorithm with the broker's delayed ACKs holds small messages (an answer's deltas)
            # for ~40 ms; the broker side needs mosquitto's set_tcp_nodelay (docs/integrations.md)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe([(t, self.s.qos) for t in self.subscriptions])
        self.connected = True
        self._post(self._on_state, True, f"session present: {bool(flags.session_present)}")

    def _disconnected(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        self.connected = False
        self._post(self._on_state, False, str(reason))

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._post(self._on_message, msg.topic, bytes(msg.payload))
