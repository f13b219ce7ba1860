"""Model load progress: llama.cpp's progress callback reaches the journal, the engine's status and
`edgebot-cli status` (real llama.cpp loading the script model)."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

from edgebot.cli_show import print_status
from edgebot.engine.backends.llama import LlamaBackend
from edgebot.engine.jobs import EngineSettings
from edgebot.engine.scheduler import Engine


class _Seen(logging.Handler):
    """Collects the backend's progress lines and, at the first one, the engine's status (taken on the
    engine thread, in the middle of the load)."""

    def __init__(self, engine_box: list[Engine]) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.status_midway: list[dict[str, Any]] = []
        self.engine_box = engine_box

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if re.search(r"loading .*: \d+ %$", text):
            self.lines.append(text)
            if not self.status_midway and self.engine_box:
                self.status_midway.append(self.engine_box[0].status())


def test_load_progress_reaches_the_log_and_the_status(script_model: Path) -> None:
    box: list[Engine] = []
    seen = _Seen(box)
    log = logging.getLogger("edgebot.engine.backends.llama_load")
    log.addHandler(seen)
    old_level = log.level
    log.setLevel(logging.INFO)
    ready = threading.Event()
    backend = LlamaBackend(str(script_model), n_ctx=512)
    engine = Engine(backend, EngineSettings(), on_state=lambda s, m: s in ("ready", "failed") and ready.set())
    box.append(engine)
    try:
        engine.start()
        assert ready.wait(60) and engine.state == "ready"
    finally:
        engine.shutdown()
        log.removeHandler(seen)
        log.setLevel(old_level)
    percents = [float(re.search(r"(\d+) %$", line).group(1)) for line in seen.lines]
    assert percents and percents[-1] == 100 and percents == sorted(percents), seen.lines
    assert str(script_model) in seen.lines[-1]
    midway = seen.status_midway[0]
    assert midway["state"] == "loading" and 0 <= midway["load_progress"] <= 100
    assert engine.status()["load_progress"] is None and backend.load_progress is None  # only while loading


def test_status_shows_the_percent_while_loading(capsys: Any) -> None:
    print_status({"server_version": "0.1.0", "model": "/m.gguf", "state": "loading", "load_progress": 42.4})
    assert capsys.readouterr().out.splitlines()[0] == "edgebotd 0.1.0: loading (42 %)"
    print_status({"server_version": "0.1.0", "model": "/m.gguf", "state": "ready"})
    assert capsys.readouterr().out.splitlines()[0] == "edgebotd 0.1.0: ready"
