"""Shared test harness: script models, a real edgebotd subprocess, a NOTIFY_SOCKET listener and a
blocking bus client. Everything waits on events with timeouts; nothing sleeps to wait."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from edgebot.testing.qwen2_vocab import VocabMissing, find_vocab, load_r1_vocab
from edgebot.testing.script_model import DEFAULT_SCRIPT, REAL_VOCAB_SCRIPT, write_script_model

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EDGEBOTD = str(BIN / "edgebotd")
EDGEBOT_CLI = str(BIN / "edgebot-cli")


def apt_line() -> str:
    """The one command that installs every Debian package the tests use (deploy/test-packages.txt,
    also read by deploy/dev-setup.sh and .ci/run): the reason a test skips when one is missing."""
    text = (REPO / "deploy" / "test-packages.txt").read_text()
    pkgs = [word for line in text.splitlines() for word in line.split("#", 1)[0].split()]
    return "sudo apt-get install -y --no-install-recommends " + " ".join(pkgs)


APT_LINE = apt_line()
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: systemd-tmpfiles --root gives the scratch root's "
                                                          "directories to the edgebot user (chown)")


@pytest.fixture(scope="session")
def script_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default script: thinking, a split ``</think>``, then "The answer is 4." and EOS."""
    return write_script_model(tmp_path_factory.mktemp("models") / "script.gguf")


@pytest.fixture(scope="session")
def slow_loop_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bigger model (~300 tokens/s here) whose answer never ends: for cancel, priority, watchdog."""
    return write_script_model(tmp_path_factory.mktemp("models") / "slow-loop.gguf",
                              replace(DEFAULT_SCRIPT, loop=True), n_embd=512, n_layers=4, n_ff=2048)


@pytest.fixture(scope="session")
def qwen2_vocab() -> Path:
    """The real Qwen2 vocabulary file (deploy/dev-setup.sh fetches it); skipped, or failed under CI, without it."""
    try:
        return find_vocab()
    except VocabMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def real_script_model(tmp_path_factory: pytest.TempPathFactory, qwen2_vocab: Path) -> Path:
    """``REAL_VOCAB_SCRIPT`` over the real DeepSeek-R1-Distill-Qwen vocabulary: real token counts (~12 MB)."""
    return write_script_model(tmp_path_factory.mktemp("models") / "real-script.gguf", REAL_VOCAB_SCRIPT,
                              vocab=load_r1_vocab(qwen2_vocab))


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class NotifyListener:
    """A real datagram socket at ``$NOTIFY_SOCKET``, collecting what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """Block until a message containing a line starting with ``prefix`` arrives."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.received:
                if any(line.startswith(prefix) for line in msg.splitlines()):
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {prefix!r} within {timeout} s; got {self.received}")
            self.sock.settimeout(left)
            try:
                self.received.append(self.sock.recv(4096).decode())
            except socket.timeout:
                continue

    def wait_idle(self, timeout: float = 30.0) -> dict[str, Any]:
        """Ask for status until the engine reports idle (no job, cache re-basing done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send("status")
            report = self.expect("status-report")["data"]
            if report["queue"]["idle"]:
                return report
        raise TimeoutError("engine not idle")

    def drain(self) -> None:
        """Forget everything received so far, including datagrams still in the socket buffer."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        self.received.clear()

    def close(self) -> None:
        self.sock.close()


class BusConn:
    """A blocking JSONL bus client for tests."""

    def __init__(self, path: str, hello: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        if hello:
            self.send("hello", client="test")
            assert self.expect("welcome")["type"] == "welcome"

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, type_: str, **data: Any) -> None:
        self.send_raw((json.dumps({"type": type_, "data": data}) + "\n").encode())

    def recv(self, timeout: float = 30.0) -> Optional[dict[str, Any]]:
        """The next event, or None when the daemon closed the connection."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no event within {timeout} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def expect(self, type_: str, timeout: float = 30.0, **match: Any) -> dict[str, Any]:
        """Skip events until one of ``type_`` whose data matches ``match``."""
        while True:
            ev = self.recv(timeout)
            if ev is None:
                raise ConnectionError(f"closed while waiting for {type_}")
            if ev["type"] == type_ and all(ev["data"].get(k) == v for k, v in match.items()):
                return ev

    def ask(self, id_: str, text: str, **extra: Any) -> None:
        self.send("ask", id=id_, text=text, **extra)

    def answer(self, id_: str, text: str, timeout: float = 60.0, **extra: Any) -> tuple[str, dict[str, Any]]:
        """Ask and collect the answer text and the answer-end event."""
        self.ask(id_, text, **extra)
        parts = []
        while True:
            ev = self.recv(timeout)
            assert ev is not None, "connection closed mid-answer"
            if ev["data"].get("id") != id_:
                continue
            if ev["type"] == "answer-delta":
                parts.append(ev["data"]["text"])
            elif ev["type"] == "answer-end":
                return "".join(parts), ev
            elif ev["type"] == "error":
                return "", ev

    def wait_idle(self, timeout: float = 30.0) -> dict[str, Any]:
        """Ask for status until the engine reports idle (no job, cache re-basing done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send("status")
            report = self.expect("status-report")["data"]
            if report["queue"]["idle"]:
                return report
            time.sleep(0.01)  # pacing, not waiting: unpaced polling trips the bus's flood limit (200 lines/s)
        raise TimeoutError("engine not idle")

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """A real edgebotd subprocess with its own config, socket and NOTIFY_SOCKET."""

    def __init__(self, tmp: Path, model: Path, config: str = "", env: Optional[dict[str, str]] = None,
                 wait_ready: bool = True, extra_args: Optional[list[str]] = None,
                 socket_path: Optional[str] = None) -> None:
        self.tmp = tmp
        self.socket = socket_path or str(tmp / "bus.sock")
        self.notify = NotifyListener(tmp / "notify.sock")
        cfg = tmp / "edgebot.toml"
        cfg.write_text(config)
        self.env = {**os.environ, "NOTIFY_SOCKET": self.notify.path, "EDGEBOT_BOARD": "generic-x86", **(env or {})}
        self.env.pop("EDGEBOT_SOCKET", None)
        self.log = open(tmp / "edgebotd.log", "wb")
        self.proc = subprocess.Popen([EDGEBOTD, "--config", str(cfg), "--model", str(model), "--socket", self.socket,
                                      *(extra_args or [])], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if wait_ready:
            self.notify.wait_for("READY=1", timeout=60)

    def connect(self, hello: bool = True) -> BusConn:
        return BusConn(self.socket, hello)

    def cli(self, *args: str, timeout: float = 60.0, **kw: Any) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "EDGEBOT_SOCKET": self.socket}
        env.pop("NOTIFY_SOCKET", None)
        return subprocess.run([EDGEBOT_CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)

    def log_text(self) -> str:
        self.log.flush()
        return (self.tmp / "edgebotd.log").read_text(errors="replace")

    def stop(self) -> int:
        stop_process(self.proc)
        self.notify.close()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def daemon_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``daemon_factory(model, config="...")`` starts an edgebotd; all are stopped after the test."""
    started: list[Daemon] = []

    def make(model: Path, config: str = "", **kw: Any) -> Daemon:
        d = Daemon(tmp_path_factory.mktemp("edgebotd"), model, config, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, script_model: Path) -> Iterator[Daemon]:
    """One shared edgebotd on the script model (tests that do not change its config)."""
    d = Daemon(tmp_path_factory.mktemp("edgebotd"), script_model)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def slow_daemon(tmp_path_factory: pytest.TempPathFactory, slow_loop_model: Path) -> Iterator[Daemon]:
    """A shared edgebotd on the slow looping model, queue of 2, watchdog every 50 ms."""
    d = Daemon(tmp_path_factory.mktemp("edgebotd"), slow_loop_model,
               "[engine]\nqueue_max = 2\n[llm]\nn_ctx = 4096\n", env={"WATCHDOG_USEC": "100000"})
    yield d
    d.stop()


from voice_harness import pulse  # noqa: E402,F401 - the session's PulseAudio server for the voice tests
