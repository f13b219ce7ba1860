"""Socket hijack in the development fallback (issue 12, item 7): a socket directory that another
user owns or can write is refused by edgebotd and by every client, with how to fix it; the hub's
re-bind never changes what a symlink points to. Real edgebotd, real edgebot-cli, real directories."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from edgebot.bus import hub as hubmod
from edgebot.bus.client import BusClient, BusUnavailable
from conftest import EDGEBOT_CLI, EDGEBOTD


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a directory owned by another user")


def start_edgebotd(sock: Path, model: Path, tmp: Path) -> "subprocess.CompletedProcess[str]":
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEBOT_", "NOTIFY_SOCKET"))}
    return subprocess.run([EDGEBOTD, "--model", str(model), "--socket", str(sock)],
                          env={**env, "EDGEBOT_BOARD": "generic-x86"}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("how", ["other-owner", "world-writable", "group-writable"])
def test_edgebotd_refuses_a_socket_directory_others_control(tmp_path: Path, script_model: Path, how: str) -> None:
    """What another user does when they create ``<tmp>/edgebot-<uid>/`` first."""
    needs_root()
    trap = tmp_path / "edgebot-0"
    trap.mkdir(mode=0o755)
    if how == "other-owner":
        os.chown(trap, 65534, 65534)
    else:
        trap.chmod(0o777 if how == "world-writable" else 0o775)
    res = start_edgebotd(trap / "edgebot" / "bus.sock", script_model, tmp_path)
    assert res.returncode == 78, res.stderr
    assert str(trap) in res.stderr and ("owned by uid 65534" in res.stderr or "writable by" in res.stderr)
    assert "remove that directory" in res.stderr  # says how to fix it
    assert not (trap / "edgebot" / "bus.sock").exists()


def test_clients_refuse_an_impostor_socket(tmp_path: Path) -> None:
    """An impostor's socket in a directory it owns: edgebot-cli never talks to it."""
    needs_root()
    trap = tmp_path / "edgebot-0"
    trap.mkdir(mode=0o755)
    os.chown(trap, 65534, 65534)
    impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    impostor.bind(str(trap / "bus.sock"))
    impostor.listen(4)
    try:
        import subprocess

        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEBOT_", "NOTIFY_SOCKET"))}
        res = subprocess.run([EDGEBOT_CLI, "--socket", str(trap / "bus.sock"), "ask", "hi"], env=env,
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 3, (res.stdout, res.stderr)
        assert "owned by uid 65534" in res.stderr and str(trap) in res.stderr
        impostor.settimeout(0.2)
        with pytest.raises(socket.timeout):
            impostor.accept()  # the client never even connected

        async def bridge_side() -> str:  # what every bridge's supervisor uses
            try:
                await BusClient.connect(str(trap / "bus.sock"), "edgebot-serial")
            except BusUnavailable as exc:
                return str(exc)
            return "connected"

        assert "owned by uid 65534" in asyncio.run(bridge_side())
    finally:
        impostor.close()


def test_rebind_never_follows_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The re-bind guard's race, made deterministic: right after the socket is bound, the path is
    swapped for a symlink to a root-owned 0600 file (what another user with write access to the
    directory could do). The file's mode and group must stay as they were."""
    precious = tmp_path / "precious"
    precious.write_text("secret")
    precious.chmod(0o600)
    before = os.stat(precious)
    path = str(tmp_path / "run" / "bus.sock")
    real_start = asyncio.start_unix_server

    async def bind_then_swap(*args, **kw):  # the interleaving the attacker wins, forced
        server = await real_start(*args, **kw)
        os.unlink(kw["path"])
        os.symlink(precious, kw["path"])
        return server

    monkeypatch.setattr(hubmod.asyncio, "start_unix_server", bind_then_swap)

    async def main() -> None:
        async def handler(conn, msg):
            return None

        h = hubmod.Hub(handler, hubmod.Limits(), [], [])
        try:
            await h._bind(path)
        except OSError:
            pass  # refusing is fine; changing the file is not
        finally:
            if h._server is not None:
                h._server.close()

    asyncio.run(main())
    after = os.stat(precious)
    assert stat.S_IMODE(after.st_mode) == 0o600 and after.st_gid == before.st_gid
