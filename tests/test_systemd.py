"""edgebotd and the bridges as systemd runs them, with the real mechanisms outside a booted systemd:
journald's stream (``JOURNAL_STREAM`` names stderr's device and inode), socket activation (a
listening socket passed as fd 3 with ``LISTEN_FDS``/``LISTEN_PID``), ``NOTIFY_SOCKET`` and the
kernel's seccomp filter that ``RestrictAddressFamilies=`` installs. tests/appliance/ checks the
same under systemd itself, in a booted container."""

from __future__ import annotations

import os
import platform
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EDGEBOT_CLI, EDGEBOTD, BusConn, NotifyListener, stop_process

ANSWER = "The answer is 4."


def journal_env(path: Path) -> dict[str, str]:
    """``JOURNAL_STREAM`` naming the file that will be the child's stderr, as systemd sets it."""
    st = path.stat()
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def run_logging(tmp: Path, stream_is_stderr: bool) -> list[str]:
    err = tmp / "stderr"
    err.touch()
    other = tmp / "other"
    other.touch()
    code = ("import logging; from edgebot.systemd import setup_logging; setup_logging('DEBUG');"
            "log = logging.getLogger('x'); log.debug('d'); log.info('i'); log.warning('w'); log.error('e');"
            "log.critical('c');\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    log.exception('boom')")
    env = {**os.environ, **journal_env(err if stream_is_stderr else other)}
    with open(err, "wb") as fh:
        subprocess.run([sys.executable, "-c", code], env=env, stderr=fh, timeout=60, check=True)
    return err.read_text().splitlines()


def test_journald_priorities_without_systemd_python(tmp_path: Path) -> None:
    lines = run_logging(tmp_path, stream_is_stderr=True)
    assert lines[:5] == ["<7>DEBUG x: d", "<6>INFO x: i", "<4>WARNING x: w", "<3>ERROR x: e", "<2>CRITICAL x: c"]
    tb = lines[5:]
    assert tb[0] == "<3>ERROR x: boom" and len(tb) > 3
    assert all(line.startswith("<3>") for line in tb), tb  # a traceback's lines stay at priority err
    assert tb[-1] == "<3>ZeroDivisionError: division by zero"


def test_no_priority_prefix_when_stderr_is_not_the_journal(tmp_path: Path) -> None:
    lines = run_logging(tmp_path, stream_is_stderr=False)
    assert lines[3] == "ERROR x: e" and not any(line.startswith("<") for line in lines)


def test_a_config_error_reaches_the_journal_as_an_error(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    err.touch()
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text("[llm]\nn_ctx = -5\n")
    with open(err, "wb") as fh:
        r = subprocess.run([EDGEBOTD, "--config", str(cfg)], env={**os.environ, **journal_env(err)}, stderr=fh,
                           timeout=60)
    assert r.returncode == 78
    text = err.read_text()
    assert text.startswith("<3>ERROR edgebot.daemon: configuration error: ") and "n_ctx" in text, text


# -- socket activation ------------------------------------------------------------------------------

class Activated:
    """edgebotd started the way systemd starts it for a socket unit: a listening socket that
    already holds the waiting client's connection, passed as fd 3 with LISTEN_FDS/LISTEN_PID."""

    def __init__(self, tmp: Path, listener: socket.socket, args: list[str], env: dict[str, str]) -> None:
        self.notify = NotifyListener(tmp / "notify.sock")
        self.log_path = tmp / "edgebotd.log"
        self.log = open(self.log_path, "wb")
        fd = listener.fileno()
        script = f'exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ exec "$0" "$@"'
        full_env = {**os.environ, "NOTIFY_SOCKET": self.notify.path, "LISTEN_FDS": "1",
                    "EDGEBOT_BOARD": "generic-x86", **env}
        self.proc = subprocess.Popen(["/bin/bash", "-c", script, EDGEBOTD, "--socket", "/nonexistent/x.sock", *args],
                                     env=full_env, pass_fds=(fd,), stdout=self.log, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        code = stop_process(self.proc)
        self.notify.close()
        self.log.close()
        return code


def listening(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    return listener


def test_the_ask_that_starts_edgebotd_is_answered_once_the_model_is_loaded(tmp_path: Path,
                                                                           script_model: Path) -> None:
    path = tmp_path / "bus.sock"
    listener = listening(path)
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    env = {**os.environ, "EDGEBOT_SOCKET": str(path)}
    env.pop("NOTIFY_SOCKET", None)
    # the CLI connects first (systemd would start edgebotd on this connection), then edgebotd starts
    cli = subprocess.Popen([EDGEBOT_CLI, "ask", "What is 2+2?"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    daemon = Activated(tmp_path, listener, ["--model", str(script_model)], {"EDGEBOT_FAULT_HOLD_LOAD": str(fifo)})
    listener.close()
    try:
        assert cli.stderr is not None
        ready, _, _ = select.select([cli.stderr], [], [], 60)
        assert ready, "the CLI said nothing while the model was held back"
        waiting = cli.stderr.readline()
        assert waiting.startswith("edgebot-cli: edgebotd is loading its model; the question waits up to 300 s"), \
            waiting + daemon.log_text()
        assert cli.poll() is None  # still waiting, not refused
        with open(fifo, "w") as fh:  # the model may load now
            fh.write("go\n")
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err + daemon.log_text()
        assert out.strip() == ANSWER
        daemon.notify.wait_for("READY=1")
    finally:
        if cli.poll() is None:
            cli.kill()
        assert daemon.stop() == 0, daemon.log_text()


def test_wait_ready_zero_keeps_the_old_refusal(tmp_path: Path, script_model: Path) -> None:
    path = tmp_path / "bus.sock"
    listener = listening(path)
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    daemon = Activated(tmp_path, listener, ["--model", str(script_model)], {"EDGEBOT_FAULT_HOLD_LOAD": str(fifo)})
    listener.close()
    try:
        env = {**os.environ, "EDGEBOT_SOCKET": str(path)}
        r = subprocess.run([EDGEBOT_CLI, "ask", "--wait-ready", "0", "What is 2+2?"], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and "not-ready" in r.stderr, r.stderr
    finally:
        with open(fifo, "w") as fh:
            fh.write("go\n")
        daemon.stop()


def test_a_config_error_under_activation_tells_the_waiting_client_and_empties_the_queue(tmp_path: Path) -> None:
    """The queued connection is answered and closed, so systemd is not asked to start edgebotd again
    at once (which ran into the start limit and took the bus socket down)."""
    path = tmp_path / "bus.sock"
    listener = listening(path)
    waiting = BusConn(str(path), hello=False)
    waiting.send("hello", client="bridge")
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text("[llm]\nn_ctx = -5\n")
    daemon = Activated(tmp_path, listener, ["--config", str(cfg)], {})
    try:
        assert daemon.proc.wait(60) == 78, daemon.log_text()
        ev = waiting.recv(10)
        assert ev is not None and ev["type"] == "error" and ev["data"]["code"] == "not-ready", ev
        assert ev["data"]["message"].startswith("edgebotd cannot start: configuration error: ")
        assert "n_ctx" in ev["data"]["message"] and "systemctl restart edgebot" in ev["data"]["message"]
        assert waiting.recv(10) is None  # closed
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing left waiting: no immediate re-activation
            listener.accept()
        assert "told 1 waiting client(s) why edgebotd cannot start" in daemon.log_text()
        daemon.notify.wait_for("STATUS=configuration error: ")
    finally:
        waiting.close()
        listener.close()
        daemon.stop()


def test_the_cli_says_why_a_refusing_daemon_cannot_start(tmp_path: Path) -> None:
    path = tmp_path / "bus.sock"
    listener = listening(path)
    env = {**os.environ, "EDGEBOT_SOCKET": str(path)}
    cli = subprocess.Popen([EDGEBOT_CLI, "ask", "hi"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text("[llm]\nn_ctx = -5\n")
    # the CLI's connection must be queued before edgebotd drains the socket
    deadline = time.monotonic() + 30
    while not select.select([listener], [], [], 0)[0]:
        assert time.monotonic() < deadline and cli.poll() is None, "the CLI never connected"
        select.select([listener], [], [], 0.05)
    daemon = Activated(tmp_path, listener, ["--config", str(cfg)], {})
    listener.close()
    try:
        _, err = cli.communicate(timeout=60)
        assert cli.returncode == 3, err
        assert "edgebotd refused the connection: edgebotd cannot start: configuration error" in err, err
    finally:
        daemon.stop()


# -- the HTTP listener: a socket that cannot be opened is an error, not a silent "ready" -------------

AUDIT_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}  # (AUDIT_ARCH_*, __NR_socket)


def seccomp_wrapper() -> str:
    """Python source that forbids socket(AF_INET/AF_INET6) with EAFNOSUPPORT through a seccomp
    filter, as systemd's RestrictAddressFamilies=AF_UNIX does, then execs argv[1:]."""
    arch, nr = AUDIT_ARCH[platform.machine()]
    return f"""
import ctypes, os, struct, sys
def ins(code, jt, jf, k): return struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([
    ins(0x20, 0, 0, 4), ins(0x15, 0, 5, {arch}),       # arch == native, else allow
    ins(0x20, 0, 0, 0), ins(0x15, 0, 3, {nr}),          # nr == socket, else allow
    ins(0x20, 0, 0, 16),                                 # args[0] (the family, low 32 bits)
    ins(0x15, 2, 0, 2), ins(0x15, 1, 0, 10),             # AF_INET or AF_INET6: deny
    ins(0x06, 0, 0, 0x7fff0000),                         # allow
    ins(0x06, 0, 0, 0x00050000 | 97),                    # deny: EAFNOSUPPORT
])
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                   # PR_SET_NO_NEW_PRIVS
fbuf = ctypes.create_string_buffer(fprog)
assert libc.prctl(22, 2, ctypes.c_void_p(ctypes.addressof(fbuf)), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_seccomp_wrapper_forbids_inet_sockets() -> None:
    if platform.machine() not in AUDIT_ARCH:
        pytest.skip(f"no seccomp numbers for {platform.machine()} here")
    probe = ("import socket\ntry:\n    socket.socket(socket.AF_INET)\n    print('allowed')\n"
             "except OSError as e:\n    print(e.errno)\nsocket.socket(socket.AF_UNIX).close()\n")
    r = subprocess.run([sys.executable, "-c", seccomp_wrapper(), sys.executable, "-c", probe], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "97", r.stdout + r.stderr


def test_http_listener_that_cannot_be_opened_exits_78_and_never_reports_ready(tmp_path: Path,
                                                                               script_model: Path) -> None:
    pytest.importorskip("aiohttp")
    if platform.machine() not in AUDIT_ARCH:
        pytest.skip(f"no seccomp numbers for {platform.machine()} here")
    notify = NotifyListener(tmp_path / "notify.sock")
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text("[http]\nenabled = true\nport = 18080\n")  # never bound: no AF_INET socket can be made
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "EDGEBOT_BOARD": "generic-x86"}
    try:
        r = subprocess.run([sys.executable, "-c", seccomp_wrapper(), EDGEBOTD, "--config", str(cfg), "--model",
                            str(script_model), "--socket", str(tmp_path / "bus.sock")], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 78, r.stderr
        assert "cannot serve HTTP on 127.0.0.1:18080: no socket could be opened" in r.stderr, r.stderr
        assert "RestrictAddressFamilies=" in r.stderr and "--http" in r.stderr
        notify.sock.setblocking(False)
        got = []
        while True:
            try:
                got.append(notify.sock.recv(4096).decode())
            except BlockingIOError:
                break
        assert not any("READY=1" in msg for msg in got), got
    finally:
        notify.close()
