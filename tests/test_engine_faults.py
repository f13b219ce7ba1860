"""Faults inside the engine: a failing cache re-base costs speed, never the engine (real llama.cpp,
with a fault injected into one method of the real backend)."""

from __future__ import annotations

import queue
from pathlib import Path

from edgebot.engine.backends.llama import LlamaBackend
from edgebot.engine.jobs import EngineSettings, Job, JobDelta, JobEnded
from edgebot.engine.scheduler import Engine
from edgebot.testing.script_model import DEFAULT_SCRIPT


class FailingPrefill(LlamaBackend):
    """The real backend, except that re-basing the cache fails as a llama.cpp decode error would."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.calls: queue.Queue = queue.Queue()

    def prefill(self, prompt, stop):  # type: ignore[override]
        self.calls.put(len(prompt.tokens))
        raise RuntimeError("llama_decode returned -1 (injected)")


def ask(engine: Engine, id_: str, session: str) -> tuple[str, JobEnded]:
    events: queue.Queue = queue.Queue()
    engine.submit(Job(id=id_, text="What is 2+2?", source="cli", session=session, sink=events.put))
    text = []
    while True:
        ev = events.get(timeout=30)
        if isinstance(ev, JobDelta) and not ev.think:
            text.append(ev.text)
        if isinstance(ev, JobEnded):
            return "".join(text), ev


def test_a_failing_rebase_does_not_stop_the_engine(script_model: Path) -> None:
    states: queue.Queue = queue.Queue()
    backend = FailingPrefill(str(script_model), n_ctx=512)
    engine = Engine(backend, EngineSettings(),
                    on_state=lambda state, msg: states.put(state))
    engine.start()
    assert states.get(timeout=30) == "loading" and states.get(timeout=30) == "ready"
    try:
        for i in range(3):  # each answer schedules a re-base, which fails
            text, end = ask(engine, f"f{i}", "cli:faulty")
            assert (text, end.reason) == (DEFAULT_SCRIPT.answer_text, "stop")
            assert backend.calls.get(timeout=30) > 0  # the re-base ran (and failed) before the next ask
        assert engine.alive() and engine.status()["state"] == "ready"
    finally:
        engine.shutdown()
    assert not engine.alive()
