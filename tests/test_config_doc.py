"""The examples in docs/configuration.md are accepted by the real loader, and the error messages it
quotes are the ones the loader gives (tests/test_config.py checks the generated key reference)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgebot.config import ConfigError, load_config

from conftest import REPO

DOC = (REPO / "docs" / "configuration.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S)


def test_the_example_file_loads(tmp_path: Path) -> None:
    (example,) = [b for b in blocks("toml") if "edgebot.toml" in b]
    path = tmp_path / "edgebot.toml"
    path.write_text(example)
    cfg = load_config(path, environ={})
    assert cfg.board == "rpi5"                                   # board = "rpi5" in the file
    assert cfg.get("llm", "think_budget")["voice"] == 64         # one entry changed ...
    assert cfg.get("llm", "think_budget")["cli"] == 1024         # ... the others kept
    assert cfg.get("llm", "n_threads") == 4                      # from board-configs/rpi5.toml


def test_the_environment_examples_load(tmp_path: Path) -> None:
    environ = {}
    for block in blocks("sh"):
        for line in block.splitlines():
            match = re.match(r"(EDGEBOT_[A-Z_]+)=('([^']*)'|(\S+))", line)
            if match:
                environ[match.group(1)] = match.group(3) if match.group(3) is not None else match.group(4)
    assert len(environ) >= 6
    cfg = load_config(None, board="generic-x86", environ=environ)
    assert cfg.get("llm", "n_ctx") == 2048 and cfg.get("llm", "use_mlock") is True
    assert cfg.get("bus", "allowed_users") == ["pi", "1001"]
    assert cfg.get("llm", "think_budget")["serial"] == 128
    assert all(cfg.sources[k] == "environment" for k in ("llm.model", "llm.temperature", "llm.persona"))


ERRORS = [line for block in blocks("text") for line in block.splitlines()
          if "expected" in line or "unknown" in line or "not valid TOML" in line or "not found" in line
          or "no such setting" in line]


@pytest.mark.parametrize("toml, environ, board", [
    ("[llm]\nn_cxt = 2048\n", {}, "generic-x86"),
    ("[lm]\nmodel = 'x'\n", {}, "generic-x86"),
    ("[llm]\ntemperature = 3.0\n", {}, "generic-x86"),
    ("[llm]\nthink_budget = {voice = -1}\n", {}, "generic-x86"),
    ("[llm\n", {}, "generic-x86"),
    ("", {"EDGEBOT_LLM_N_CTX": "lots"}, "generic-x86"),
    ("", {"EDGEBOT_LLM_N_CTX": "64"}, "generic-x86"),
    ("", {"EDGEBOT_LLM_N_CXT": "2048"}, "generic-x86"),
    ("", {}, "rpi6"),
])
def test_quoted_error_messages_are_real(tmp_path: Path, toml: str, environ: dict, board: str) -> None:
    path = tmp_path / "edgebot.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path, board=board, environ=environ)
    message = str(err.value).replace(str(path), "/etc/edgebot/edgebot.toml")
    quoted = [q.rstrip("…").rstrip() for q in ERRORS]
    assert any(message.startswith(q) for q in quoted), f"not quoted in docs/configuration.md: {message}"
