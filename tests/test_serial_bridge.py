"""edgebot-serial end to end: a scripted board on a real pty, the real bridge process, a real
edgebotd on the test GGUF. Every wait is on a line or a bus event, bounded by a timeout."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from edgebot.testing.script_model import DEFAULT_SCRIPT, write_script_model
from edgebot.testing.serial_board import BoardError, PtyBoard

from conftest import BIN, Daemon, stop_process

EDGEBOT_SERIAL = str(BIN / "edgebot-serial")
ANSWER = "The answer is 4."


class BridgeProc:
    """One ``edgebot-serial`` process serving ``port`` with the given ``[[serial]]`` keys."""

    def __init__(self, tmp: Path, socket: str, port: Path, keys: str = "") -> None:
        self.tmp = tmp
        cfg = tmp / f"serial-{port.name}-{id(self)}.toml"
        if "hello_timeout_s" not in keys:
            keys += "\nhello_timeout_s = 10.0\n"  # the scripted board says HELLO when the bridge opens
        cfg.write_text(f'[[serial]]\nport = "{port}"\n{keys}\n')
        self.log_path = tmp / f"{cfg.stem}.log"
        self.log = open(self.log_path, "wb")
        env = {**os.environ, "EDGEBOT_BOARD": "generic-x86"}
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen([EDGEBOT_SERIAL, "--config", str(cfg), "--socket", socket, "--port", str(port),
                                      "--log-level", "DEBUG"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> int:
        stop_process(self.proc, 10)
        self.log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


class Rig:
    """A board, its bridge and a bus watcher subscribed to the port's reports and answer ends."""

    def __init__(self, tmp: Path, daemon: Daemon, keys: str = "", plugged: bool = True, start: bool = True) -> None:
        self.tmp, self.daemon = tmp, daemon
        self.port = tmp / "ttyEDGE"
        self.watch = daemon.connect()
        self.watch.send("subscribe", types=["serial-port", "answer-end"])
        self.watch.expect("ack")
        self.board: Optional[PtyBoard] = PtyBoard(self.port) if plugged else None
        self.bridge = BridgeProc(tmp, daemon.socket, self.port, keys)
        if plugged and start:
            self.port_state("open")
            self.board.hello()  # type: ignore[union-attr]
            self.port_state("ready")

    def port_state(self, state: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.watch.expect("serial-port", timeout, port=str(self.port), state=state)["data"]

    def events(self, *wanted: tuple[str, dict[str, Any]], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait for every (type, fields) in ``wanted``, in any order; their data in ``wanted``'s order."""
        found: list[Optional[dict[str, Any]]] = [None] * len(wanted)
        while None in found:
            ev = self.watch.recv(timeout)
            assert ev is not None, "edgebotd closed the watcher"
            for i, (type_, match) in enumerate(wanted):
                if found[i] is None and ev["type"] == type_ and all(ev["data"].get(k) == v for k, v in match.items()):
                    found[i] = ev["data"]
                    break
        return found  # type: ignore[return-value]

    def close(self) -> None:
        code = self.bridge.stop()
        if self.board is not None:
            self.board.close()
        self.watch.close()
        assert code == 0, self.bridge.log_text()[-2000:]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Any]:
    made: list[Rig] = []

    def make(daemon: Daemon, keys: str = "", **kw: Any) -> Rig:
        sub = tmp_path / f"rig{len(made)}"
        sub.mkdir()
        r = Rig(sub, daemon, keys, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture(scope="module")
def looping_daemon(tmp_path_factory: pytest.TempPathFactory, slow_loop_model: Path) -> Iterator[Daemon]:
    """An edgebotd whose answers never end (for X and unplug), without a systemd watchdog: the
    shared ``slow_daemon`` pings WATCHDOG=1 every 50 ms into a NotifyListener nobody reads, and
    once that datagram queue is full the daemon blocks in sendto."""
    d = Daemon(tmp_path_factory.mktemp("edgebotd"), slow_loop_model)
    yield d
    d.stop()


def test_full_exchange_reassembles_the_answer_without_thinking(daemon: Daemon, rig: Any) -> None:
    r = rig(daemon)
    board = r.board
    text, reason = board.ask(1, "What is 2+2?")
    assert (text, reason) == (ANSWER, "stop")
    wire = b"\n".join(board.received)
    for piece in DEFAULT_SCRIPT.think:  # thinking never reaches the wire
        if piece.strip() not in ANSWER:
            assert piece.strip().encode() not in wire
    assert all(len(raw) + 1 <= 64 for raw in board.received)  # fits an AVR's 64-byte buffer
    end = r.watch.expect("answer-end", reason="stop")["data"]
    assert end["id"].startswith(f"serial:{r.port.name}:1:")  # namespaced id on the bus
    board.send("P 42")
    assert board.expect("P ") == "P 42"
    # a follow-up with the same board id is a new question
    assert board.ask(1, "And again?") == (ANSWER, "stop")


@pytest.mark.parametrize("window", [1, 2])
def test_a_slow_board_gets_no_chunk_beyond_the_window_early(daemon: Daemon, rig: Any, window: int) -> None:
    r = rig(daemon, f"chunk_bytes = 4\nwindow = {window}\ntimeout_s = 5.0\nflush_s = 0.0\n")
    board = r.board
    board.send("Q 7 What is 2+2?")
    first = [board.expect("A 7 ", 30) for _ in range(window)]
    assert [int(x.split()[2]) for x in first] == list(range(window))
    assert board.read_line(0.6) is None  # acknowledging late: nothing more arrives meanwhile
    board.send(f"K 7 {window - 1}")      # cumulative: acknowledges every chunk so far
    parts = [x.split(" ", 3)[3] for x in first]
    text, reason, seqs = board.collect(7)
    assert seqs[0] == window and reason == "stop"
    assert "".join(parts) + text == ANSWER
    assert r.watch.expect("answer-end")["data"]["reason"] == "stop"


def test_a_missing_ack_is_resent_then_abandoned(daemon: Daemon, rig: Any) -> None:
    r = rig(daemon, "timeout_s = 0.2\n")
    board = r.board
    board.send("Q 3 What is 2+2?")
    sends = [board.expect("A 3 0 ", 30) for _ in range(3)]
    assert len(set(sends)) == 1  # the same chunk, three times
    assert board.expect("E 3", 5) == "E 3 error"
    assert board.read_line(0.5) is None  # nothing after giving up
    assert board.ask(4, "Still there?") == (ANSWER, "stop")


def test_noise_gets_err_and_the_next_good_question_is_answered(daemon: Daemon, rig: Any) -> None:
    r = rig(daemon)
    board = r.board
    noise: list[tuple[bytes, str]] = [
        (b"\x93\xfe\x01\xff random\n", "ERR 0 bad-line"),
        (b"Q 5 hel\x00lo*11\n", "ERR 5 bad-line"),
        (b"Q 6 " + b"x" * 300 + b"\n", "ERR 6 line-too-long"),
        (b"Q 7 What is 2+2?*00\n", "ERR 7 checksum"),
        (b"Q 8 no checksum here\n", "ERR 8 no-checksum"),
        (None, "ERR 9 unknown-verb"),   # filled in below with valid checksums
        (None, "ERR 0 bad-id"),
        (None, "ERR 0 bad-id"),
        (None, "ERR 11 bad-args"),
        (None, "ERR 12 unknown-id"),
        (None, "ERR 13 unknown-id"),
    ]
    good = ["Z 9 hello", "Q 70000 hi", "Q 0 hi", "K 11", "K 12 0", "X 13"]
    for raw, want in noise:
        if raw is None:
            board.send(good.pop(0))
        else:
            board.write(raw)
        got = board.expect("ERR", 10)
        assert got.startswith(want), (raw, got)
    board.write(b"Q 14 a line cut off without its end")  # no terminator: merges with the next line
    board.send("Q 15 What is 2+2?")
    assert board.expect("ERR", 10).startswith("ERR 14 checksum")
    assert board.ask(16, "What is 2+2?") == (ANSWER, "stop")
    assert r.bridge.proc.poll() is None


def test_checksum_optional_takes_a_typed_line_but_not_a_wrong_checksum(daemon: Daemon, rig: Any) -> None:
    r = rig(daemon, 'checksum = "optional"\n')
    board = r.board
    board.send("Q 2 What is 2+2?", with_checksum=False, end=b"\r\n")  # a person in a serial monitor
    assert board.collect(2)[:2] == (ANSWER, "stop")
    board.write(b"Q 3 What is 2+2?*00\n")
    assert board.expect("ERR").startswith("ERR 3 checksum")


def test_x_cancels_an_answer(looping_daemon: Daemon, rig: Any) -> None:
    r = rig(looping_daemon)
    board = r.board
    board.send("Q 21 Tell me everything")
    board.expect("A 21 0 ")
    board.send("X 21")
    assert board.expect("E 21") == "E 21 cancelled"
    end = r.watch.expect("answer-end")["data"]
    assert end["reason"] == "cancelled" and end["id"].startswith(f"serial:{r.port.name}:21:")
    board.send("K 21 0")  # too late: the answer is over
    assert board.expect("ERR").startswith("ERR 21 unknown-id")


def test_unplug_ends_the_question_as_cancelled_and_replug_resumes(looping_daemon: Daemon, rig: Any) -> None:
    r = rig(looping_daemon, plugged=False)
    assert r.port_state("waiting")["message"]  # not there at start: the bridge waits
    r.board = board = PtyBoard(r.port)
    r.port_state("open")
    board.hello("uno-2.1")
    assert r.port_state("ready")["firmware"] == "uno-2.1"
    board.send("Q 1 Tell me everything")
    board.expect("A 1 0 ")
    board.unplug()
    lost, end = r.events(("serial-port", {"port": str(r.port), "state": "lost"}), ("answer-end", {}))
    assert "end of file" in lost["message"] or "failed" in lost["message"]
    assert end["reason"] == "cancelled" and end["id"].startswith(f"serial:{r.port.name}:1:")
    board.plug()  # a new pty behind the same path, as after a USB re-enumeration
    r.port_state("open")
    board.hello("uno-2.1")
    r.port_state("ready")
    board.send("Q 2 And now?")
    board.expect("A 2 0 ")
    board.send("X 2")
    assert board.expect("E 2") == "E 2 cancelled"


def test_the_port_is_opened_exclusively(daemon: Daemon, rig: Any, tmp_path: Path) -> None:
    r = rig(daemon)
    second = BridgeProc(tmp_path, daemon.socket, r.port)
    try:
        report = r.port_state("busy")
        assert "in use" in report["message"]
        assert r.board.ask(1, "What is 2+2?") == (ANSWER, "stop")  # the first bridge keeps serving
        assert sum(line.startswith(b"HELLO") for line in r.board.received) == 1
    finally:
        second.stop()


def test_board_hello_timeout_and_reset_midway(daemon: Daemon, rig: Any) -> None:
    r = rig(daemon, "hello_timeout_s = 0.3\n", start=False)
    r.port_state("open")
    assert "no HELLO" in r.port_state("ready")["message"]  # a board that does not reset on open
    assert r.board.expect("HELLO 0 edgebot")
    assert r.board.ask(1, "What is 2+2?") == (ANSWER, "stop")
    r.board.hello("rebooted")  # the board reset: it is greeted again
    assert r.port_state("ready")["firmware"] == "rebooted"


def test_bus_loss_answers_busy_then_recovers(tmp_path: Path, script_model: Path, rig: Any) -> None:
    sock = str(tmp_path / "bus.sock")
    (tmp_path / "a").mkdir()
    first = Daemon(tmp_path / "a", script_model, socket_path=sock)
    r = rig(first)
    board = r.board
    assert board.ask(1, "What is 2+2?") == (ANSWER, "stop")
    r.watch.close()
    first.stop()
    board.send("Q 2 anyone?")
    assert board.expect("ERR 2", 10).startswith("ERR 2 busy")
    (tmp_path / "b").mkdir()
    second = Daemon(tmp_path / "b", script_model, socket_path=sock)
    try:
        r.watch = second.connect()
        r.watch.send("subscribe", types=["serial-port"])
        r.watch.expect("ack")
        # The bridge reports its port ("ready") once it is back on the bus; it may have done so before the
        # watcher subscribed, or have connected without being back yet (the hub counts it as a client
        # first). So: ask; while the bridge still says edgebotd is not reachable, wait (up to 2 s) for its
        # report and ask again with the next id, as a board would.
        ident = 3
        while True:
            try:
                assert board.ask(ident, "What is 2+2?") == (ANSWER, "stop")
                break
            except BoardError as exc:
                assert "not reachable" in str(exc) and ident < 20, exc
            ident += 1
            try:
                r.port_state("ready", timeout=2.0)
            except TimeoutError:
                pass
    finally:
        r.bridge.stop()
        second.stop()


@pytest.fixture(scope="module")
def unicode_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    script = replace(DEFAULT_SCRIPT, answer=("Café", " “crème”", " 四", "角.\n", "Done"))
    model = write_script_model(tmp_path_factory.mktemp("models") / "unicode.gguf", script)
    d = Daemon(tmp_path_factory.mktemp("edgebotd"), model)
    yield d
    d.stop()


def test_utf8_chunks_and_ascii_transliteration(unicode_daemon: Daemon, rig: Any) -> None:
    plain = rig(unicode_daemon, "chunk_bytes = 4\nflush_s = 0.0\n")
    text, reason = plain.board.ask(1, "Say it")
    assert (text, reason) == ("Café “crème” 四角.\nDone", "stop")
    chunks = [raw.split(b" ", 3)[3][:-3] for raw in plain.board.received if raw.startswith(b"A 1 ")]
    assert all(len(c) <= 4 for c in chunks) and all(c.decode("utf-8") for c in chunks)  # never a split character
    lcd = rig(unicode_daemon, "ascii = true\n")
    text, _ = lcd.board.ask(2, "Say it")
    assert text == 'Cafe "creme" ??.\nDone' and text.isascii()
