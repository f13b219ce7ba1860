"""edgebotd with ``[llm] backend = "rkllm"`` on the FAKE librkllmrt.so, end to end through the bus and
edgebot-cli: streaming, the think splitter and budget, stats, follow-ups, cancel mid-reply, and the
start-up errors (wrong runtime version, missing library or model) that end edgebotd with 78.

Proves the wiring and the binding, not the NPU (docs/npu.md says what only a board can show)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon
from rkllm_harness import (ANSWER, SCRIPT, THINK_TOKENS, THINKING, FakeLibs, fake_libs, read_log, runs,
                           write_fake_model)

__all__ = ["fake_libs"]

pytestmark = pytest.mark.timeout(120)


def rkllm_daemon(factory: Any, libs: FakeLibs, model: Path, log: Path, extra: str = "", lib: Any = None,
                 **kw: Any) -> Daemon:
    config = f'[llm]\nbackend = "rkllm"\nn_ctx = 2048\n{extra}\n[rkllm]\nlibrary = "{lib or libs.pinned}"\n'
    return factory(model, config, env={"FAKE_RKLLM_LOG": str(log)}, **kw)


def events_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def text_of(events: list[dict[str, Any]], type_: str) -> str:
    return "".join(e["data"]["text"] for e in events if e["type"] == type_)


def test_streams_an_answer_with_thinking_split_off_and_stats(daemon_factory: Any, fake_libs: FakeLibs,
                                                             tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    d = rkllm_daemon(daemon_factory, fake_libs, write_fake_model(tmp_path / "r1.rkllm"), log)
    r = d.cli("ask", "What is 2+2?")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ANSWER + "\n" and "</th" not in r.stdout and THINKING[:8] not in r.stdout + r.stderr
    r = d.cli("ask", "--think", "--json", "What is 2+2?")
    events = events_of(r.stdout)
    assert text_of(events, "think-delta") == THINKING + "\n" and text_of(events, "answer-delta") == ANSWER
    assert len([e for e in events if e["type"] == "answer-delta"]) >= 3  # streamed, not one block
    stats = events[-1]["data"]["stats"]
    assert events[-1]["data"]["reason"] == "stop"
    assert stats["completion_tokens"] == len(SCRIPT) and stats["think_tokens"] == len(THINK_TOKENS)
    sent = [c.prompt() for c in runs(read_log(log))]
    assert stats["prompt_tokens"] == (len(sent[-1].encode()) + 3) // 4  # the runtime's own count
    assert stats["ttft_ms"] is not None and stats["answer_ms"] >= stats["ttft_ms"] and stats["tokens_per_s"] > 0
    assert "RKLLM runtime 1.3.0" in d.log_text() and "NPU driver 0.9.8" in d.log_text()
    conn = d.connect()
    conn.send("status")
    assert conn.expect("status-report")["data"]["model"] == str(tmp_path / "r1.rkllm")


def test_follow_up_in_a_session_sends_only_the_new_turn(daemon_factory: Any, fake_libs: FakeLibs,
                                                        tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    d = rkllm_daemon(daemon_factory, fake_libs, write_fake_model(tmp_path / "r1.rkllm"), log)
    conn = d.connect()
    first, end1 = conn.answer("a1", "What is 2+2?", session="cli:t")
    conn.wait_idle()
    second, end2 = conn.answer("a2", "And 3+3?", session="cli:t")
    assert first == second == ANSWER
    assert end1["data"]["stats"]["cached_tokens"] == 0 and end2["data"]["stats"]["cached_tokens"] > 0
    sent = [c.prompt() for c in runs(read_log(log))]
    assert sent[1] == "<｜end▁of▁sentence｜><｜User｜>And 3+3?<｜Assistant｜><think>\n"


def test_think_budget_closes_thinking_by_rerunning(daemon_factory: Any, fake_libs: FakeLibs, tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    d = rkllm_daemon(daemon_factory, fake_libs, write_fake_model(tmp_path / "r1.rkllm"), log,
                     "think_budget = {cli = 3}")
    events = events_of(d.cli("ask", "--think", "--json", "What is 2+2?").stdout)
    assert text_of(events, "think-delta") == "".join(THINK_TOKENS[:3]) + "\n"
    assert text_of(events, "answer-delta") == ANSWER and events[-1]["data"]["stats"]["think_tokens"] == 3
    calls = read_log(log)
    assert [c.name for c in calls if c.name in ("run", "abort")][:3] == ["run", "abort", "run"]
    assert list(runs(calls))[1].prompt().endswith("".join(THINK_TOKENS[:3]) + "\n</think>")


def test_think_budget_zero_closes_thinking_in_the_prompt(daemon_factory: Any, fake_libs: FakeLibs,
                                                          tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    d = rkllm_daemon(daemon_factory, fake_libs, write_fake_model(tmp_path / "r1.rkllm"), log,
                     "think_budget = {cli = 0}")
    events = events_of(d.cli("ask", "--think", "--json", "What is 2+2?").stdout)
    assert text_of(events, "think-delta") == "" and text_of(events, "answer-delta") == ANSWER
    assert events[-1]["data"]["stats"]["think_tokens"] == 0
    calls = read_log(log)
    assert [c.name for c in calls if c.name in ("run", "abort")] == ["run"]  # nothing to re-run
    assert next(runs(calls)).prompt().endswith("<｜Assistant｜><think>\n\n</think>")


def test_cancel_mid_reply(daemon_factory: Any, fake_libs: FakeLibs, tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    model = write_fake_model(tmp_path / "loop.rkllm", loop=True, token_delay_us=5000)
    d = rkllm_daemon(daemon_factory, fake_libs, model, log)
    conn = d.connect()
    conn.ask("c1", "count forever")
    deltas = 0
    while deltas < 3:
        ev = conn.recv()
        assert ev is not None
        deltas += ev["type"] == "answer-delta"
    conn.send("cancel", id="c1")
    end = conn.expect("answer-end", id="c1")
    assert end["data"]["reason"] == "cancelled"
    assert any(c.name == "abort" for c in read_log(log))
    assert [c.args["aborted"] for c in read_log(log) if c.name == "run-end"] == ["1"]  # the runtime stopped
    conn.ask("c2", "still there?", max_tokens=4)  # and takes the next question
    assert conn.expect("answer-end", id="c2")["data"]["reason"] == "length"


@pytest.mark.parametrize("case, message", [
    ("wrong-version", "reports version 1.2.3; edgebot's bindings are written against runtime 1.3.0 only"),
    ("no-library", "does not exist; install RKLLM runtime 1.3.0 with `sudo deploy/install.sh rk3588 --npu`"),
    ("no-model", "missing.rkllm does not exist. Convert DeepSeek-R1-Distill-Qwen-1.5B with rkllm-toolkit 1.3.0"),
])
def test_start_up_errors_exit_78(daemon_factory: Any, fake_libs: FakeLibs, tmp_path: Path, case: str,
                                 message: str) -> None:
    model = write_fake_model(tmp_path / "r1.rkllm")
    lib: Any = fake_libs.wrong if case == "wrong-version" else None
    if case == "no-library":
        lib = tmp_path / "lib" / "librkllmrt.so"
    if case == "no-model":
        model = tmp_path / "missing.rkllm"
    d = rkllm_daemon(daemon_factory, fake_libs, model, tmp_path / "fake.log", lib=lib, wait_ready=False)
    assert d.proc.wait(60) == 78
    assert message in d.log_text()
    assert "model failed to load" in d.notify.wait_for("STATUS=model failed to load")
