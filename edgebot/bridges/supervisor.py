"""The one run loop every bridge shares: connect, hello, subscribe, reconnect with backoff,
clean shutdown on SIGTERM/SIGINT. No bridge writes its own reconnect loop.

A bridge implements :class:`Bridge`; ``bridge_main`` gives it the common command line
(``--config``, ``--socket``, ``--log-level``), configuration and logging.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
import time
from typing import Callable, Optional, Sequence

import edgebot
from edgebot.bus import messages as m
from edgebot.bus.client import BusClient, BusRefused, BusUnavailable
from edgebot.config import Config, ConfigError, load_config
from edgebot.systemd import notify, setup_logging

log = logging.getLogger(__name__)

EX_CONFIG = 78


def device_status(msg: m.Message) -> str:
    """The systemd ``STATUS=`` text for a bridge's device report, or "" for other messages."""
    if isinstance(msg, m.AudioDevice):
        what = "microphone" if msg.bridge == "speech-in" else "speaker"
        if msg.state == "ready":
            return f"{what} ready: {msg.message or msg.device or 'default'}"[:300]
        return f"{what} missing, nothing can be {'heard' if what == 'microphone' else 'spoken'}: {msg.message}"[:300]
    if isinstance(msg, m.SerialPort):
        return f"{msg.port}: {msg.state}{': ' + msg.message if msg.message else ''}"[:300]
    return ""


class BusLink:
    """A bridge's handle on the bus that outlives reconnects."""

    def __init__(self) -> None:
        self.client: Optional[BusClient] = None
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.client is not None

    async def send(self, msg: m.Message) -> bool:
        """Send if connected; False (message not sent) while the bus is away. A device report
        (``audio-device``, ``serial-port``) also becomes the unit's ``STATUS=`` line, bus or not,
        so ``systemctl status`` says when the speaker, microphone or port is missing."""
        status = device_status(msg)
        if status:
            notify(f"STATUS={status}")
        client = self.client
        if client is None:
            return False
        try:
            await client.send(msg)
            return True
        except (ConnectionError, OSError):
            return False

    async def wait_connected(self, timeout: Optional[float] = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _set(self, client: Optional[BusClient]) -> None:
        self.client = client
        if client is None:
            self._connected.clear()
        else:
            self._connected.set()


class Bridge:
    """Override what the bridge needs. ``run`` is started once and runs across reconnects."""

    client_name = "bridge"
    role = "bridge"
    subscriptions: Sequence[str] = ()

    async def run(self, link: BusLink) -> None:
        """Long-running work that does not depend on the connection (a serial port, a microphone)."""
        await asyncio.Event().wait()

    async def on_connected(self, link: BusLink) -> None:
        """Called after every (re)connection, once hello and subscribe are done."""

    async def on_message(self, msg: m.Message) -> None:
        """Every message from the daemon, in order."""

    async def on_disconnected(self) -> None:
        """The bus went away; unfinished work should end or wait."""

    async def close(self) -> None:
        """Shutdown: release devices."""


class Supervisor:
    """Keeps one bridge connected to the bus until stopped. Backoff in seconds."""

    def __init__(self, bridge: Bridge, socket_path: str, backoff_initial: float = 0.2, backoff_max: float = 5.0,
                 refused_backoff: float = 30.0, stable_s: float = 10.0) -> None:
        self.bridge = bridge
        self.socket_path = socket_path
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # edgebotd refused the connection (it cannot start: a configuration error; or this user is not
        # allowed): retry only after this long, so a broken daemon is not started again and again by
        # socket activation. And a connection that ends within stable_s does not reset the backoff.
        self.refused_backoff = refused_backoff
        self.stable_s = stable_s
        self.link = BusLink()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Run until ``stopping`` is set (SIGTERM/SIGINT under ``bridge_main``)."""
        work = asyncio.create_task(self.bridge.run(self.link), name=f"{self.bridge.client_name}-run")
        session = asyncio.create_task(self._connect_loop(), name=f"{self.bridge.client_name}-bus")
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait({work, session, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in (work, session, stop):
            task.cancel()
        await asyncio.gather(work, session, stop, return_exceptions=True)
        failure = next((t.exception() for t in (work, session) if t in done and not t.cancelled()
                        and t.exception() is not None), None)
        if failure is None and work in done and not stop.done():
            failure = RuntimeError(f"{self.bridge.client_name} stopped by itself")
        if failure is not None:
            log.error("%s failed: %r", self.bridge.client_name, failure, exc_info=failure)
        if self.link.client is not None:
            await self.link.client.close()
            self.link._set(None)
        await self.bridge.close()
        if failure is not None:
            raise failure

    async def _connect_loop(self) -> None:
        delay = self.backoff_initial
        reported = False
        while True:
            try:
                client = await BusClient.connect(self.socket_path, self.bridge.client_name, self.bridge.role)
            except BusRefused as exc:
                log.error("%s; retrying in %.0f s", exc, self.refused_backoff)
                notify(f"STATUS=bus refused: {str(exc)[:200]}")
                await asyncio.sleep(self.refused_backoff * random.uniform(0.8, 1.2))
                continue
            except BusUnavailable as exc:
                if not reported:
                    log.warning("bus unavailable, retrying with backoff: %s", exc)
                    reported = True
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max)
                continue
            log.info("connected to edgebotd at %s", self.socket_path)
            reported = False
            connected_at = time.monotonic()
            try:
                if self.bridge.subscriptions:
                    await client.send(m.Subscribe(types=list(self.bridge.subscriptions)))
                self.link._set(client)
                notify("READY=1")
                await self.bridge.on_connected(self.link)
                async for msg in client.messages():
                    await self.bridge.on_message(msg)
            except (ConnectionError, OSError) as exc:
                log.warning("bus connection lost: %s", exc)
            finally:
                self.link._set(None)
                await client.close()
            log.warning("disconnected from edgebotd; reconnecting")
            await self.bridge.on_disconnected()
            if time.monotonic() - connected_at >= self.stable_s:
                delay = self.backoff_initial
            else:  # edgebotd went away soon after accepting us (failing at start?): keep backing off
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max)


BRIDGE_EPILOG = """\
environment:
  EDGEBOT_CONFIG            the config file (default /etc/edgebot/edgebot.toml)
  EDGEBOT_SOCKET            the bus socket (default: the config's [bus] socket)
  EDGEBOT_<SECTION>_<KEY>   any config key, e.g. EDGEBOT_LOG_LEVEL=DEBUG (docs/configuration.md)

exit codes:
  0 stopped by SIGTERM/SIGINT, 1 the bridge's own work failed, 2 bad arguments, 78 configuration error
"""


def base_parser(prog: str, description: str, examples: str = "") -> argparse.ArgumentParser:
    """The options every bridge takes; ``examples`` (lines of text) go first in the ``--help`` epilog."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                epilog=(f"examples:\n{examples}\n\n" if examples else "") + BRIDGE_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"{prog} {edgebot.__version__}")
    p.add_argument("--config", help="config file (default: $EDGEBOT_CONFIG or /etc/edgebot/edgebot.toml)")
    p.add_argument("--socket", help="bus socket (default: $EDGEBOT_SOCKET or [bus] socket)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return p


def bridge_main(parser: argparse.ArgumentParser, build: Callable[[argparse.Namespace, Config], Bridge],
                argv: Optional[Sequence[str]] = None, overrides: Callable[[argparse.Namespace], dict] = lambda a: {}) -> int:
    """Parse arguments, load config, build the bridge and supervise it until SIGTERM/SIGINT."""
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, overrides={"bus.socket": args.socket, "log.level": args.log_level,
                                                     **overrides(args)})
        setup_logging(config.get("log", "level"))
        bridge = build(args, config)
    except ConfigError as exc:
        setup_logging("INFO")
        log.error("configuration error: %s", exc)
        return EX_CONFIG

    async def main() -> int:
        sup = Supervisor(bridge, config.socket_path)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sup.stopping.set)
        try:
            await sup.run()
        except Exception as exc:  # noqa: BLE001 - report a bridge failure as an exit code
            log.error("%s failed: %s", bridge.client_name, exc)
            return 1
        notify("STOPPING=1")
        return 0

    return asyncio.run(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run a bridge: edgebot-serial, edgebot-speech-in or edgebot-speech-out")
