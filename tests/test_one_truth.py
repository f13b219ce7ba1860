"""One truth for each fact that several places state: model errors, where speech models go, how to
get the model, the udev rule's file name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgebot.bridges.voice import recognizer
from edgebot.config.schema import GET_MODEL
from edgebot.engine.backend import ModelError
from edgebot.engine.backends.llama_load import check_model_file
from edgebot.gguf_info import GGUFError, read_gguf

REPO = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".sh", ".md", ".service", ".socket", ".toml", ".rules", ".ino", ""}


def _repo_texts() -> dict[Path, str]:
    out = {}
    for top in ("edgebot", "deploy", "systemd", "docs", "board-configs", "README.md", "bench", "examples"):
        root = REPO / top
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts:
                out[p] = p.read_text(errors="replace")
    return out


def test_an_empty_model_file_is_called_empty(tmp_path: Path) -> None:
    empty = tmp_path / "model.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"is empty \(0 bytes\)") as exc:
        check_model_file(str(empty))
    assert GET_MODEL in str(exc.value) and "starts with" not in str(exc.value)
    with pytest.raises(GGUFError, match=r"is empty \(0 bytes\)"):
        read_gguf(empty)


def test_the_vosk_error_names_the_directory_that_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    monkeypatch.setattr(recognizer, "VOICES_DIR", voices)
    monkeypatch.setattr(recognizer, "installed_model_packages", lambda prefix: [])  # as on a board without any
    with pytest.raises(recognizer.ModelError) as exc:
        recognizer.resolve_vosk_model("")
    assert str(voices) in str(exc.value) and "/var/lib/edgebot/models" not in str(exc.value)
    assert GET_MODEL in str(exc.value)


def test_one_instruction_for_getting_the_model() -> None:
    """The code quotes schema.GET_MODEL; deploy/get-model.sh runs exactly that command."""
    script = (REPO / "deploy" / "get-model.sh").read_text()
    assert re.search(r'exec "\$cli" model pull "\$@"', script)
    assert GET_MODEL.endswith("edgebot-cli model pull")
    offenders = [str(p.relative_to(REPO)) for p, text in _repo_texts().items()
                 if p.suffix == ".py" and "get-model.sh" in text and p.name != "schema.py"]
    assert not offenders, f"these give their own instruction instead of schema.GET_MODEL: {offenders}"


def test_every_mention_of_the_udev_rule_names_the_installed_file() -> None:
    rules = {p.name for p in (REPO / "deploy" / "udev").glob("*.rules")}
    assert rules, "deploy/udev/ has no rule"
    wrong = []
    for path, text in _repo_texts().items():
        for name in re.findall(r"\b\d\d-edgebot[\w-]*\.rules\b", text):
            if name not in rules:
                wrong.append(f"{path.relative_to(REPO)}: {name}")
    assert not wrong, f"udev rule names that do not exist in deploy/udev ({sorted(rules)}): {wrong}"
