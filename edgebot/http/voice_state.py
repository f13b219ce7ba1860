"""The robot's voice state for the classroom panel, followed from the bus messages edgebotd
publishes (``heard``, ``speaking``, ``listen``, voice ``answer-start``/``answer-end``,
``audio-device``): one small snapshot that every open page receives when it changes.

No aiohttp and no bus import: messages arrive as the wire's ``(type, data)`` pairs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

log = logging.getLogger(__name__)

WATCHED = ("heard", "speaking", "listen", "answer-start", "answer-end", "audio-device", "say")
QUEUE_MAX = 16  # snapshots waiting per page; a page that falls behind gets only the latest


class VoiceState:
    """``state``: idle, listening, hearing, thinking or speaking; ``heard``: the last words heard;
    ``microphone``/``speaker``: ready, missing or unknown (no bridge has reported yet)."""

    def __init__(self, listen_window_s: float = 8.0) -> None:
        self.listen_window_s = listen_window_s  # how long push-to-talk listens (seconds), as speech-in does
        self._listen_timer: Optional[asyncio.TimerHandle] = None
        self.state = "idle"
        self.heard = ""
        self.microphone = "unknown"
        self.speaker = "unknown"
        self.voice_ask = ""  # id of the voice question being answered
        self.since = time.time()
        self._pages: set[asyncio.Queue[dict[str, Any]]] = set()

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "heard": self.heard, "microphone": self.microphone, "speaker": self.speaker,
                "since": self.since}

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()

    def on_message(self, type_name: str, data: dict[str, Any]) -> None:
        """A message the hub published (called on the event loop)."""
        before = self.snapshot()
        if type_name == "heard":
            self.heard = str(data.get("text", ""))
            self._set("listening" if data.get("final") else "hearing")
        elif type_name == "listen":
            self._set("listening")
            self._listen_ends(float(data.get("window_s") or self.listen_window_s))
        elif type_name == "answer-start" and data.get("source", "").split(":")[0] == "voice":
            self.voice_ask = str(data.get("id", ""))
            self._set("thinking")
        elif type_name == "answer-end" and data.get("id") == self.voice_ask:
            self.voice_ask = ""
            if self.state == "thinking":
                self._set("idle")
        elif type_name == "speaking":
            self._set("speaking" if data.get("state") == "start" else "idle")
        elif type_name == "audio-device":
            if data.get("bridge") == "speech-in":
                self.microphone = str(data.get("state", "unknown"))
            elif data.get("bridge") == "speech-out":
                self.speaker = str(data.get("state", "unknown"))
        if self.snapshot() != before:
            self._broadcast()

    def _listen_ends(self, window_s: float) -> None:
        """Back to idle when push-to-talk's window passes with nothing heard."""
        if self._listen_timer is not None:
            self._listen_timer.cancel()

        def end() -> None:
            if self.state == "listening":
                self._set("idle")
                self._broadcast()

        self._listen_timer = asyncio.get_running_loop().call_later(window_s, end)

    def _broadcast(self) -> None:
        snap = self.snapshot()
        for queue in list(self._pages):
            if queue.full():
                queue.get_nowait()  # only the latest state matters
            queue.put_nowait(snap)

    def follow(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue of snapshots for one page, starting with the current one; ``unfollow`` it after."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        queue.put_nowait(self.snapshot())
        self._pages.add(queue)
        return queue

    def unfollow(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._pages.discard(queue)
