"""Sessions and the KV cache on real llama.cpp (the script model): a sequence per session, the
context shift of long conversations, and follow-ups that never re-read the previous answer.

"Evaluated" below is ``prompt_tokens - cached_tokens``: the prompt tokens llama.cpp actually had
to read for that answer.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from edgebot.engine.backends.llama import LlamaBackend
from edgebot.engine.jobs import EngineSettings, Job, JobDelta, JobEnded
from edgebot.engine.scheduler import Engine
from edgebot.testing.script_model import DEFAULT_SCRIPT, write_script_model

ANSWER = DEFAULT_SCRIPT.answer_text


class Running:
    """An engine on the script model, with helpers that wait on events (never on time)."""

    def __init__(self, model: Path, n_ctx: int = 1024, kv_tokens: int = 0, per_sequence: bool = False,
                 sequences: int = 4, saved_mib: int = 0, **settings: Any) -> None:
        states: queue.Queue = queue.Queue()
        self.backend = LlamaBackend(str(model), n_ctx=n_ctx, sequences=sequences, kv_tokens=kv_tokens,
                                    kv_per_sequence=per_sequence, saved_sessions_mib=saved_mib)
        self.engine = Engine(self.backend, EngineSettings(**settings), on_state=lambda s, m: states.put(s))
        self.engine.start()
        assert states.get(timeout=30) == "loading" and states.get(timeout=30) == "ready"

    def ask(self, id_: str, text: str, session: Optional[str] = None,
            then: Optional[Callable[[], None]] = None) -> tuple[str, JobEnded]:
        """Ask and wait for the end; ``then`` runs on the engine thread as the answer ends."""
        events: queue.Queue = queue.Queue()

        def sink(ev: Any) -> None:
            if isinstance(ev, JobEnded) and then is not None:
                then()
            events.put(ev)

        self.engine.submit(Job(id=id_, text=text, source="cli", session=session, sink=sink))
        text_out = []
        while True:
            ev = events.get(timeout=60)
            if isinstance(ev, JobDelta) and not ev.think:
                text_out.append(ev.text)
            if isinstance(ev, JobEnded):
                return "".join(text_out), ev

    def close(self) -> None:
        self.engine.shutdown()


def evaluated(end: JobEnded) -> int:
    return end.stats["prompt_tokens"] - end.stats["cached_tokens"]


@pytest.fixture(params=[False, True], ids=["shared KV", "KV per sequence"])
def running(script_model: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    r = Running(script_model, kv_tokens=4096, per_sequence=request.param)
    yield r
    r.close()


def test_two_sessions_taking_turns_read_only_their_new_questions(running: Running) -> None:
    first = {}
    history: dict[str, list[int]] = {"A": [], "B": []}
    for turn in range(5):
        for name in ("A", "B"):
            text, end = running.ask(f"{name}{turn}", f"Question {turn} from {name}?", session=f"cli:{name}")
            assert text == ANSWER and end.reason == "stop"
            first.setdefault(name, end.stats["prompt_tokens"])
            history[name].append(evaluated(end))
    for name in ("A", "B"):
        # the first turn reads its whole prompt; every later one only "<eos><｜User｜>question<｜Assistant｜><think>\n"
        # (the end-of-turn token of the previous answer, unless the idle re-base has read it already), however
        # long the history is and although the other session ran in between
        assert history[name][0] == first[name]
        assert all(first[name] - 1 <= n <= first[name] for n in history[name][1:]), history
    kv = running.backend.kv_status()
    assert {s["session"] for s in kv["sequences"]} == {"cli:A", "cli:B"} and kv["evictions"] == 0


def test_a_follow_up_before_the_rebase_does_not_read_the_previous_answer(running: Running) -> None:
    got: queue.Queue = queue.Queue()
    # the follow-up is submitted from the first answer's end, on the engine thread: it is queued before
    # the engine could re-base the session while idle
    follow = threading.Thread(target=lambda: got.put(running.ask("f2", "Question 2 again?", session="cli:f")))
    text, end1 = running.ask("f1", "Question 1 again?", session="cli:f", then=follow.start)
    follow.join(60)
    text2, end2 = got.get(timeout=60)
    assert text == text2 == ANSWER
    # the answer (5 tokens here, the thinking shifted out of the cache) is not read again: only the
    # end-of-turn token and the new question are
    assert evaluated(end2) == end1.stats["prompt_tokens"]
    # reused: the first prompt without its "<think>\n" (shifted out with the thinking), then the answer
    assert end2.stats["cached_tokens"] == end1.stats["prompt_tokens"] - 2 + len(DEFAULT_SCRIPT.answer)


@pytest.mark.parametrize("per_sequence", [False, True], ids=["shared KV", "KV per sequence"])
def test_a_long_session_shifts_old_turns_out_and_keeps_answering(script_model: Path, per_sequence: bool) -> None:
    # per sequence: n_ctx 1024 asked for, but each of the 4 sequences holds 256 of the 1024 cells, so the
    # conversation is limited to 256 tokens, as with n_ctx 256 and a shared cache
    r = Running(script_model, n_ctx=1024 if per_sequence else 256, kv_tokens=1024 if per_sequence else 0,
                per_sequence=per_sequence, answer_reserve=48)
    try:
        assert r.backend.info().n_ctx == 256
        counts = []
        for turn in range(40):
            text, end = r.ask(f"L{turn}", f"Tell me about the number {turn % 10} please.", session="cli:long")
            assert text == ANSWER and end.reason == "stop", end
            counts.append(evaluated(end))
            assert end.stats["prompt_tokens"] + 48 <= 256
        session = r.engine.status()["sessions"][0]
        assert session["trimmed_turns"] > 20  # old turns went ...
        # ... out of the KV cache by shifting: no turn re-read its history, each read about its question
        assert max(counts[1:]) <= counts[0], counts
        assert r.backend.kv_status()["shifted_tokens"] > 0
    finally:
        r.close()


def test_an_answer_whose_tokens_carry_whitespace_is_not_read_again(tmp_path: Path) -> None:
    """An answer starting with " Sure" and ending in a token like ".\n\n" (the history keeps it stripped):
    the follow-up still reuses the generated tokens, so it reads only its own question."""
    script = replace(DEFAULT_SCRIPT, answer=(" Sure", ",", " it", " is", " 4.\n\n"))
    r = Running(write_script_model(tmp_path / "ws.gguf", script))
    try:
        _, end1 = r.ask("w1", "Question one?", session="cli:ws")
        _, end2 = r.ask("w2", "Question two?", session="cli:ws")
        assert end1.reason == end2.reason == "stop"
        # the end-of-turn token and the new question, as for the plain script (first prompt: same length)
        assert evaluated(end2) <= end1.stats["prompt_tokens"], (end1.stats, end2.stats)
    finally:
        r.close()


@pytest.mark.parametrize("per_sequence", [False, True], ids=["shared KV", "KV per sequence"])
@pytest.mark.parametrize("saved_mib", [0, 16], ids=["re-read", "saved to RAM"])
def test_three_sessions_on_two_sequences(script_model: Path, per_sequence: bool, saved_mib: int) -> None:
    """More sessions than sequences: the one that lost its sequence is put back from RAM (only its new
    question is read), or, with no RAM for it, read again from the start."""
    r = Running(script_model, kv_tokens=2048, sequences=2, per_sequence=per_sequence, saved_mib=saved_mib)
    try:
        firsts = {}
        for name in ("A", "B", "C"):  # C takes A's sequence (the least recently used)
            text, end = r.ask(f"{name}1", f"First question from {name}?", session=f"cli:{name}")
            assert text == ANSWER
            firsts[name] = end.stats["prompt_tokens"]
        text, end = r.ask("A2", "Second question from A?", session="cli:A")
        assert text == ANSWER and end.reason == "stop"
        kv = r.backend.kv_status()
        if saved_mib:
            assert kv["restored"] == 1 and kv["saved_sessions"] >= 1  # B went to RAM for A
            # the new question and the end-of-turn token (one more when the idle re-base had not run before
            # the sequence was saved), never the history: that is the other branch's bound
            assert evaluated(end) < firsts["A"] + len(DEFAULT_SCRIPT.answer)
        else:
            assert kv["restored"] == 0 and kv["saved_sessions"] == 0
            assert evaluated(end) > firsts["A"] + len(DEFAULT_SCRIPT.answer)  # the whole history read again
    finally:
        r.close()


def test_a_saved_session_comes_back_when_the_budget_holds_only_one(script_model: Path) -> None:
    """RAM for one saved sequence: putting A back saves the sequence it takes (B's), which alone fills the
    budget; A still comes back (its copy is taken out before), and B's copy is what stays."""
    r = Running(script_model, kv_tokens=2048, sequences=2, saved_mib=1)
    try:
        for name in ("A", "B", "C"):
            assert r.ask(f"{name}1", f"First question from {name}?", session=f"cli:{name}")[0] == ANSWER
        pool = r.backend.pool
        one = len(pool.saved["cli:A"][0])
        pool.save_bytes = one + one // 4  # room for one saved sequence, not two (B's is as large as A's)
        text, end = r.ask("A2", "Second question from A?", session="cli:A")
        assert text == ANSWER and end.reason == "stop"
        kv = r.backend.kv_status()
        assert kv["restored"] == 1 and kv["saved_sessions"] == 1
        assert list(r.backend.pool.saved) == ["cli:B"]
    finally:
        r.close()
