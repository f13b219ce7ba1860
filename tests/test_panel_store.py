"""The panel's conversation store on its own: files written atomically and read back, broken or
foreign files skipped, the limit, an unwritable directory (kept in memory, one warning), and the
history the model sees (finished exchanges without thinking)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edgebot.engine.prompt import Turn
from edgebot.http.conversations import ConversationStore, Exchange, default_dir


def test_round_trip_and_history(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path, 10)
    conv = store.create()
    store.add(conv, Exchange("What is 2+2?", "4", thinking="two and two", reason="stop"))
    store.add(conv, Exchange("And 3+3?", "6", reason="cancelled"))  # shown, never history
    store.add(conv, Exchange("Why?", "", reason="error", message="backend failed"))
    store.add(conv, Exchange("Times 2?", " 8 ", reason="length"))
    assert conv.turns() == [Turn("What is 2+2?", "4"), Turn("Times 2?", "8")]
    again = ConversationStore(tmp_path, 10).get(conv.id)
    assert again is not None and again.to_json() == conv.to_json() and again.title == "What is 2+2?"
    assert not list(tmp_path.glob("*.tmp"))


def test_broken_and_foreign_files_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ConversationStore(tmp_path, 10)
    good = store.create()
    (tmp_path / "0123456789ab.json").write_text("{not json")
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "aaaaaaaaaaaa.json").write_text(json.dumps({"id": "bbbbbbbbbbbb"}))  # id and name disagree
    with caplog.at_level(logging.WARNING):
        loaded = ConversationStore(tmp_path, 10)
    assert [c["id"] for c in loaded.list()] == [good.id]
    assert "0123456789ab.json" in caplog.text
    assert loaded.get("../etc/passwd") is None and loaded.get("ZZZZZZZZZZZZ") is None


def test_limit_deletes_the_least_recently_updated(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path, 2)
    first, second = store.create(), store.create()
    store.add(first, Exchange("keep me", "ok", reason="stop"))  # now the most recent
    third = store.create()
    assert {c["id"] for c in store.list()} == {first.id, third.id}
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted([first.id, third.id])
    assert second.id not in {c["id"] for c in store.list()}


def test_unwritable_directory_keeps_them_in_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING):
        store = ConversationStore(blocker / "conversations", 10)  # under a file: fails for root too
        conv = store.create()
        store.add(conv, Exchange("hi", "hello", reason="stop"))
    assert store.get(conv.id) is conv and caplog.text.count("cannot write") == 1


def test_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edgebot")
    assert default_dir() == Path("/var/lib/edgebot/conversations")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_dir() == tmp_path / "edgebot" / "conversations"
