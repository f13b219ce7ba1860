"""Bad input at every door: the bus codec and the serial parser fuzzed with 10,000 generated inputs
each (EDGEBOT_FUZZ_EXAMPLES raises it for the soak), 1 MB prompts, prompts made only of
special-token text, invalid UTF-8 on the bus, the serial line, the command line and in config
files, and config files with every kind of mistake."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgebot.bridges.serial import protocol as sp
from edgebot.bus import codec
from edgebot.bus import messages as m
from edgebot.config import ConfigError, load_config
from conftest import EDGEBOT_CLI, EDGEBOTD, Daemon
from test_codec import SAMPLES

ANSWER = "The answer is 4."
FUZZ = int(os.environ.get("EDGEBOT_FUZZ_EXAMPLES", "10000"))
FUZZ_SETTINGS = settings(max_examples=FUZZ, deadline=None, suppress_health_check=list(HealthCheck))
SPECIAL = ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>"]
GOOD_LINES = [codec.encode(msg) for msg in SAMPLES.values()]


def mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: replace, insert, delete, truncate."""
    buf = bytearray(data)
    for kind, pos, byte in ops:
        if not buf:
            buf.append(byte)
            continue
        pos %= len(buf)
        if kind == 0:
            buf[pos] = byte
        elif kind == 1:
            buf.insert(pos, byte)
        elif kind == 2:
            del buf[pos]
        else:
            del buf[pos:]
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)), max_size=6)


@FUZZ_SETTINGS
@given(st.one_of(st.binary(max_size=400),
                 st.tuples(st.sampled_from(GOOD_LINES), edits).map(lambda t: mutate(*t)),
                 st.sampled_from(GOOD_LINES)))
def test_codec_fuzz_decodes_or_gives_a_typed_error(line: bytes) -> None:
    """Random bytes and mutated real lines (flipped, inserted, deleted bytes, invalid UTF-8)."""
    try:
        msg = codec.decode(line)
    except codec.ProtocolError as exc:
        assert exc.code in m.ERROR_CODES and str(exc)
    else:
        assert isinstance(msg, m.Message)
        assert codec.decode(codec.encode(msg)) == msg  # whatever is accepted re-encodes to itself


SERIAL_GOOD = [b"HELLO 0 uno-1.0 rx=64", b"Q 12 What is 2+2?", b"K 12 3", b"X 12", b"S 9 hello", b"P 1",
               b"R 4 ok LED on"]


def checksummed(body: bytes) -> bytes:
    return body + b"*%02X" % sp.checksum(body)


@FUZZ_SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=200),
                          st.tuples(st.sampled_from(SERIAL_GOOD), edits).map(lambda t: checksummed(mutate(*t))),
                          st.tuples(st.sampled_from(SERIAL_GOOD), edits).map(lambda t: mutate(checksummed(t[0]), t[1])),
                          st.sampled_from(SERIAL_GOOD).map(checksummed)).map(lambda b: b + b"\n"),
                max_size=6), st.booleans(), st.integers(1, 64))
def test_serial_parser_fuzz_events_are_well_formed_and_memory_bounded(lines: list[bytes], required: bool,
                                                                      split: int) -> None:
    """Mutated real lines (with and without a valid checksum), random bytes, fed in odd-sized pieces."""
    reader = sp.LineReader(required)
    stream = b"".join(lines)
    for i in range(0, len(stream), split):
        for ev in reader.feed(stream[i:i + split]):
            assert 0 <= ev.id <= sp.MAX_ID
            if isinstance(ev, sp.LineError):
                assert ev.code in sp.ERR_CODES
                assert len(sp.format_error(ev.id, ev.code, ev.detail)) <= 64
        assert reader.buffered <= sp.MAX_LINE_BYTES + 2


def test_serial_parser_1mb_without_newline_is_one_error_and_bounded() -> None:
    reader = sp.LineReader(True)
    events = []
    for _ in range(0, 1 << 20, 4096):
        events += reader.feed(b"\xff" * 4096)
        assert reader.buffered <= sp.MAX_LINE_BYTES + 2
    events += reader.feed(b"\n" + checksummed(b"Q 7 after the flood") + b"\n")
    assert [type(e).__name__ for e in events] == ["LineError", "Question"]
    assert events[1] == sp.Question(7, "after the flood")


def test_a_1mb_prompt_is_refused_clearly_and_the_daemon_keeps_serving(daemon: Daemon) -> None:
    bus = daemon.connect()
    text = ("word " * 209_000)[:1_040_000]  # ~1 MB: fits the 1 MiB line with its envelope
    bus.ask("huge", text)
    err = bus.expect("error", 120, id="huge")["data"]
    assert err["code"] == "too-long" and "context" in err["message"]
    over = json.dumps({"type": "ask", "data": {"id": "over", "text": "x" * (1 << 20)}}).encode() + b"\n"
    bus.send_raw(over)  # just over the line limit: refused and disconnected (the rest is not a message)
    assert bus.expect("error", 60)["data"]["code"] == "line-too-long"
    assert bus.recv(30) is None
    other = daemon.connect()
    assert other.answer("after", "What is 2+2?")[0] == ANSWER
    other.close()


def test_a_1mb_question_from_the_cli_is_refused_clearly(daemon: Daemon) -> None:
    words = ["lorem" * 20] * 10_000  # ~1 MB in 10,000 arguments (one argument may be 128 KiB at most)
    res = daemon.cli("ask", *words, timeout=120)
    assert res.returncode == 1 and "too-long" in res.stderr, res.stderr[-500:]


@pytest.mark.parametrize("text", SPECIAL + ["".join(SPECIAL), "</think>" * 50])
def test_prompts_of_only_special_token_text_are_answered_as_text(daemon: Daemon, text: str) -> None:
    bus = daemon.connect()
    answer, end = bus.answer(f"sp{abs(hash(text))}", text)
    assert answer == ANSWER and end["data"]["reason"] == "stop", end
    # the typed text became many plain tokens, not one control token each
    assert end["data"]["stats"]["prompt_tokens"] >= len(text) // 2
    bus.close()


def test_invalid_utf8_on_the_command_line(daemon: Daemon) -> None:
    env = {**daemon.env, "EDGEBOT_SOCKET": daemon.socket}
    env.pop("NOTIFY_SOCKET", None)
    res = subprocess.run([EDGEBOT_CLI.encode(), b"ask", b"what is \xff\xfe 2+2?"], env=env, capture_output=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode() == ANSWER + "\n"


def test_invalid_utf8_in_json_strings_and_lone_surrogates_on_the_bus(daemon: Daemon) -> None:
    bus = daemon.connect()
    bus.send_raw(b'{"type": "ask", "data": {"id": "u1", "text": "caf\xe9"}}\n')
    assert bus.expect("error")["data"]["code"] == "bad-json"
    bus.send_raw(b'{"type": "ask", "data": {"id": "u2", "text": "lone \\ud800 surrogate"}}\n')
    err = bus.expect("error")["data"]  # found here: it reached the engine and failed as "internal"
    assert err["code"] == "bad-json" and "surrogate" in err["message"]
    bus.send_raw('{"type": "ask", "data": {"id": "u3", "text": "a pair \\ud83d\\ude00 is fine"}}\n'.encode())
    assert bus.expect("answer-end", id="u3")["data"]["reason"] == "stop"
    bus.send("ping", id="alive")
    assert bus.expect("pong")["data"]["id"] == "alive"
    bus.close()


CONFIG_MISTAKES = [
    (b"[llm\nn_ctx = 1\n", "edgebot.toml"),                       # TOML syntax
    (b"[llm]\nn_ctx = \"big\"\n", "n_ctx"),                       # wrong type
    (b"[llm]\nn_ctx = -5\n", "n_ctx"),                            # out of range
    (b"[llm]\nn_ctxx = 4096\n", "n_ctxx"),                        # unknown key
    (b"[lmm]\nn_ctx = 4096\n", "lmm"),                            # unknown section
    (b"[llm]\nn_ctx = 1\nn_ctx = 2\n", "edgebot.toml"),           # duplicate key
    (b"[engine]\npriorities = \"voice\"\n", "priorities"),       # table expected
    (b"[engine]\npriorities = {voice = \"high\"}\n", "priorities"),
    (b"[bus]\nsocket = 5\n", "socket"),
    (b"[daemon]\nwatchdog = \"yes\"\n", "watchdog"),
    (b"[daemon]\nstall_s = -1\n", "stall_s"),
    (b"[[serial]]\nbaud = 9600\n", "port"),                       # array entry missing its required key
    (b"[serial]\nport = \"/dev/ttyUSB0\"\n", "serial"),           # a table where an array is expected
    (b"[llm]\nn_ctx = 4096\n\xff\xfe\n", "edgebot.toml"),         # invalid UTF-8
    (b"\x00\x01\x02", "edgebot.toml"),                            # binary garbage
]


@pytest.mark.parametrize("content, named", CONFIG_MISTAKES)
def test_config_mistakes_are_clear_errors(tmp_path: Path, content: bytes, named: str) -> None:
    path = tmp_path / "edgebot.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert named in str(err.value), str(err.value)


def test_config_file_that_is_a_directory_or_missing(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing.toml"):
        with pytest.raises(ConfigError) as err:
            load_config(path, environ={})
        assert str(path) in str(err.value)


def test_the_daemon_exits_78_on_invalid_utf8_config_and_bad_env(tmp_path: Path, script_model: Path) -> None:
    path = tmp_path / "edgebot.toml"
    path.write_bytes(b"[llm]\n\xff = 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEBOT_")}
    for extra, cfg in (({}, path), ({"EDGEBOT_LLM_N_CTX": "lots"}, None)):
        args = [EDGEBOTD, "--model", str(script_model), "--socket", str(tmp_path / "s.sock")]
        if cfg:
            args += ["--config", str(cfg)]
        res = subprocess.run(args, env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert res.returncode == 78 and "configuration error" in res.stderr, res.stderr


def test_tokens_longer_than_32_bytes_reach_the_answer(daemon_factory, tmp_path: Path) -> None:
    """Found here: llama-cpp-python's detokenize has a 32-byte buffer and returned nothing for a
    longer token (Qwen's vocabulary has such tokens: long runs of spaces, dashes, '=')."""
    from dataclasses import replace

    from edgebot.testing.script_model import DEFAULT_SCRIPT, write_script_model

    pieces = ("Indent:", " " * 40 + "x", "=" * 64, " 四" * 20, " end.")
    model = write_script_model(tmp_path / "long-tokens.gguf", replace(DEFAULT_SCRIPT, answer=pieces))
    d = daemon_factory(model)
    bus = d.connect()
    text, end = bus.answer("long", "show me")
    assert text == "".join(pieces) and end["data"]["reason"] == "stop"
    bus.close()
