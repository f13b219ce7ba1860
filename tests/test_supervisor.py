"""The shared bridge supervisor against a real edgebotd that starts late, dies and comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edgebot.bridges.supervisor import Bridge, BusLink, Supervisor
from edgebot.bus import messages as m

from conftest import Daemon


class RecordingBridge(Bridge):
    client_name = "test-bridge"
    subscriptions = ("say",)

    def __init__(self) -> None:
        self.connects = 0
        self.disconnects = 0
        self.said: list[str] = []
        self.event = asyncio.Event()

    async def on_connected(self, link: BusLink) -> None:
        self.connects += 1
        self.event.set()

    async def on_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Say):
            self.said.append(msg.text)
            self.event.set()

    async def on_disconnected(self) -> None:
        self.disconnects += 1
        self.event.set()


async def until(bridge: RecordingBridge, check, timeout: float = 30.0) -> None:
    async def loop() -> None:
        while not check():
            bridge.event.clear()
            await bridge.event.wait()
    await asyncio.wait_for(loop(), timeout)


def test_reconnects_across_daemon_restarts(tmp_path: Path, script_model: Path) -> None:
    sock = str(tmp_path / "bus.sock")

    async def scenario() -> None:
        bridge = RecordingBridge()
        sup = Supervisor(bridge, sock, backoff_initial=0.05, backoff_max=0.2)
        task = asyncio.create_task(sup.run())
        assert not sup.link.connected  # nothing to connect to yet: the supervisor keeps trying
        first = await asyncio.to_thread(Daemon, tmp_path / "a", script_model, socket_path=sock)
        await until(bridge, lambda: bridge.connects == 1)
        cli = await asyncio.to_thread(first.cli, "say", "hello bridge")
        assert cli.returncode == 0, cli.stderr
        await until(bridge, lambda: bridge.said == ["hello bridge"])
        await asyncio.to_thread(first.stop)
        await until(bridge, lambda: bridge.disconnects == 1)
        assert await sup.link.send(m.Ping()) is False  # sending while away says so, never hangs
        second = await asyncio.to_thread(Daemon, tmp_path / "b", script_model, socket_path=sock)
        await until(bridge, lambda: bridge.connects == 2)
        assert await sup.link.send(m.Ping(id="back")) is True
        sup.stopping.set()
        await asyncio.wait_for(task, 10)
        await asyncio.to_thread(second.stop)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    asyncio.run(scenario())


def test_say_without_a_speaker_is_an_error(daemon: Daemon) -> None:
    r = daemon.cli("say", "nobody listens")
    assert r.returncode == 1 and "no speech-out bridge is connected" in r.stderr
