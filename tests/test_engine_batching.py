"""Continuous batching on real llama.cpp (script models): several answers decode together, each
exactly its own, with cancel and priority per answer.

Every answer here is scripted, so a mix-up between sequences (a token sampled from another
sequence's logits, a cache cell of another sequence) would change some answer's text.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from edgebot.engine.backends.llama import LlamaBackend
from edgebot.engine.jobs import EngineSettings, Job, JobDelta, JobEnded, JobStarted
from edgebot.engine.scheduler import Engine
from edgebot.testing.script_model import DEFAULT_SCRIPT, write_script_model

SHORT = ("Short", " reply", " here.")
BRANCHING = replace(DEFAULT_SCRIPT, after_close=SHORT)  # a think budget's </think> leads to a short reply
LOOPING = replace(DEFAULT_SCRIPT, loop=True)  # the answer never ends: max_tokens ends it


@pytest.fixture(scope="module")
def branching_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_script_model(tmp_path_factory.mktemp("models") / "branching.gguf", BRANCHING)


@pytest.fixture(scope="module")
def looping_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_script_model(tmp_path_factory.mktemp("models") / "looping.gguf", LOOPING)


class Recorder:
    """Collects every job's events with a global order number and a time."""

    def __init__(self) -> None:
        self.order = itertools.count()
        self.lock = threading.Lock()
        self.events: dict[str, list[tuple[int, float, Any]]] = {}
        self.ended: dict[str, queue.Queue] = {}
        self.hooks: dict[str, Callable[[Any], None]] = {}

    def sink(self, job_id: str) -> Callable[[Any], None]:
        self.events[job_id] = []
        self.ended[job_id] = queue.Queue()

        def put(ev: Any) -> None:
            with self.lock:
                self.events[job_id].append((next(self.order), time.monotonic(), ev))
            hook = self.hooks.get(job_id)
            if hook is not None:
                hook(ev)
            if isinstance(ev, JobEnded):
                self.ended[job_id].put(ev)
        return put

    def end(self, job_id: str) -> JobEnded:
        return self.ended[job_id].get(timeout=60)

    def text(self, job_id: str, think: bool = False) -> str:
        return "".join(ev.text for _, _, ev in self.events[job_id] if isinstance(ev, JobDelta) and ev.think == think)

    def span(self, job_id: str) -> tuple[int, int]:
        marks = [n for n, _, ev in self.events[job_id] if isinstance(ev, JobDelta)]
        return min(marks), max(marks)

    def index(self, job_id: str, kind: type) -> int:
        return next(n for n, _, ev in self.events[job_id] if isinstance(ev, kind))


def start_engine(model: Path, parallel: int, per_sequence: bool = False, **kw: Any) -> Engine:
    states: queue.Queue = queue.Queue()
    engine = Engine(LlamaBackend(str(model), n_ctx=1024, sequences=4 + parallel, kv_tokens=1024 * (4 + parallel),
                                 kv_per_sequence=per_sequence),
                    EngineSettings(parallel=parallel, **kw), on_state=lambda s, m: states.put(s))
    engine.start()
    assert states.get(timeout=30) == "loading" and states.get(timeout=30) == "ready"
    return engine


def job(rec: Recorder, id_: str, budget: int = 1000, priority: int = 2, max_tokens: int = 200,
        source: str = "cli", session: Optional[str] = None) -> Job:
    return Job(id=id_, text=f"Question {id_}?", source=source, sink=rec.sink(id_), session=session,
               show_think=True, max_tokens=max_tokens, think_budget=budget, priority=priority)


def expected(budget: int) -> tuple[str, str]:
    """(thinking, answer) of the branching script with a think budget."""
    if budget >= len(DEFAULT_SCRIPT.think) + len(DEFAULT_SCRIPT.close):
        return DEFAULT_SCRIPT.think_text, DEFAULT_SCRIPT.answer_text
    if budget == 0:
        return "", "".join(SHORT)
    return "".join(DEFAULT_SCRIPT.think[:budget]) + "\n", "".join(SHORT)


@pytest.mark.parametrize("per_sequence", [False, True], ids=["shared KV", "KV per sequence"])
@pytest.mark.parametrize("budgets", [(2, 1000), (0, 2, 5, 1000)], ids=["2 askers", "4 askers"])
def test_concurrent_askers_each_get_their_own_answer_interleaved(branching_model: Path, budgets: tuple,
                                                                 per_sequence: bool) -> None:
    engine = start_engine(branching_model, parallel=len(budgets), per_sequence=per_sequence)
    assert engine.backend.kv_status()["layout"] == ("per-sequence" if per_sequence else "shared")
    rec = Recorder()
    try:
        with engine._cond:  # all queued before the worker can take the first
            for i, budget in enumerate(budgets):
                engine.submit(job(rec, f"a{i}", budget))
        ends = {f"a{i}": rec.end(f"a{i}") for i in range(len(budgets))}
    finally:
        engine.shutdown()
    for i, budget in enumerate(budgets):
        assert ends[f"a{i}"].reason == "stop"
        assert (rec.text(f"a{i}", think=True), rec.text(f"a{i}")) == expected(budget)
    spans = [rec.span(f"a{i}") for i in range(len(budgets))]
    for (a0, a1), (b0, b1) in itertools.combinations(spans, 2):
        assert a0 < b1 and b0 < a1, spans  # every two answers streamed at the same time
    times = [[t for _, t, ev in rec.events[f"a{i}"] if isinstance(ev, JobDelta)] for i in range(len(budgets))]
    for a, b in itertools.combinations(times, 2):
        assert min(a) < max(b) and min(b) < max(a)  # ... in time too


def test_cancelling_one_of_two_answers_leaves_the_other_intact(looping_model: Path) -> None:
    engine = start_engine(looping_model, parallel=2)
    rec = Recorder()
    try:
        rec.hooks["b"] = lambda ev: isinstance(ev, JobDelta) and not ev.think and engine.cancel("b")
        with engine._cond:
            engine.submit(job(rec, "a", max_tokens=80))
            engine.submit(job(rec, "b", max_tokens=80))
        end_a, end_b = rec.end("a"), rec.end("b")
    finally:
        engine.shutdown()
    assert end_b.reason == "cancelled" and end_b.stats["completion_tokens"] < 80
    thinking = len(DEFAULT_SCRIPT.think) + len(DEFAULT_SCRIPT.close)
    assert end_a.reason == "length" and end_a.stats["completion_tokens"] == 80
    assert rec.text("a") == "".join(DEFAULT_SCRIPT.answer[i % 5] for i in range(80 - thinking))
    assert rec.span("b")[1] < rec.span("a")[1]


def test_a_voice_question_starts_at_once_during_long_cli_answers(looping_model: Path) -> None:
    engine = start_engine(looping_model, parallel=2)
    rec = Recorder()
    seen = itertools.count()
    voice = job(rec, "voice", priority=0, max_tokens=30, source="voice")

    def ask_voice(ev: Any) -> None:  # both slots are busy with CLI answers when the voice question comes
        if isinstance(ev, JobDelta) and not ev.think and next(seen) == 5:
            engine.submit(voice)

    rec.hooks["cli1"] = ask_voice
    try:
        with engine._cond:
            engine.submit(job(rec, "cli1", max_tokens=400))
            engine.submit(job(rec, "cli2", max_tokens=400))
        ends = {name: rec.end(name) for name in ("voice", "cli1", "cli2")}
    finally:
        engine.shutdown()
    first_cli_end = min(rec.index("cli1", JobEnded), rec.index("cli2", JobEnded))
    assert rec.index("voice", JobStarted) < first_cli_end  # admitted by pausing a CLI answer, not after one
    assert rec.index("voice", JobEnded) < first_cli_end
    assert ends["voice"].reason == "length" and ends["voice"].stats["completion_tokens"] == 30
    thinking = len(DEFAULT_SCRIPT.think) + len(DEFAULT_SCRIPT.close)
    for name in ("cli1", "cli2"):  # the paused answer resumed where it was: both intact
        assert ends[name].reason == "length"
        assert rec.text(name) == "".join(DEFAULT_SCRIPT.answer[i % 5] for i in range(400 - thinking))


def test_two_asks_of_one_session_run_one_after_the_other(branching_model: Path) -> None:
    engine = start_engine(branching_model, parallel=2)
    rec = Recorder()
    try:
        with engine._cond:
            engine.submit(job(rec, "s1", session="cli:same"))
            engine.submit(job(rec, "s2", session="cli:same"))
        end1, end2 = rec.end("s1"), rec.end("s2")
    finally:
        engine.shutdown()
    assert end1.reason == end2.reason == "stop"
    assert rec.index("s1", JobEnded) < rec.index("s2", JobStarted)  # the second needs the first's turn
    assert end2.stats["cached_tokens"] > end1.stats["prompt_tokens"] - 2  # and reuses the session's sequence


def test_edgebotd_with_parallel_2_streams_two_bus_answers_together(daemon_factory, looping_model: Path) -> None:
    d = daemon_factory(looping_model, "[engine]\nparallel = 2\n")
    bus = d.connect()
    bus.ask("p1", "First?", max_tokens=300)
    bus.ask("p2", "Second?", max_tokens=300)
    texts: dict[str, list[str]] = {"p1": [], "p2": []}
    order, ended = [], {}
    while len(ended) < 2:
        ev = bus.recv()
        assert ev is not None
        if ev["type"] == "answer-delta":
            texts[ev["data"]["id"]].append(ev["data"]["text"])
            order.append(ev["data"]["id"])
        elif ev["type"] == "answer-end":
            ended[ev["data"]["id"]] = ev["data"]
    bus.close()
    thinking = len(DEFAULT_SCRIPT.think) + len(DEFAULT_SCRIPT.close)
    for name in ("p1", "p2"):
        assert ended[name]["reason"] == "length"
        assert "".join(texts[name]) == "".join(DEFAULT_SCRIPT.answer[i % 5] for i in range(300 - thinking))
    # the two answers' deltas alternate on the wire: neither waited for the other to finish
    assert set(order[: len(order) // 2]) == {"p1", "p2"}
