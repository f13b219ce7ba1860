"""Layered, strict configuration, and edgebotd's start-up errors (exact messages, exit 78)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgebot.config import ConfigError, load_config
from edgebot.config.loader import board_file
from edgebot.config.reference import render_markdown
from edgebot.config.schema import KEYS

from conftest import EDGEBOTD, REPO


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edgebot.toml"
    p.write_text(text)
    return p


def load(tmp_path: Path, text: str, **kw):
    return load_config(write(tmp_path, text), board=kw.pop("board", "generic-x86"), environ=kw.pop("environ", {}),
                       **kw)


def test_defaults_board_file_env_and_flags_layer_in_order(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[llm]\nn_threads = 3\nn_batch = 64\n", board="rpi4",
               environ={"EDGEBOT_LLM_N_BATCH": "32", "EDGEBOT_LLM_THINK_BUDGET": "voice = 7"},
               overrides={"llm.model": "/x.gguf"})
    assert cfg.get("llm", "n_ctx") == 2048            # from board-configs/rpi4.toml
    assert cfg.get("llm", "n_threads") == 3           # the file beats the board
    assert cfg.get("llm", "n_batch") == 32            # the environment beats the file
    assert cfg.get("llm", "model") == "/x.gguf"       # the command line beats everything
    assert cfg.get("llm", "think_budget")["voice"] == 7 and cfg.get("llm", "think_budget")["cli"] == 1024
    assert cfg.sources["llm.n_ctx"].endswith("rpi4.toml") and cfg.sources["llm.n_batch"] == "environment"


def test_unknown_key_names_key_file_and_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "[llm]\nn_cxt = 2048\n")
    assert str(err.value).startswith(f"{tmp_path / 'edgebot.toml'}: unknown key [llm] n_cxt (did you mean 'n_ctx'?)")


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[lm\] \(did you mean 'llm'\?\)"):
        load(tmp_path, "[lm]\nmodel = 'x'\n")


@pytest.mark.parametrize("text, message", [
    ("[llm]\nn_ctx = 'big'\n", "[llm] n_ctx: expected an integer from 128 to 131072 (tokens), got 'big'"),
    ("[llm]\nn_ctx = 64\n", "[llm] n_ctx: expected an integer from 128 to 131072 (tokens), got 64"),
    ("[llm]\ntemperature = true\n", "[llm] temperature: expected a number from 0 to 2, got True"),
    ("[llm]\nuse_mmap = 1\n", "[llm] use_mmap: expected true or false, got 1"),
    ("[llm]\nthink_budget = {voice = -1}\n", "[llm] think_budget.voice: expected a table of integers"),
    ("[log]\nlevel = 'LOUD'\n", "[log] level: expected one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', got 'LOUD'"),
    ("[bus]\nallowed_users = 'pi'\n", "[bus] allowed_users: expected a list of strings, got 'pi'"),
    ("[llm\n", "not valid TOML"),
])
def test_wrong_values_are_refused_with_what_is_allowed(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert message in str(err.value) and str(tmp_path) in str(err.value)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment EDGEBOT_LLM_N_CTX: expected an integer"):
        load(tmp_path, "", environ={"EDGEBOT_LLM_N_CTX": "lots"})


def test_unknown_board_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError,
                       match="unknown board 'rpi6' .*known boards: generic-x86, rk3588, rk3588-npu, rpi4, rpi5"):
        board_file("rpi6")


@pytest.mark.parametrize("board", ["rpi4", "rpi5", "rk3588", "generic-x86"])
def test_every_board_profile_validates_and_sets_the_essentials(board: str) -> None:
    cfg = load_config(None, board=board, environ={})
    text = (REPO / "board-configs" / f"{board}.toml").read_text()
    for key in ("n_threads", "n_batch", "n_ctx", "use_mmap", "use_mlock", "cmake_args"):
        assert f"\n{key} =" in text
    assert text.startswith("#")  # says why these values suit the board
    assert cfg.board == board


def test_docs_reference_every_key() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert render_markdown() in doc, "run: python -m edgebot.config.reference --update docs/configuration.md"
    assert all(f"`{k.env_name}`" in doc for k in KEYS)


def run_daemon(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGEBOTD, "--board", "generic-x86", "--socket", str(cwd / "bus.sock"), *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd, env={"PATH": "/usr/bin:/bin"})


def test_daemon_exits_78_on_a_config_error(tmp_path: Path) -> None:
    r = run_daemon("--config", str(write(tmp_path, "[llm]\nn_cxt = 1\n")), cwd=tmp_path)
    assert r.returncode == 78
    assert f"configuration error: {tmp_path / 'edgebot.toml'}: unknown key [llm] n_cxt (did you mean 'n_ctx'?)" in r.stderr


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty (0 bytes)"),
    (b"PK\x03\x04 this is a zip", "is not a GGUF file"),
    (b"GGUF\x03\x00", "is truncated"),
])
def test_daemon_exits_78_on_a_bad_model_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    model = tmp_path / "model.gguf"
    if content is not None:
        model.write_bytes(content)
    r = run_daemon("--model", str(model), cwd=tmp_path)
    assert r.returncode == 78
    assert f"model file {model} {message}" in r.stderr
    assert "sudo edgebot-cli model pull" in r.stderr


def test_daemon_exits_78_on_a_truncated_gguf(tmp_path: Path, script_model: Path) -> None:
    model = tmp_path / "cut.gguf"
    model.write_bytes(script_model.read_bytes()[: script_model.stat().st_size // 2])
    r = run_daemon("--model", str(model), cwd=tmp_path)
    assert r.returncode == 78
    assert f"model file {model} could not be loaded by llama.cpp" in r.stderr
