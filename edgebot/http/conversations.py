"""The classroom panel's conversations, kept on the board: one JSON file per conversation in
``[http] conversations_dir``, each the history of one edgebot session (``panel:<id>``).

Pure standard library, no aiohttp: the store is read once at start-up and written (atomically,
a temporary file renamed over the old one) after each exchange. A directory that cannot be
written is logged once and the conversations live in memory until edgebotd stops.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgebot.engine.prompt import Turn

log = logging.getLogger(__name__)

ID = re.compile(r"^[0-9a-f]{12}$")
TITLE_CHARS = 60  # characters of the first question shown as a conversation's title
KEPT_REASONS = ("stop", "length")  # exchanges that become history for the model


def default_dir() -> Path:
    """``$STATE_DIRECTORY/conversations`` under systemd, else ``~/.local/state/edgebot/conversations``."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "conversations"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "edgebot" / "conversations"


@dataclass
class Exchange:
    """One question and what came back. ``think_s``: seconds from the first thinking token to the
    first answer character (0 without thinking); ``reason``: stop, length, cancelled or error."""

    question: str
    answer: str = ""
    thinking: str = ""
    think_s: float = 0.0
    reason: str = ""
    message: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


@dataclass
class Conversation:
    """``created``/``updated``: Unix time, seconds."""

    id: str
    title: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    exchanges: list[Exchange] = field(default_factory=list)

    @property
    def session(self) -> str:
        """The edgebot session that holds this conversation's KV cache."""
        return f"panel:{self.id}"

    def turns(self) -> list[Turn]:
        """The history the model sees: finished exchanges with an answer, without thinking."""
        return [Turn(e.question, e.answer.strip()) for e in self.exchanges
                if e.reason in KEPT_REASONS and e.answer.strip()]

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "created": self.created, "updated": self.updated,
                "exchanges": len(self.exchanges)}

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "exchanges": [asdict(e) for e in self.exchanges]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Conversation":
        known = set(Exchange.__dataclass_fields__)
        return cls(id=str(data["id"]), title=str(data.get("title", "")), created=float(data.get("created", 0)),
                   updated=float(data.get("updated", 0)),
                   exchanges=[Exchange(**{k: v for k, v in e.items() if k in known}) for e in data.get("exchanges", [])])


class ConversationStore:
    """Conversations by id, at most ``limit`` (the least recently updated beyond it are deleted)."""

    def __init__(self, directory: Optional[Path], limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self._items: dict[str, Conversation] = {}
        self._warned = False
        if directory is not None:
            self._load(directory)

    def _load(self, directory: Path) -> None:
        try:
            files = sorted(directory.glob("*.json"))
        except OSError as exc:
            log.warning("panel conversations: cannot read %s: %s", directory, exc)
            return
        for path in files:
            if not ID.match(path.stem):
                continue
            try:
                conv = Conversation.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("panel conversations: skipping %s: %s", path, exc)
                continue
            if conv.id == path.stem:
                self._items[conv.id] = conv
        log.info("panel conversations: %d in %s", len(self._items), directory)

    def list(self) -> list[dict[str, Any]]:
        """Summaries, the most recently updated first."""
        return [c.summary() for c in sorted(self._items.values(), key=lambda c: c.updated, reverse=True)]

    def get(self, conv_id: str) -> Optional[Conversation]:
        return self._items.get(conv_id) if ID.match(conv_id) else None

    def create(self) -> Conversation:
        conv = Conversation(id=secrets.token_hex(6))
        self._items[conv.id] = conv
        self._trim()
        self._save(conv)
        return conv

    def delete(self, conv_id: str) -> bool:
        conv = self.get(conv_id)
        if conv is None:
            return False
        del self._items[conv_id]
        if self.directory is not None:
            try:
                (self.directory / f"{conv_id}.json").unlink(missing_ok=True)
            except OSError as exc:
                log.warning("panel conversations: cannot delete %s: %s", conv_id, exc)
        return True

    def add(self, conv: Conversation, exchange: Exchange) -> None:
        """Record one finished exchange (any reason: a cancelled one is shown, never used as history)."""
        conv.exchanges.append(exchange)
        if not conv.title:
            first = " ".join(exchange.question.split())
            conv.title = first if len(first) <= TITLE_CHARS else first[:TITLE_CHARS - 1] + "…"
        conv.updated = time.time()
        self._save(conv)

    def _trim(self) -> None:
        for old in sorted(self._items.values(), key=lambda c: c.updated)[:max(0, len(self._items) - self.limit)]:
            self.delete(old.id)

    def _save(self, conv: Conversation) -> None:
        if self.directory is None:
            return
        path = self.directory / f"{conv.id}.json"
        tmp = path.with_suffix(".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            tmp.write_text(json.dumps(conv.to_json(), ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            if not self._warned:
                log.warning("panel conversations: cannot write %s (%s); keeping them in memory only; "
                            "set [http] conversations_dir to a writable directory", self.directory, exc)
                self._warned = True
