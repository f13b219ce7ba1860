"""Issue 12, items 2 and 3 (the parts outside the engine's session trimming): one request must not
hold the engine or the event loop. 3,000 empty turns once blocked the engine for 135.8 s; a bus ask
of ``<think>`` x 149,000 took 52 s to tokenize; a 900-property schema took 2.4 s and an assistant
message of ``<think>`` x 9,300 took 3.75 s on the event loop, so 12 of them in parallel left 55 s
between WATCHDOG=1 pings. Against a real edgebotd with real llama.cpp."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("aiohttp")  # the `http` extra

from conftest import Daemon
from edgebot.testing.script_model import DEFAULT_SCRIPT
from http_client import QUESTION, WatchdogWatch, chat
from test_http_api import free_port

WATCHDOG_USEC = 200_000  # a ping every 0.1 s


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, script_model: Path) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("edgebotd-heavy"), script_model,
               f"[http]\nenabled = true\nport = {port}\nmax_prompt_chars = 100000\nmax_body_bytes = 2000000\n"
               "max_request_bodies = 32\n",
               env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    yield d, port
    d.stop()


def voice_answer_time(d: Daemon, id_: str) -> float:
    """Seconds from a voice ask to its answer-end (stop), on a fresh bus connection."""
    bus = d.connect()
    try:
        start = time.monotonic()
        text, end = bus.answer(id_, "What is 2+2?", timeout=120, source="voice")
        assert (text, end["type"], end["data"].get("reason")) == (DEFAULT_SCRIPT.answer_text, "answer-end", "stop")
        return time.monotonic() - start
    finally:
        bus.close()


def test_3000_empty_turns_are_refused_at_once_and_voice_goes_on(api: tuple[Daemon, int]) -> None:
    d, port = api
    turns = [{"role": r, "content": ""} for _ in range(3000) for r in ("user", "assistant")]
    result: dict[str, Any] = {}

    def send() -> None:
        start = time.monotonic()
        result["status"], result["body"] = chat(port, {"model": "m", "messages": turns + QUESTION}, timeout=300)
        result["took"] = time.monotonic() - start

    sender = threading.Thread(target=send)
    sender.start()
    voice_s = voice_answer_time(d, "voice-after-turns")
    sender.join(300)
    assert result["status"] == 400, result
    assert result["body"]["error"]["param"] == "messages" and "max_messages" in result["body"]["error"]["message"]
    # before: 135.8 s, the voice ask waiting 134.8 s; the bounds leave room for a loaded CI machine
    assert result["took"] < 2.0 and voice_s < 30.0, (result["took"], voice_s)


def test_the_most_messages_allowed_are_answered_in_bounded_time(api: tuple[Daemon, int]) -> None:
    """Up to [http] max_messages (256): the engine trims what does not fit, the voice ask waits little."""
    d, port = api
    turns = [{"role": r, "content": "" if r == "assistant" else "hello there " * 30}
             for _ in range(127) for r in ("user", "assistant")]
    result: dict[str, Any] = {}

    def send() -> None:
        start = time.monotonic()
        result["status"], result["body"] = chat(port, {"model": "m", "messages": turns + QUESTION}, timeout=300)
        result["took"] = time.monotonic() - start

    sender = threading.Thread(target=send)
    sender.start()
    voice_s = voice_answer_time(d, "voice-during-long")
    sender.join(300)
    assert result["status"] == 200, result
    assert result["took"] < 30.0 and voice_s < 30.0, (result["took"], voice_s)


def test_a_bus_ask_of_149000_think_tags_ends_quickly(api: tuple[Daemon, int]) -> None:
    d, _ = api
    bus = d.connect()
    try:
        start = time.monotonic()
        text, end = bus.answer("thinks", "<think>" * 149_000, timeout=120)
        took = time.monotonic() - start
        assert end["type"] == "error" and end["data"]["code"] == "too-long", end
        assert took < 15.0, f"{took:.1f} s"  # before: 52 s (quadratic tokenize_text); now ~0.2 s
    finally:
        bus.close()
    assert voice_answer_time(d, "voice-after-thinks") < 30.0


def test_watchdog_pings_keep_coming_under_12_heavy_validations(api: tuple[Daemon, int]) -> None:
    d, port = api
    watch = WatchdogWatch(d)
    try:
        watch.wait_pings(3)
        wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(900)}}
        heavy_schema = {"model": "m", "messages": QUESTION, "max_tokens": 50,
                        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": wide}}}
        largest = {"type": "object", "properties": {  # within every bound: converted on the check thread
            f"o{j}": {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(63)}}
            for j in range(4)}}
        allowed = {**heavy_schema, "response_format": {"type": "json_schema",
                                                       "json_schema": {"name": "l", "schema": largest}}}
        thinks = {"model": "m", "max_tokens": 50,
                  "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>" * 9300},
                               *QUESTION]}
        statuses: list[int] = []
        lock = threading.Lock()

        def send(body: dict[str, Any]) -> None:
            status, _ = chat(port, body, timeout=300)
            with lock:
                statuses.append(status)

        start = time.monotonic()
        threads = [threading.Thread(target=send, args=(b,)) for b in [heavy_schema] * 12 + [thinks] * 10 + [allowed] * 6]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        end = time.monotonic()
        watch.wait_pings(2)
        gap = watch.max_gap(start, end)
        assert set(statuses) <= {200, 400, 429}, statuses  # 429: more than [engine] queue_max waiting
        assert statuses.count(400) == 12, statuses
        assert gap < 2.0, f"{gap:.2f} s without a WATCHDOG=1 (period {WATCHDOG_USEC / 2e6} s), {end - start:.1f} s in all"
    finally:
        watch.stop()
