"""Who may send what on the bus, and how much client text edgebotd keeps (docs/bus-protocol.md,
"Who may send what"). Small checks the dispatcher calls; they decide, the dispatcher answers.

- Roles come from ``hello {role}``. The bridges' roles (``speech-out``, ``speech-in``, ``serial``, ``mqtt``)
  are accepted only from root or edgebotd's own user (the units run every bridge as ``edgebot``),
  so another allowed user cannot pose as a bridge.
- ``speaking`` only from a ``speech-out`` connection; each ``start`` ends by its ``stop``, by that
  connection leaving, or after ``[bus] speaking_max_s`` (:class:`SpeakingState`).
- ``action-result`` only from an action runner (``serial`` or ``mqtt``) that was sent the
  ``action-run`` (``edgebot.actions.desk``).
- What a client sends is never echoed unbounded into ``status-report``: session names are at most
  ``sessions.MAX_NAME_BYTES``, a ``voice-latency`` report is cut to its bounded fields.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from edgebot.bus import messages as m
from edgebot.bus.hub import Connection
from edgebot.engine.sessions import MAX_NAME_BYTES

SPEECH_OUT = "speech-out"
SERIAL = "serial"
MQTT = "mqtt"
ACTION_RUNNERS = frozenset({SERIAL, MQTT})
"""Roles that are sent ``action-run`` and may answer ``action-result``: edgebot-serial, edgebot-mqtt."""
BRIDGE_ROLES = frozenset({SPEECH_OUT, "speech-in", SERIAL, MQTT})
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 256
"""Most characters of client text kept for ``status-report`` (a ``voice-latency`` transcript)."""


def role_refusal(conn: Connection, role: str) -> Optional[str]:
    """Why ``conn`` may not take ``role`` (None: it may)."""
    if role in BRIDGE_ROLES and conn.peer.uid not in (0, os.getuid()):
        return (f"role {role!r} is for edgebot's own bridges (run as edgebotd's user or root); "
                f"uid {conn.peer.uid} may connect with the default role 'client'")
    return None


def sender_refusal(conn: Connection, msg: m.Message) -> Optional[str]:
    """Why ``conn`` may not send ``msg`` (None: it may)."""
    if isinstance(msg, m.Speaking) and conn.role != SPEECH_OUT:
        return "'speaking' is sent only by edgebot-speech-out (hello role \"speech-out\")"
    if isinstance(msg, m.ActionResult) and conn.role not in ACTION_RUNNERS:
        return ("'action-result' is sent only by edgebot-serial or edgebot-mqtt (hello role \"serial\" or \"mqtt\") "
                "for an action-run it was sent")
    return None


def session_refusal(session: Optional[str]) -> Optional[str]:
    if session is not None and len(session.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        return f"ask: session names are at most {MAX_NAME_BYTES} bytes"
    return None


def latency_for_status(msg: m.VoiceLatency) -> dict[str, Any]:
    """The part of a ``voice-latency`` report that ``status-report`` shows: bounded strings, numbers."""
    out: dict[str, Any] = {"id": msg.id[:MAX_ID_CHARS], "text": msg.text[:MAX_TEXT_CHARS]}
    for name in ("transcript_ms", "first_token_ms", "first_sentence_ms", "first_audio_ms"):
        value = getattr(msg, name)
        if value is not None:
            out[name] = value
    return out


@dataclass
class Speech:
    """One ``speaking`` start: which connection said it, when (monotonic seconds)."""

    conn: Connection
    since: float


class SpeakingState:
    """What speech-out says it is speaking; ``max_s`` seconds bound a start without its stop."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.active: dict[str, Speech] = {}  # speaking id ("" when none was given) -> who, since when

    def start(self, conn: Connection, ident: str) -> None:
        self.active[ident] = Speech(conn, time.monotonic())

    def stop(self, ident: str) -> bool:
        return self.active.pop(ident, None) is not None

    def left(self, conn: Connection) -> list[str]:
        """``conn`` disconnected: forget and return the ids it was speaking."""
        gone = [i for i, s in self.active.items() if s.conn is conn]
        for ident in gone:
            del self.active[ident]
        return gone

    def expired(self) -> list[str]:
        """Forget and return the ids whose start is older than ``max_s``."""
        now = time.monotonic()
        gone = [i for i, s in self.active.items() if now - s.since >= self.max_s]
        for ident in gone:
            del self.active[ident]
        return gone

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"id": i, "client": s.conn.name[:MAX_ID_CHARS], "since_s": round(now - s.since, 1)}
                for i, s in self.active.items()]
