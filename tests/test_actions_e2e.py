"""Robot actions end to end: a real edgebotd (real llama.cpp on a script GGUF whose answer is a tool
call), the real edgebot-serial process, and a scripted microcontroller on a real pty that sees the
``T`` lines and answers ``R``. Every wait is on a line or a bus event with a timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from edgebot.testing.script_model import Script, write_script_model
from edgebot.testing.serial_board import PtyBoard

from conftest import BusConn, Daemon
from test_serial_bridge import Rig

TOOL_SCRIPT = Script(think=("The user", " wants light."), close=("</th", "ink>\n\n"),
                     answer=('{"action":', ' "led",', ' "args":', ' {"state":', ' "on"}}'),
                     after_close=("I switched", " the light on."))  # the model's sentence about the result

ACTIONS = '''
[robot]
result_timeout_s = 8.0
confirm_timeout_s = 30.0

[[actions]]
name = "led"
description = "turn the LED on or off"
port = "ttyEDGE"
parameters = { type = "object", properties = { state = { enum = ["on", "off"] } } }
phrases = { "turn on the light" = { state = "on" }, "light {state}" = {} }

[[actions]]
name = "bright"
description = "set the LED brightness"
port = "ttyEDGE"
parameters = { properties = { level = { type = "integer", minimum = 0, maximum = 100 } } }
phrases = { "set brightness to {level}" = {} }

[[actions]]
name = "door"
description = "open the door"
port = "ttyEDGE"
confirm = true
phrases = { "open the door" = {} }

[[actions]]
name = "beep"
description = "beep once"
port = "ttyEDGE"
rate_limit = 1
rate_window_s = 600.0
phrases = { "beep" = {} }
'''


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_script_model(tmp_path_factory.mktemp("models") / "tool.gguf", TOOL_SCRIPT)


@pytest.fixture(scope="module")
def robot(tmp_path_factory: pytest.TempPathFactory, tool_model: Path) -> Iterator[tuple[Daemon, Rig]]:
    """One edgebotd with the actions above and one board on ttyEDGE (T resent after 0.3 s)."""
    d = Daemon(tmp_path_factory.mktemp("edgebotd"), tool_model, ACTIONS)
    sub = tmp_path_factory.mktemp("rig")
    r = Rig(sub, d, "timeout_s = 0.3\n")
    yield d, r
    r.close()
    d.stop()


def collect(conn: BusConn, ask_id: str, timeout: float = 30.0) -> tuple[str, dict[str, Any], list[dict]]:
    """(answer text, answer-end or error event, action events) of ask ``ask_id``."""
    parts: list[str] = []
    actions: list[dict] = []
    while True:
        ev = conn.recv(timeout)
        assert ev is not None
        data = ev["data"]
        if ev["type"] == "action" and data.get("ask") == ask_id:
            actions.append(data)
        elif data.get("id") != ask_id:
            continue
        elif ev["type"] == "answer-delta":
            parts.append(data["text"])
        elif ev["type"] in ("answer-end", "error"):
            return "".join(parts), ev, actions


def run(conn: BusConn, board: PtyBoard, ask_id: str, text: str, reply: Optional[str] = "ok done",
        expect_line: Optional[str] = None) -> tuple[str, dict[str, Any], list[dict]]:
    """Ask ``text``; when ``reply`` is given the board waits for a T line (checked against
    ``expect_line`` with its id) and answers ``R <id> <reply>``; else it must be sent nothing."""
    conn.send("ask", id=ask_id, text=text)
    if reply is not None:
        line = board.expect("T ", 30)
        ident = int(line.split()[1])
        if expect_line is not None:
            assert line == f"T {ident} {expect_line}"
        board.send(f"R {ident} {reply}")
    result = collect(conn, ask_id)
    if reply is None:
        assert board.read_line(0.3) is None, "the board was sent a line"
    return result


def submitted(conn: BusConn) -> int:
    conn.send("status")
    return conn.expect("status-report")["data"]["queue"]["submitted"]


@pytest.fixture
def bus(robot: tuple[Daemon, Rig]) -> Iterator[tuple[BusConn, PtyBoard]]:
    daemon, rig = robot
    assert rig.board is not None
    conn = daemon.connect()
    yield conn, rig.board
    conn.close()


def test_model_path_calls_the_led_through_the_grammar(bus: tuple[BusConn, PtyBoard]) -> None:
    conn, board = bus
    before = submitted(conn)
    text, end, actions = run(conn, board, "m1", "It is dark in here, can you help?", "ok LED on",
                             'led {"state":"on"}')
    assert end["type"] == "answer-end" and end["data"]["reason"] == "stop"
    assert text == "I switched the light on."  # the result went back to the model, which said so
    assert [(a["name"], a["args"], a["result"], a["path"], a["text"]) for a in actions] == \
        [("led", {"state": "on"}, "ok", "model", "LED on")]
    assert submitted(conn) == before + 2  # the call, then the sentence about its result


def test_fast_path_runs_without_an_engine_job(bus: tuple[BusConn, PtyBoard]) -> None:
    conn, board = bus
    before = submitted(conn)
    text, end, actions = run(conn, board, "f1", "Light off!", "ok LED off", 'led {"state":"off"}')
    assert text == "Done: LED off" and end["data"]["reason"] == "stop"
    assert actions[0]["path"] == "phrase" and actions[0]["result"] == "ok"
    text, end, _ = run(conn, board, "f2", "set brightness to 40", "ok 40%", 'bright {"level":40}')
    assert text == "Done: 40%"
    assert submitted(conn) == before


@pytest.mark.parametrize("utterance, words", [
    ("set brightness to 999", "999 is greater than the maximum of 100"),
    ("light dim", "'dim' is not one of ['on', 'off']"),
    ("set brightness to lots", "'lots' is not of type 'integer'"),
])
def test_invalid_arguments_are_refused_and_nothing_is_sent(bus: tuple[BusConn, PtyBoard], utterance: str,
                                                           words: str) -> None:
    conn, board = bus
    text, end, actions = run(conn, board, "bad", utterance, None)
    assert text.startswith("I could not do that: ") and words in text
    assert end["data"]["reason"] == "stop"
    assert actions[0]["result"] == "refused" and words in actions[0]["text"]


def test_a_board_that_never_answers_is_a_timeout(bus: tuple[BusConn, PtyBoard]) -> None:
    conn, board = bus
    conn.send("ask", id="t1", text="turn on the light")
    lines = [board.expect("T ", 10) for _ in range(3)]  # the first send and two resends, same id
    assert len(set(lines)) == 1
    text, end, actions = collect(conn, "t1")
    assert text.startswith("I could not do that: the board did not answer")
    assert actions[0]["result"] == "timeout"
    assert board.read_line(0.3) is None
    board.send(f"R {lines[0].split()[1]} ok late")  # a late R is refused, the line goes on
    assert board.expect("ERR ", 10).split()[2] == "unknown-id"


def test_confirmation_declined_then_accepted(bus: tuple[BusConn, PtyBoard]) -> None:
    conn, board = bus
    text, _, actions = run(conn, board, "c1", "Open the door.", None)
    assert text == "Shall I open the door?" and actions[0]["result"] == "pending"
    text, _, actions = run(conn, board, "c2", "No!", None)
    assert text == "OK, I will not do that." and actions[0]["result"] == "declined"
    run(conn, board, "c3", "open the door", None)
    text, _, actions = run(conn, board, "c4", "yes", "ok door open", "door {}")
    assert text == "Done: door open" and actions[0]["path"] == "confirm" and actions[0]["result"] == "ok"


def test_rate_limit(bus: tuple[BusConn, PtyBoard]) -> None:
    conn, board = bus
    text, _, _ = run(conn, board, "r1", "beep", "ok beep", "beep {}")
    assert text == "Done: beep"
    text, _, actions = run(conn, board, "r2", "beep", None)
    assert "beep may run at most 1 times per 600 s" in text and actions[0]["result"] == "refused"


def test_actions_are_reported_to_subscribers_and_in_status(robot: tuple[Daemon, Rig],
                                                           bus: tuple[BusConn, PtyBoard]) -> None:
    daemon, _ = robot
    conn, board = bus
    watch = daemon.connect()
    watch.send("subscribe", types=["action"])
    watch.expect("ack")
    run(conn, board, "s1", "light on", "ok LED on")
    ev = watch.expect("action", 10, ask="s1")["data"]
    assert ev["result"] == "ok" and ev["name"] == "led" and ev["source"] == "cli"
    watch.send("status")
    report = watch.expect("status-report")["data"]["actions"]
    assert report["enabled"] is True and [a["name"] for a in report["declared"]] == ["led", "bright", "door", "beep"]
    watch.close()


def test_cli_lists_actions_and_shows_an_action_taken(robot: tuple[Daemon, Rig]) -> None:
    daemon, rig = robot
    board = rig.board
    assert board is not None
    listed = daemon.cli("actions")
    assert listed.returncode == 0, listed.stderr
    assert "led" in listed.stdout and "turn the LED on or off" in listed.stdout and "confirm" in listed.stdout
    import subprocess

    env = {**daemon.env, "EDGEBOT_SOCKET": daemon.socket}
    proc = subprocess.Popen([str(Path(__import__("sys").executable).parent / "edgebot-cli"), "ask", "light", "on"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = board.expect("T ", 30)
    board.send(f"R {line.split()[1]} ok LED on")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == "Done: LED on"
    assert 'action led {"state": "on"}: ok (LED on)' in err


def test_switched_off_actions_are_refused_and_nothing_is_sent(tmp_path_factory: pytest.TempPathFactory,
                                                               tool_model: Path) -> None:
    d = Daemon(tmp_path_factory.mktemp("edgebotd"), tool_model, ACTIONS.replace("[robot]", "[robot]\nactions = false"))
    r = Rig(tmp_path_factory.mktemp("rig"), d)
    try:
        conn = d.connect()
        assert r.board is not None
        before = submitted(conn)
        text, end, actions = run(conn, r.board, "off1", "turn on the light", None)
        assert text == "I could not do that: actions are switched off"
        assert actions[0]["result"] == "refused" and submitted(conn) == before
        # the model is not offered the actions: its scripted tool call is only text now
        text, end, actions = run(conn, r.board, "off2", "It is dark in here", None)
        assert end["data"]["reason"] == "stop" and not actions and text.startswith('{"action":')
        conn.close()
    finally:
        r.close()
        d.stop()


def test_the_board_asks_for_its_own_action_and_confirms_with_a_button(bus: tuple[BusConn, PtyBoard]) -> None:
    """What examples/arduino/edgebot_led does: its Q leads to a T on the same line (sent while its
    answer waits), its R becomes the answer; a button's ``Q <id> yes`` confirms a pending action."""
    conn, board = bus
    board.send("Q 5 turn on the light")
    line = board.expect("T ", 10)
    assert line.split(" ", 2)[2] == 'led {"state":"on"}'
    board.send(f"R {line.split()[1]} ok LED on")
    text, reason, _ = board.collect(5, 10)
    assert (text, reason) == ("Done: LED on", "stop")
    text, _, actions = run(conn, board, "b1", "open the door", None)
    assert actions[0]["result"] == "pending"
    board.send("Q 6 yes")
    line = board.expect("T ", 10)
    assert line.split(" ", 2)[2] == "door {}"
    board.send(f"R {line.split()[1]} ok door open")
    text, reason, _ = board.collect(6, 10)
    assert (text, reason) == ("Done: door open", "stop")


def test_cancel_while_the_board_works(bus: tuple[BusConn, PtyBoard]) -> None:
    conn, board = bus
    conn.send("ask", id="x1", text="light on")
    line = board.expect("T ", 10)
    conn.send("cancel", id="x1")
    text, end, actions = collect(conn, "x1")
    assert end["type"] == "answer-end" and end["data"]["reason"] == "cancelled" and text == ""
    assert actions[0]["result"] == "cancelled"
    board.send(f"R {line.split()[1]} ok LED on")  # the late result frees the line and is ignored
    text, _, _ = run(conn, board, "x2", "light off", "ok LED off")
    assert text == "Done: LED off"


def test_arguments_go_on_the_wire_in_declared_order(tmp_path_factory: pytest.TempPathFactory,
                                                    tool_model: Path) -> None:
    config = '''
[[actions]]
name = "move"
port = "ttyEDGE"
parameters = { properties = { dir = { enum = ["left", "right"] }, steps = { type = "integer", minimum = 1, maximum = 9 } } }
phrases = { "{steps} steps {dir}" = {} }
'''
    d = Daemon(tmp_path_factory.mktemp("edgebotd"), tool_model, config)
    r = Rig(tmp_path_factory.mktemp("rig"), d)
    try:
        conn = d.connect()
        assert r.board is not None
        text, _, _ = run(conn, r.board, "o1", "3 steps left", "ok moved", 'move {"dir":"left","steps":3}')
        assert text == "Done: moved"
        conn.close()
    finally:
        r.close()
        d.stop()
