"""A board that floods its bridge (issue 12, item 11): 1,500 `S` lines during an answer, 20,000 `P`
pings, 2,000 `HELLO`s. The bridge rate-limits per port, drops what it cannot send, logs once per
burst, and its bus connection (and the answer in progress) survives. Real edgebot-serial on a real
pty, real edgebotd; every wait is on a line or an event with a timeout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgebot.testing.serial_board import PtyBoard
from conftest import Daemon
from test_serial_bridge import Rig  # the serial tests' real bridge process and board rig

pytestmark = pytest.mark.timeout(180)


def drain(board: PtyBoard, quiet_s: float = 1.0, max_s: float = 4.0) -> list[bytes]:
    """Every host line until the line has been quiet for ``quiet_s`` or ``max_s`` passed; answer chunks
    are acknowledged as a board does, so the pacing's resend limit (3 sends without a K) cannot end the
    answer while the test is reading, however slowly the machine runs."""
    lines: list[bytes] = []
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        line = board.read_line(quiet_s)
        if line is None:
            break
        lines.append(line)
        if line.startswith(b"A "):
            ident, seq = line.split(b" ")[1:3]
            board.send(f"K {ident.decode()} {seq.decode()}")
    return lines


def log_lines(rig: Rig, after: int) -> list[str]:
    """INFO and WARNING lines the bridge logged after byte ``after`` of its log (it runs at DEBUG)."""
    text = rig.bridge.log_text()[after:]
    return [ln for ln in text.splitlines() if " INFO " in ln or " WARNING " in ln or " ERROR " in ln]


def test_1500_say_lines_during_an_answer_keep_the_bridge_on_the_bus(tmp_path: Path, slow_loop_model: Path) -> None:
    d = Daemon(tmp_path, slow_loop_model)
    (tmp_path / "rig").mkdir()
    rig = Rig(tmp_path / "rig", d)
    try:
        board = rig.board
        assert board is not None
        board.send("Q 1 Tell me everything")
        board.expect("A 1 0 ")
        board.send("K 1 0")
        mark = len(rig.bridge.log_text())
        board.write(b"".join(b"S %d hello %d\n" % (i % 60000 + 2, i) for i in range(1500)))
        replies = drain(board, 1.0)
        assert not [ln for ln in replies if ln.startswith(b"E 1 error")], "the answer was ended by the flood"
        assert "flood" not in rig.bridge.log_text()[mark:] or "dropping" in rig.bridge.log_text()[mark:]
        errs = [ln for ln in replies if ln.startswith(b"ERR ")]
        assert len(errs) <= 100, f"{len(errs)} ERR replies to a flood"
        ended = [ln for ln in replies if ln.startswith(b"E 1 ")]
        if not ended:  # still streaming: the bridge is still on the bus, and it cancels on X
            board.expect("A 1 ", 30)
            board.send("X 1")
            assert board.expect("E 1", 15) == "E 1 cancelled"
        else:  # the answer ran to its natural end meanwhile, chunks flowing through the flood
            assert ended[0].split(b"*")[0] in (b"E 1 stop", b"E 1 length") and any(ln.startswith(b"A 1 ") for ln in replies)
        logged = log_lines(rig, mark)
        print(f"1,500 S lines during an answer: {len(errs)} ERR replies, {len(logged)} log lines, answer went on")
        assert len(logged) <= 50, f"{len(logged)} log lines for one burst:\n" + "\n".join(logged[:20])
    finally:
        try:
            rig.close()
        finally:
            d.stop()  # even when the bridge did not exit cleanly


@pytest.mark.parametrize("line, count", [(b"P 7*%02X\n", 20000), (b"HELLO 0 flood-1.0*%02X\n", 2000)])
def test_ping_and_hello_floods_are_bounded(tmp_path: Path, script_model: Path, line: bytes, count: int) -> None:
    from edgebot.bridges.serial.protocol import checksum

    d = Daemon(tmp_path, script_model)
    (tmp_path / "rig").mkdir()
    rig = Rig(tmp_path / "rig", d)
    try:
        board = rig.board
        assert board is not None
        body = line.split(b"*")[0]
        one = line % checksum(body)
        mark = len(rig.bridge.log_text())
        board.write(one * count)
        replies = drain(board, 1.0)
        print(f"{count} x {body.decode()}: {len(replies)} replies, {len(log_lines(rig, mark))} log lines")
        assert len(replies) <= 200, f"{len(replies)} replies to {count} lines"
        logged = log_lines(rig, mark)
        assert len(logged) <= 20, f"{len(logged)} log lines:\n" + "\n".join(logged[:20])
        assert any("dropping" in ln for ln in logged)  # said once
        board.hello()
        assert board.ask(2, "What is 2+2?") == ("The answer is 4.", "stop")  # still serving
    finally:
        try:
            rig.close()
        finally:
            d.stop()  # even when the bridge did not exit cleanly


def test_t_arguments_keep_the_spaces_of_string_values_as_documented() -> None:
    """Low item: serial-protocol.md said `T` arguments have no spaces; string values keep theirs, so a
    board that splits the line at spaces breaks the JSON. The doc now says so and how to parse it."""
    import json

    from conftest import REPO
    from edgebot.bridges.serial.protocol import format_action

    args = json.dumps({"text": "hi there"}, separators=(",", ":"), ensure_ascii=True)  # as the bridge does
    line = format_action(4, "show", args)
    assert line.startswith(b'T 4 show {"text":"hi there"}*')
    doc = (REPO / "docs" / "serial-protocol.md").read_text()
    assert "String values keep their own spaces" in doc and "never split it at spaces" in doc


def test_another_client_cannot_take_the_id_of_the_boards_next_question(tmp_path: Path, slow_loop_model: Path) -> None:
    """Item 10, ids: ask ids are unique across the bus, so a client that could predict a bridge's next
    id could take it first and get the board's question refused. The ids end in a random part."""
    d = Daemon(tmp_path, slow_loop_model)
    (tmp_path / "rig").mkdir()
    rig = Rig(tmp_path / "rig", d)
    squatter = d.connect()
    try:
        board = rig.board
        assert board is not None
        board.send("Q 1 Tell me everything")
        board.expect("A 1 0 ")
        board.send("X 1")
        assert board.expect("E 1", 15) == "E 1 cancelled"
        seen = rig.watch.expect("answer-end", 15)["data"]["id"]  # serial:ttyEDGE:1:<pid>.<n>...
        head, _, tail = seen.rpartition(":")
        pid, n = tail.split(".")[:2]
        guess = f"{head.rsplit(':', 1)[0]}:2:{pid}.{int(n) + 1}"  # what the old scheme made next
        squatter.ask(guess, "Tell me everything", max_tokens=4000)
        squatter.expect("answer-start", id=guess)
        board.send("Q 2 And now?")  # refused at once if its id was taken, else queued behind the squatter
        deadline = time.monotonic() + 15
        while True:
            refused = board.read_line(0.02)
            assert refused is None, f"the board's question was refused: {refused!r}"
            squatter.send("status")
            if squatter.expect("status-report")["data"]["queue"]["waiting"] >= 1:
                break  # the board's ask is in the queue
            assert time.monotonic() < deadline, "the board's question never reached edgebotd"
        squatter.send("cancel", id=guess)
        line = board.expect("", 15)
        assert line.startswith("A 2 0 "), f"the board's question was refused: {line}"
        board.send("X 2")
        assert board.expect("E 2", 15) == "E 2 cancelled"
    finally:
        squatter.close()
        try:
            rig.close()
        finally:
            d.stop()
