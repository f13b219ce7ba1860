"""The bus hub under bad input, peer checks, socket activation and systemd notification."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from edgebot.testing.script_model import DEFAULT_SCRIPT

from conftest import EDGEBOTD, BusConn, Daemon, NotifyListener

ANSWER = DEFAULT_SCRIPT.answer_text


def still_serving(daemon: Daemon) -> None:
    bus = daemon.connect()
    text, end = bus.answer("check", "still there?")
    assert text == ANSWER and end["data"]["reason"] == "stop", end
    bus.close()


@pytest.mark.parametrize("line, code", [
    (b"this is not json\n", "bad-json"),
    (b'"a string"\n', "bad-envelope"),
    (b'{"type": "fly", "data": {}}\n', "unknown-type"),
    (b'{"type": "ask", "data": {"text": "no id"}}\n', "bad-field"),
    (b'{"type": "ask", "data": {"id": 7, "text": "x"}}\n', "bad-field"),
    (b"\x00\xff\xfe\x80garbage\x01\x02\n", "bad-json"),
    (b'{"type": "answer-end", "data": {"id": "x", "reason": "stop"}}\n', "not-allowed"),
    (b'{"type": "ask", "data": {"id": "e", "text": "   "}}\n', "bad-field"),
])
def test_bad_lines_get_an_error_and_the_connection_stays_up(daemon: Daemon, line: bytes, code: str) -> None:
    bus = daemon.connect()
    bus.send_raw(line)
    err = bus.expect("error")
    assert err["data"]["code"] == code and err["data"]["message"]
    bus.send("ping", id="after")
    assert bus.expect("pong")["data"]["id"] == "after"  # same connection still works
    bus.close()
    still_serving(daemon)


def test_a_line_over_the_limit_is_refused_and_disconnected(daemon: Daemon) -> None:
    bus = daemon.connect()
    bus.send_raw(b'{"type": "ask", "data": {"id": "big", "text": "' + b"x" * (1 << 20) + b'"}}\n')
    err = bus.expect("error")
    assert err["data"]["code"] == "line-too-long"
    assert bus.recv() is None  # then the daemon closes the connection
    still_serving(daemon)


def test_a_silent_client_does_not_block_others(daemon: Daemon) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(daemon.socket)
    half = daemon.connect(hello=False)
    half.send_raw(b'{"type": "ask", "data": {"id": "half", "te')  # a line that never ends
    still_serving(daemon)
    silent.close()
    half.close()


def test_a_flooding_client_is_disconnected(daemon_factory, script_model: Path) -> None:
    d = daemon_factory(script_model, "[bus]\nclient_rate = 5.0\nclient_burst = 20\n")
    bus = d.connect()
    bus.send_raw(b'{"type": "ping", "data": {}}\n' * 200)
    events = []
    while (ev := bus.recv()) is not None:
        events.append(ev)
    assert events[-1]["type"] == "error" and events[-1]["data"]["code"] == "flood"
    assert sum(e["type"] == "pong" for e in events) <= 21
    still_serving(d)


def test_slow_reader_gets_merged_deltas_and_every_control_event(daemon: Daemon) -> None:
    reader = daemon.connect()
    reader.send("subscribe", types=["answer-start", "answer-delta", "answer-end"])
    reader.expect("ack")
    asker = daemon.connect()
    for i in range(5):
        asker.answer(f"merge-{i}", "What is 2+2?")
    asker.close()
    # the reader has not read anything yet; now it reads everything
    seen = {}
    for i in range(5):
        start = reader.expect("answer-start", id=f"merge-{i}")
        parts = []
        while (ev := reader.recv())["type"] == "answer-delta":
            parts.append(ev["data"]["text"])
        assert ev["type"] == "answer-end" and ev["data"]["id"] == start["data"]["id"]
        seen[i] = "".join(parts)
    assert all(text == ANSWER for text in seen.values())
    reader.close()


def test_socket_file_is_not_world_accessible(daemon: Daemon) -> None:
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o660


def test_peer_not_allowed_is_refused(daemon_factory, script_model: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another uid")
    public = Path(tempfile.mkdtemp(prefix="edgebot-peer-"))
    public.chmod(0o755)
    daemon = daemon_factory(script_model, socket_path=str(public / "bus.sock"))
    os.chmod(daemon.socket, 0o666)  # let uid 65534 reach the socket so the SO_PEERCRED check is what refuses it
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody and try the bus
            os.close(r)
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                bus = BusConn(daemon.socket, hello=False)
                bus.send("hello", client="intruder")
                os.write(w, json.dumps(bus.recv(10)).encode())
            except BaseException as exc:  # noqa: BLE001 - report, never raise out of the forked child
                os.write(w, json.dumps({"type": "child-failed", "data": {"message": repr(exc)}}).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as fh:
            reply = json.loads(fh.read())
        os.waitpid(pid, 0)
    finally:
        os.chmod(daemon.socket, 0o660)
    assert reply["type"] != "child-failed", reply
    assert reply["type"] == "error" and reply["data"]["code"] == "forbidden"
    assert "uid 65534 is not allowed" in reply["data"]["message"]


def test_ready_comes_after_loading_status(daemon: Daemon) -> None:
    msgs = daemon.notify.received
    loading = next(i for i, m in enumerate(msgs) if "STATUS=loading" in m)
    ready = next(i for i, m in enumerate(msgs) if "READY=1" in m)
    assert loading < ready
    bus = daemon.connect()  # once READY=1 has arrived, an ask is answered, never "not-ready"
    text, _ = bus.answer("after-ready", "hi")
    assert text == ANSWER
    bus.close()


def test_socket_activation_serves_the_passed_socket(tmp_path: Path, script_model: Path) -> None:
    path = str(tmp_path / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    notify = NotifyListener(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "LISTEN_FDS": "1", "EDGEBOT_BOARD": "generic-x86"}

    fd = listener.fileno()
    # fd 3 and LISTEN_PID = the daemon's own pid, exactly as systemd passes them (exec keeps the shell's pid)
    script = f'exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ exec {EDGEBOTD} --model "$0" --socket /nonexistent/x.sock'
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen(["/bin/bash", "-c", script, str(script_model)], env=env, pass_fds=(fd,),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        notify.wait_for("READY=1")
        listener.close()  # only the daemon holds it now
        bus = BusConn(path)
        text, end = bus.answer("sa", "What is 2+2?")
        assert text == ANSWER
        bus.close()
    finally:
        proc.terminate()
        code = proc.wait(15)
        notify.close()
        log.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert not os.path.exists("/nonexistent/x.sock")


def test_sigterm_ends_an_answer_in_flight_as_cancelled(daemon_factory, slow_loop_model: Path) -> None:
    d = daemon_factory(slow_loop_model)
    bus = d.connect()
    bus.ask("inflight", "count forever", max_tokens=4000)
    bus.expect("answer-delta", id="inflight")
    d.proc.terminate()
    end = bus.expect("answer-end", id="inflight")
    assert end["data"]["reason"] == "cancelled"
    assert d.proc.wait(15) == 0
    d.notify.wait_for("STOPPING=1")


def test_a_client_that_says_nothing_is_disconnected(daemon_factory, script_model: Path) -> None:
    d = daemon_factory(script_model, "[bus]\nfirst_message_s = 0.3\n")
    silent = d.connect(hello=False)
    err = silent.recv(10)
    assert err["type"] == "error" and err["data"]["code"] == "timeout"
    assert silent.recv(10) is None
    still_serving(d)


def test_connections_over_the_limit_are_refused(daemon_factory, script_model: Path) -> None:
    d = daemon_factory(script_model, "[bus]\nmax_clients = 2\n")
    a, b = d.connect(), d.connect()
    extra = d.connect(hello=False)
    err = extra.recv(10)
    assert err["type"] == "error" and err["data"]["code"] == "busy" and "max_clients" in err["data"]["message"]
    assert extra.recv(10) is None
    text, _ = a.answer("within-limit", "hi")
    assert text == ANSWER
    b.close()
    a.close()


def test_a_file_at_the_socket_path_is_not_deleted(tmp_path: Path, script_model: Path) -> None:
    precious = tmp_path / "bus.sock"
    precious.write_text("not a socket")
    r = subprocess.run([EDGEBOTD, "--model", str(script_model), "--socket", str(precious), "--board", "generic-x86"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and "exists and is not a socket" in r.stderr
    assert precious.read_text() == "not a socket"
