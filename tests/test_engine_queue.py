"""Priority, the bounded queue, cancel and disconnects, on the slow looping model (real llama.cpp)."""

from __future__ import annotations

from conftest import Daemon


def _start_long(bus, id_: str) -> None:
    bus.ask(id_, "count forever", max_tokens=4000)
    bus.expect("answer-start", id=id_)


def test_priority_order_and_busy(slow_daemon: Daemon) -> None:
    runner, cli_client, voice_client, late = (slow_daemon.connect() for _ in range(4))
    watcher = slow_daemon.connect()
    watcher.send("subscribe", types=["answer-start"])
    watcher.expect("ack")
    _start_long(runner, "long")
    # the engine is busy: both wait in the queue (max 2); the voice one was asked last
    cli_client.ask("from-cli", "cli question", max_tokens=3)
    voice_client.ask("from-voice", "voice question", source="voice", max_tokens=3)
    watcher.send("status")
    assert watcher.expect("status-report")["data"]["queue"]["waiting"] == 2
    late.ask("too-many", "one more", max_tokens=3)
    err = late.expect("error", id="too-many")
    assert err["data"]["code"] == "busy"
    runner.send("cancel", id="long")
    assert runner.expect("answer-end", id="long")["data"]["reason"] == "cancelled"
    starts = [watcher.expect("answer-start")["data"]["id"] for _ in range(2)]
    assert starts == ["from-voice", "from-cli"]  # voice outranks cli
    for client, id_ in ((voice_client, "from-voice"), (cli_client, "from-cli")):
        end = client.expect("answer-end", id=id_)
        assert end["data"]["reason"] == "length" and end["data"]["stats"]["completion_tokens"] == 3
    for c in (runner, cli_client, voice_client, late, watcher):
        c.close()


def test_cancel_mid_answer_stops_within_a_token(slow_daemon: Daemon) -> None:
    bus = slow_daemon.connect()
    bus.ask("c1", "count forever", max_tokens=4000)
    bus.expect("answer-delta", id="c1")
    bus.send("cancel", id="c1")
    end = bus.expect("answer-end", id="c1")
    assert end["data"]["reason"] == "cancelled"
    assert end["data"]["stats"]["completion_tokens"] < 4000
    bus.send("cancel", id="c1")
    assert bus.expect("error")["data"]["code"] == "not-found"
    bus.close()


def test_disconnect_mid_answer_frees_the_engine(slow_daemon: Daemon) -> None:
    leaver = slow_daemon.connect()
    _start_long(leaver, "abandoned")
    leaver.close()
    bus = slow_daemon.connect()
    text, end = bus.answer("next", "are you free?", max_tokens=4)
    assert end["type"] == "answer-end" and end["data"]["reason"] == "length"
    bus.send("status")
    assert bus.expect("status-report")["data"]["queue"]["waiting"] == 0
    bus.close()


def test_duplicate_id_is_refused(slow_daemon: Daemon) -> None:
    bus = slow_daemon.connect()
    _start_long(bus, "dup")
    other = slow_daemon.connect()
    other.ask("dup", "same id")
    assert other.expect("error", id="dup")["data"]["code"] == "duplicate-id"
    bus.send("cancel", id="dup")
    assert bus.expect("answer-end", id="dup")["data"]["reason"] == "cancelled"
    bus.close()
    other.close()


def test_watchdog_pings_while_a_long_answer_is_generated(slow_daemon: Daemon) -> None:
    bus = slow_daemon.connect()
    bus.ask("wd", "count forever", max_tokens=4000)
    bus.expect("answer-delta", id="wd")
    # three fresh WATCHDOG=1 datagrams, each while tokens are still coming
    for _ in range(3):
        slow_daemon.notify.drain()
        slow_daemon.notify.wait_for("WATCHDOG=1", timeout=5)
        assert bus.expect("answer-delta", id="wd")  # the answer is still streaming
        bus.send("status")  # and the answer has not ended
        assert bus.expect("status-report")["data"]["queue"]["running"] == "wd"
    bus.send("cancel", id="wd")
    assert bus.expect("answer-end", id="wd")["data"]["reason"] == "cancelled"
    bus.close()
