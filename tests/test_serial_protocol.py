"""The serial line protocol v1 without a port: parsing, formatting, chunking and pacing rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebot.bridges.serial import chunking, protocol as sp
from edgebot.bridges.serial.pacing import TRIES, AnswerSender


def line(text: str) -> bytes:
    body = text.encode()
    return body + b"*%02X" % sp.checksum(body)


# -- checksum and formatting -------------------------------------------------------------------------

def test_checksum_worked_example_from_the_docs() -> None:
    assert sp.checksum(b"Q 1 What is 2+2?") == 0x44
    assert sp.format_line("Q 1 What is 2+2?") == b"Q 1 What is 2+2?*44\n"
    assert sp.format_line("K", 1, 0) == b"K 1 0*4A\n"


def test_host_lines_fit_a_64_byte_receive_buffer() -> None:
    assert len(sp.format_answer(65535, 999, b"x" * sp.answer_text_limit(65535, 999, 48, None))) == 64
    assert len(sp.format_answer(65535, 65535, b"x" * sp.answer_text_limit(65535, 65535, 48, None))) <= 64
    err = sp.format_error(65535, "line-too-long", "a very long explanation " * 10)
    assert len(err) <= 64 and err.startswith(b"ERR 65535 line-too-long a very") and err.endswith(b"\n")
    assert sp.answer_text_limit(1, 0, 48, 4096) == 48 and sp.answer_text_limit(1, 0, 16, None) == 16
    assert sp.answer_text_limit(1, 0, 48, 32) == 32 - len("A 1 0 ") - 4


# -- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (line("HELLO 0 uno-1.0 rx=64"), sp.McuHello("uno-1.0", 64)),
    (line("HELLO 0 esp32"), sp.McuHello("esp32", None)),
    (line("Q 12 What is 2+2?"), sp.Question(12, "What is 2+2?")),
    (line("Q 65535 안녕? <｜User｜> *x"), sp.Question(65535, "안녕? <｜User｜> *x")),
    (line("K 12 3"), sp.ChunkAck(12, 3)),
    (line("X 12"), sp.CancelAnswer(12)),
    (line("S 4 Hello there"), sp.SayText(4, "Hello there")),
    (line("P 0"), sp.PingMcu(0)),
    (line("q 3 lower-case verbs are fine"), sp.Question(3, "lower-case verbs are fine")),
    (line("Q 1 hi") + b"\r", sp.Question(1, "hi")),
    (b"Q 1 lower hex*%02x" % sp.checksum(b"Q 1 lower hex"), sp.Question(1, "lower hex")),
])
def test_good_lines(raw: bytes, expected: object) -> None:
    assert sp.parse_line(raw) == expected


@pytest.mark.parametrize("raw, ident, code", [
    (b"Q 5 no checksum", 5, "no-checksum"),
    (line("Q 5 hello")[:-2] + b"00", 5, "checksum"),
    (b"Q 5 hel\x00lo*00", 5, "bad-line"),
    (b"\x93\xfe garbage", 0, "no-checksum"),
    (b"\x93\xfe\x01 garbage", 0, "bad-line"),
    (b"Q 5 caf\xe9*%02X" % sp.checksum(b"Q 5 caf\xe9"), 5, "bad-line"),  # Latin-1, not UTF-8
    (line("Z 8 hi"), 8, "unknown-verb"),
    (line("Q 0 hi"), 0, "bad-id"),
    (line("Q 70000 hi"), 0, "bad-id"),
    (line("Q x hi"), 0, "bad-id"),
    (line("HELLO 3 fw"), 0, "bad-id"),
    (line("Q"), 0, "bad-id"),
    (line("Q 9"), 9, "bad-args"),
    (line("K 9"), 9, "bad-args"),
    (line("K 9 1 2"), 9, "bad-args"),
    (line("K 9 -1"), 9, "bad-args"),
    (line("X 9 now"), 9, "bad-args"),
    (line("HELLO 0"), 0, "bad-args"),
    (line("HELLO 0 fw rx=8"), 0, "bad-args"),
    (b"Q 6 " + b"x" * 200, 6, "line-too-long"),
])
def test_bad_lines_are_errors_with_the_id_when_readable(raw: bytes, ident: int, code: str) -> None:
    got = sp.parse_line(raw)
    assert isinstance(got, sp.LineError)
    assert (got.id, got.code) == (ident, code) and got.detail and code in sp.ERR_CODES


def test_optional_checksum_accepts_a_bare_line_but_still_checks_a_given_one() -> None:
    assert sp.parse_line(b"Q 2 typed by hand", checksum_required=False) == sp.Question(2, "typed by hand")
    bad = sp.parse_line(line("Q 2 hi")[:-2] + b"00", checksum_required=False)
    assert isinstance(bad, sp.LineError) and bad.code == "checksum"


def test_reader_splits_resyncs_and_reports_over_long_lines_once() -> None:
    r = sp.LineReader()
    good = line("Q 1 What is 2+2?") + b"\r\n"
    events = []
    for i in range(len(good)):  # byte by byte
        events += r.feed(good[i:i + 1])
    assert events == [sp.Question(1, "What is 2+2?")]
    assert r.feed(b"\n\r\n") == []  # empty lines are ignored
    events = r.feed(b"Q 7 " + b"y" * 500)
    assert events == [] and r.buffered <= sp.MAX_LINE_BYTES + 2
    events = r.feed(b"y" * 500 + b"\n" + line("K 1 0") + b"\n")
    assert [type(e) for e in events] == [sp.LineError, sp.ChunkAck]
    assert events[0].code == "line-too-long" and events[0].id == 7  # type: ignore[union-attr]
    # a line without terminator merges with the next one: one error, then the stream is in step
    events = r.feed(b"Q 3 cut off") + r.feed(line("Q 4 next") + b"\n" + line("Q 5 fine") + b"\n")
    assert [getattr(e, "code", None) for e in events] == ["checksum", None]
    assert events[1] == sp.Question(5, "fine")


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12), st.booleans())
def test_arbitrary_bytes_never_raise_and_memory_stays_bounded(pieces: list[bytes], required: bool) -> None:
    r = sp.LineReader(required)
    for piece in pieces:
        for ev in r.feed(piece):
            assert isinstance(ev, (sp.McuHello, sp.Question, sp.ChunkAck, sp.CancelAnswer, sp.SayText, sp.PingMcu,
                                   sp.LineError))
            assert 0 <= ev.id <= sp.MAX_ID
            if isinstance(ev, sp.LineError):
                assert ev.code in sp.ERR_CODES
                assert len(sp.format_error(ev.id, ev.code, ev.detail)) <= 64
        assert r.buffered <= sp.MAX_LINE_BYTES + 2


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 65535), st.text(min_size=1, max_size=100).filter(lambda t: t.strip()))
def test_formatted_board_lines_parse_back(ident: int, text: str) -> None:
    clean = "".join(c for c in text if c.isprintable()).strip()
    raw = line(f"Q {ident} {clean}")
    got = sp.parse_line(raw)
    if not clean:
        assert isinstance(got, sp.LineError)
    elif len(raw) <= sp.MAX_LINE_BYTES:
        assert got == sp.Question(ident, clean.strip())
    else:
        assert isinstance(got, sp.LineError) and got.code == "line-too-long"


# -- answer text -------------------------------------------------------------------------------

def test_escaping_keeps_line_breaks_off_the_wire() -> None:
    units = chunking.escape_units("a\nb\\c\td\x07")
    wire = b"".join(u for u, _ in units)
    assert wire == b"a\\nb\\\\c d" and b"\n" not in wire
    assert chunking.unescape(wire) == "a\nb\\c d"


def test_ascii_transliteration() -> None:
    assert chunking.to_ascii("Café “crème” — 2×3 … 四") == 'Cafe "creme" - 2x3 ... ?'


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200), st.integers(4, 48))
def test_chunks_never_split_a_character_and_never_exceed_the_limit(text: str, limit: int) -> None:
    c = chunking.Chunker(flush_s=0.05)
    c.push(text, now=0.0)
    chunks = []
    while (chunk := c.take(limit, now=0.0, final=True)) is not None:
        assert 0 < len(chunk) <= limit
        chunk.decode("utf-8")  # each chunk is whole UTF-8 by itself
        chunks.append(chunk)
    expected = "".join(ch for ch in text.replace("\t", " ") if ch == "\n" or (ord(ch) >= 0x20 and ord(ch) != 0x7F))
    assert chunking.unescape(b"".join(chunks)) == expected


def test_chunker_timing_full_word_boundary_and_lone_word() -> None:
    c = chunking.Chunker(flush_s=0.05)
    c.push("The answ", now=0.0)
    assert c.take(48, now=0.01) is None            # young text waits for company
    assert c.next_ready_at() == pytest.approx(0.05)
    assert c.take(48, now=0.05) == b"The "          # it has waited: sent up to the word boundary
    c.push("er is", now=0.06)
    assert c.next_ready_at() == pytest.approx(0.05)  # 'answ' is still the oldest text
    assert c.take(48, now=0.06) == b"answer "       # ... and now ends in a boundary
    assert c.take(48, now=0.1) is None              # 'is' (from 0.06) is young
    assert c.take(48, now=0.11) == b"is"            # a lone word is not held for the next token
    assert c.take(48, now=1.0) is None and c.next_ready_at() is None
    c3 = chunking.Chunker(flush_s=10.0)
    c3.push("x" * 60, now=0.0)
    assert c3.take(48, now=0.0) == b"x" * 48         # a full chunk goes at once
    assert c3.take(48, now=0.0, final=True) == b"x" * 12  # the end of the answer flushes the rest


# -- pacing ------------------------------------------------------------------------------------

def a_lines(lines: list[bytes]) -> list[tuple[int, bytes]]:
    out = []
    for raw in lines:
        if raw.startswith(b"A "):
            _, _, seq, text = raw[:-4].split(b" ", 3)
            out.append((int(seq), text))
    return out


def test_window_one_waits_for_each_ack_and_ends_after_the_last() -> None:
    s = AnswerSender(9, window=1, chunk_bytes=8, flush_s=0.0, timeout_s=1.0)
    s.add_text("The answer is 4.", 0.0)
    s.end("stop")
    assert a_lines(s.poll(0.0)) == [(0, b"The answ")]
    assert s.poll(0.5) == []                          # no second chunk before K 0
    assert s.ack(0) and a_lines(s.poll(0.5)) == [(1, b"er is 4.")]
    assert s.ack(0)                                    # a duplicate K is harmless
    assert not s.ack(5)                                # K for a chunk never sent
    assert s.ack(1) and s.poll(0.6) == [b"E 9 stop*%02X\n" % sp.checksum(b"E 9 stop")]
    assert s.done and s.finished == "stop" and s.poll(9.0) == []


def test_window_two_and_cumulative_ack() -> None:
    s = AnswerSender(1, window=2, chunk_bytes=4, flush_s=0.0)
    s.add_text("abcdefghijkl", 0.0)
    assert [q for q, _ in a_lines(s.poll(0.0))] == [0, 1]
    assert s.ack(1) and [q for q, _ in a_lines(s.poll(0.1))] == [2]


def test_resend_then_give_up_after_three_tries() -> None:
    s = AnswerSender(3, window=1, chunk_bytes=48, flush_s=0.0, timeout_s=0.2)
    s.add_text("Hello.", 0.0)
    s.end("stop")
    sends = a_lines(s.poll(0.0))
    assert s.deadline() == pytest.approx(0.2) and s.poll(0.19) == []
    sends += a_lines(s.poll(0.2))
    sends += a_lines(s.poll(0.4))
    assert sends == [(0, b"Hello.")] * TRIES and not s.done and s.resends == TRIES - 1
    assert s.poll(0.6) == [sp.format_end(3, "error")] and s.finished == "error"


def test_cancel_ends_with_cancelled_once_the_bus_confirms() -> None:
    s = AnswerSender(4, window=1, chunk_bytes=8, flush_s=0.0)
    s.add_text("a long answer that goes on", 0.0)
    assert a_lines(s.poll(0.0))
    s.cancel()
    assert s.poll(0.1) == [] and s.deadline() is None
    s.add_text("more text after X", 0.2)
    s.end("cancelled")
    assert s.poll(0.3) == [sp.format_end(4, "cancelled")]


def test_rx_from_hello_shrinks_chunks() -> None:
    s = AnswerSender(7, window=1, chunk_bytes=48, flush_s=0.0, rx=32)
    s.add_text("x" * 100, 0.0)
    (line_,) = s.poll(0.0)
    assert len(line_) <= 32
