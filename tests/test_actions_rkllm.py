"""Actions with ``[llm] backend = "rkllm"`` (the FAKE librkllmrt.so): the runtime has no grammar, so
the model path is off by itself: a plain question is answered as usual (not refused for its JSON
schema), and a phrase still runs its action without the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rkllm_harness import ANSWER, FakeLibs, fake_libs, write_fake_model

__all__ = ["fake_libs"]

pytestmark = pytest.mark.timeout(120)


def test_rkllm_answers_plainly_and_phrases_still_act(daemon_factory: Any, fake_libs: FakeLibs,
                                                     tmp_path: Path) -> None:
    config = (f'[llm]\nbackend = "rkllm"\nn_ctx = 2048\n[rkllm]\nlibrary = "{fake_libs.pinned}"\n'
              '[[actions]]\nname = "led"\nport = "ttyNONE"\n'
              'parameters = { properties = { state = { enum = ["on", "off"] } } }\n'
              'phrases = { "light {state}" = {} }\n[robot]\nresult_timeout_s = 0.5\n')
    d = daemon_factory(write_fake_model(tmp_path / "r1.rkllm"), config, env={"FAKE_RKLLM_LOG": str(tmp_path / "l")})
    r = d.cli("ask", "What is 2+2?")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ANSWER + "\n"
    r = d.cli("ask", "light on")  # no edgebot-serial serves ttyNONE: refused at once, no model call
    assert r.returncode == 0 and r.stdout.startswith("I could not do that: no edgebot-serial is connected")
    assert "has no grammar: actions run by phrases only" in d.log_text()
    listed = d.cli("actions")
    assert "phrases only" in listed.stdout
