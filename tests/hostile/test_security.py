"""Security at the doors (the bus's SO_PEERCRED refusal and socket mode 0660 are tested in
tests/test_bus.py; the HTTP token's 401 in tests/test_http_api.py; undeclared actions and bad
arguments in tests/test_actions_e2e.py). Here: the socket mode holds under a permissive umask, a
non-loopback HTTP API without a token never starts, and nothing the model writes is run: no module
on the answer path can start a process, and an answer full of shell syntax and an undeclared
action call arrives as text."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from edgebot.testing.script_model import DEFAULT_SCRIPT, write_script_model
from conftest import EDGEBOTD, REPO

PROCESS_CALLS = {("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execvp"), ("os", "execve"),
                 ("os", "execl"), ("os", "execlp"), ("os", "spawnv"), ("os", "posix_spawn"), ("pty", "spawn")}
# Local admin commands, never given model text: `edgebot-cli doctor` runs diagnostics tools.
MAY_START_PROCESSES = {"edgebot/doctor/software.py", "edgebot/doctor/system.py"}


def test_no_module_on_the_answer_path_can_start_a_process_or_evaluate_code() -> None:
    offenders = []
    for path in sorted((REPO / "edgebot").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel in MAY_START_PROCESSES:
            continue
        tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("subprocess", "pty", "pickle", "marshal") for n in names):
                    offenders.append(f"{rel}:{node.lineno} imports {names}")
            elif isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile", "__import__"):
                    offenders.append(f"{rel}:{node.lineno} calls {f.id}")
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                        and (f.value.id, f.attr) in PROCESS_CALLS:
                    offenders.append(f"{rel}:{node.lineno} calls {f.value.id}.{f.attr}")
    assert not offenders, offenders


HOSTILE_ANSWER = ("$(touch {canary}) ", "`touch {canary}`; ", "touch {canary} && ",
                  '{{"action": "shell", "args": {{"cmd": "touch {canary}"}}}}', " | sh")


def test_model_output_with_shell_syntax_and_an_undeclared_action_stays_text(tmp_path: Path,
                                                                             daemon_factory) -> None:
    canary = Path(f"/tmp/edgebot-canary-{os.getpid()}")  # short: each piece is one token of the test model
    canary.unlink(missing_ok=True)
    answer = tuple(p.format(canary=canary) for p in HOSTILE_ANSWER)
    model = write_script_model(tmp_path / "hostile.gguf", replace(DEFAULT_SCRIPT, answer=answer))
    d = daemon_factory(model)
    watch = d.connect()
    watch.send("subscribe", types=["action", "action-run", "say"])
    watch.expect("ack")
    res = d.cli("ask", "do something")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "".join(answer) + "\n"  # verbatim, as text
    assert not canary.exists()
    watch.send("ping", id="fence")
    ev = watch.recv(30)
    assert ev is not None and ev["type"] == "pong", ev  # no action, action-run or say was published
    watch.close()


def test_socket_mode_is_0660_even_with_umask_0(daemon_factory, script_model: Path) -> None:
    old = os.umask(0)
    try:
        d = daemon_factory(script_model)
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(d.socket).st_mode)
    assert mode == 0o660, oct(mode)
    parent = stat.S_IMODE(os.stat(os.path.dirname(d.socket)).st_mode)
    assert not parent & 0o002, oct(parent)  # nobody else can replace the socket file


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10"])
def test_http_beyond_loopback_without_a_token_never_starts(tmp_path: Path, script_model: Path, host: str) -> None:
    pytest.importorskip("aiohttp")
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text(f'[http]\nenabled = true\nhost = "{host}"\nport = 18089\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEBOT_", "NOTIFY_SOCKET"))}
    res = subprocess.run([EDGEBOTD, "--config", str(cfg), "--model", str(script_model),
                          "--socket", str(tmp_path / "bus.sock")], env={**env, "EDGEBOT_BOARD": "generic-x86"},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 78, res.stderr
    assert "token" in res.stderr and not (tmp_path / "bus.sock").exists()


def test_http_refuses_without_the_token_and_with_a_wrong_one(daemon_factory, script_model: Path) -> None:
    pytest.importorskip("aiohttp")
    import http.client
    import socket as socketlib

    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon_factory(script_model, f'[http]\nenabled = true\nport = {port}\ntoken = "s3cret"\n')
    body = '{"model": "x", "messages": [{"role": "user", "content": "hi"}]}'
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                    {"Authorization": "Bearer s3cret\x00"}):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json", **headers})
        assert conn.getresponse().status in (400, 401), headers  # a NUL in a header: 400 from aiohttp
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body,
                 {"Content-Type": "application/json", "Authorization": "Bearer s3cret"})
    assert conn.getresponse().status == 200
    conn.close()
