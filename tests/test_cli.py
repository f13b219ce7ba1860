"""edgebot-cli and the other commands as a person meets them: --version, --help, a question from
stdin, bash completion (real processes, a real edgebotd, a real pty, real bash)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgebot
from conftest import BIN, EDGEBOT_CLI, Daemon
from edgebot.config.loader import tomllib  # tomli on Python 3.10
from edgebot.testing.script_model import DEFAULT_SCRIPT

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
ANSWER = DEFAULT_SCRIPT.answer_text


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_command_has_version_and_a_helpful_help(script: str) -> None:
    r = subprocess.run([str(BIN / script), "--version"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, f"{script} {edgebot.__version__}"), r.stderr
    r = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for part in ("examples:", "environment:", "EDGEBOT_SOCKET", "EDGEBOT_CONFIG", "exit codes:"):
        assert part in r.stdout, f"{script} --help lacks {part!r}"


def test_ask_help_says_how_to_ask_from_stdin_and_the_exit_codes() -> None:
    r = subprocess.run([EDGEBOT_CLI, "ask", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "stdin" in r.stdout and "130 interrupted" in r.stdout


def test_ask_reads_the_question_from_stdin(daemon: Daemon) -> None:
    for args in (("ask",), ("ask", "-")):
        r = daemon.cli(*args, input="What is 2+2?\n")
        assert (r.returncode, r.stdout) == (0, ANSWER + "\n"), r.stderr
    r = daemon.cli("ask", "--think", input="Ünïcödé 질문?\n")  # and stays text, thinking on stderr
    assert r.returncode == 0 and r.stdout == ANSWER + "\n" and r.stderr.strip()


def test_ask_without_a_question_on_a_terminal_is_a_usage_error(daemon: Daemon) -> None:
    master, slave = os.openpty()  # stdin is a terminal: nothing to read, say how to ask
    try:
        for args in (("ask",), ("ask", "-")):
            r = daemon.cli(*args, stdin=slave)
            assert r.returncode == 2 and "give the question" in r.stderr, r.stderr
    finally:
        os.close(master)
        os.close(slave)
    r = daemon.cli("ask", input="   \n")  # piped, but empty
    assert r.returncode == 2 and "the question is empty" in r.stderr


def test_cli_never_imports_asyncio_for_ask_and_status(daemon: Daemon) -> None:
    code = ("import sys; from edgebot import cli; rc = cli.main(sys.argv[1:]); "
            "print(rc, sorted(m for m in ('asyncio', 'edgebot.bus.messages', 'edgebot.bus.codec', 'edgebot.config', "
            "'llama_cpp', 'numpy') if m in sys.modules))")
    env = {**daemon.env, "EDGEBOT_SOCKET": daemon.socket}
    for args in (["status"], ["ask", "hi"]):
        r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)
        assert r.stdout.strip().splitlines()[-1] == "0 []", r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_options_and_choices() -> None:
    script = subprocess.run([EDGEBOT_CLI, "completion", "bash"], capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "complete -F _edgebot_cli edgebot-cli" in script.stdout
    cases = {"edgebot-cli a": "ask actions", "edgebot-cli ask --t": "--think", "edgebot-cli st": "status",
             "edgebot-cli --socket /tmp/x model pull --la": "--lang", "edgebot-cli model pull --lang ": "en zh",
             "edgebot-cli model ": "--config --help pull list verify", "edgebot-cli doctor --j": "--json",
             "edgebot-cli completion ": "bash"}
    probe = ['t() { COMP_WORDS=($1); [ "${1: -1}" = " " ] && COMP_WORDS+=(""); COMP_CWORD=$((${#COMP_WORDS[@]}-1));'
             ' _edgebot_cli; echo "${COMPREPLY[*]}"; }']
    probe += [f"t '{line}'" for line in cases]
    r = subprocess.run(["bash", "-c", script.stdout + "\n" + "\n".join(probe)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert dict(zip(cases, r.stdout.splitlines())) == cases
