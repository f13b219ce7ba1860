"""Session expiry, with the store's clock under the test's control."""

from __future__ import annotations

from edgebot.engine.prompt import Turn
from edgebot.engine.sessions import SessionStore


def test_idle_sessions_expire_and_busy_ones_stay() -> None:
    now = [100.0]
    store = SessionStore(idle_s=60.0, clock=lambda: now[0])
    store.get("voice").turns.append(Turn("hi", "hello"))
    store.get("serial:ttyUSB0")
    now[0] += 45.0
    store.get("voice")             # used again: its idle time restarts
    now[0] += 30.0                 # serial idle 75 s, voice idle 30 s
    assert store.expire() == ["serial:ttyUSB0"]
    assert store.peek("voice") is not None and store.peek("voice").turns == [Turn("hi", "hello")]
    now[0] += 61.0
    assert store.get("cli:x").turns == []  # any access expires the idle ones first
    assert store.peek("voice") is None
    assert [s["name"] for s in store.snapshot()] == ["cli:x"]
