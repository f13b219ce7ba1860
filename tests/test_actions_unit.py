"""Declared actions without a daemon: config checks, argument validation (real jsonschema), the
phrase fast path, the model answer schema and reading the model's answer back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgebot.actions import tools
from edgebot.actions.matcher import PhraseMatcher, normalize, yes_or_no
from edgebot.actions.registry import CallError, Registry
from edgebot.config import ConfigError, load_config

LED = '''
[[actions]]
name = "led"
description = "turn the LED on or off"
port = "/dev/ttyUSB0"
parameters = { type = "object", properties = { state = { enum = ["on", "off"] } } }
phrases = { "turn on the light" = { state = "on" }, "turn off the light" = { state = "off" }, "light {state}" = {}, "불 켜" = { state = "on" } }

[[actions]]
name = "bright"
description = "set the LED brightness"
port = "/dev/ttyUSB0"
parameters = { properties = { level = { type = "integer", minimum = 0, maximum = 100 } } }
phrases = { "set brightness to {level}" = {} }
'''


def registry(tmp_path: Path, text: str = LED, extra: str = "") -> Registry:
    cfg = tmp_path / "a.toml"
    cfg.write_text(extra + text)
    return Registry.from_config(load_config(cfg, board="", environ={}))


def test_declared_actions_load_with_strict_schemas(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    assert sorted(reg.actions) == ["bright", "led"]
    led = reg.actions["led"].schema
    assert led["additionalProperties"] is False and led["required"] == ["state"]
    assert reg.offered


@pytest.mark.parametrize("entry, words", [
    ('name = "led"\nport = "/dev/x"\nparameters = { properties = { s = { type = "array" } } }', "type must be one of"),
    ('name = "led"\nport = "/dev/x"\nparameters = { additionalProperties = true }', "additionalProperties must be false"),
    ('name = "led"\nport = "/dev/x"\nparameters = { type = "string" }', "must describe an object"),
    ('name = "led"', "missing key port"),
    ('name = "1led"\nport = "/dev/x"', "name must be"),
    ('name = "led"\nport = "/dev/x"\nphrases = { "go {where}" = {} }', "{where} is not a parameter"),
    ('name = "led"\nport = "/dev/x"\nphrases = { "go" = "now" }', "must map to a table"),
    ('name = "led"\nport = "/dev/x"\ncolour = 1', "unknown key [[actions]] #1 colour"),
])
def test_bad_entries_are_config_errors_naming_the_entry(tmp_path: Path, entry: str, words: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[[actions]]\n" + entry + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, board="", environ={})
    assert words in str(err.value) and "[[actions]] #1" in str(err.value) and str(cfg) in str(err.value)


def test_the_global_switch_comes_from_robot_actions(tmp_path: Path) -> None:
    reg = registry(tmp_path, extra="[robot]\nactions = false\n")
    assert not reg.offered
    with pytest.raises(CallError, match="switched off"):
        reg.check_call("led", {"state": "on"})


@pytest.mark.parametrize("name, args, words", [
    ("led", {"state": "dim"}, "'dim' is not one of"),
    ("led", {"state": "on", "colour": "red"}, "Additional properties are not allowed"),
    ("led", {}, "'state' is a required property"),
    ("bright", {"level": 101}, "greater than the maximum of 100"),
    ("bright", {"level": "50"}, "is not of type 'integer'"),
    ("door", {}, "no action called 'door'"),
    ("led", ["on"], "must be an object"),
])
def test_invalid_calls_are_refused_with_a_reason(tmp_path: Path, name: str, args: object, words: str) -> None:
    reg = registry(tmp_path)
    with pytest.raises(CallError) as err:
        reg.check_call(name, args)
    assert words in str(err.value)


def test_valid_calls_pass(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    assert reg.check_call("led", {"state": "off"}).name == "led"
    assert reg.check_call("bright", {"level": 0}).port == "/dev/ttyUSB0"


@pytest.mark.parametrize("text, expected", [
    ("Turn on the light!", ("led", {"state": "on"})),
    ("  TURN OFF   the light.", ("led", {"state": "off"})),
    ("light off", ("led", {"state": "off"})),
    ("불 켜", ("led", {"state": "on"})),
    ("set brightness to 40", ("bright", {"level": 40})),
    ("set brightness to 400", ("bright", {"level": 400})),  # matched; validation refuses it later
    ("don't turn on the light", None),
    ("please turn on the light now", None),
    ("what is 2+2?", None),
    ("", None),
])
def test_phrases_match_whole_utterances(tmp_path: Path, text: str, expected: object) -> None:
    found = PhraseMatcher(list(registry(tmp_path).actions.values())).match(text)
    assert (found and (found.action, found.args)) == expected if expected else found is None


def test_yes_no_and_normalize() -> None:
    yes, no = ["yes", "do it", "네"], ["no", "아니요"]
    assert yes_or_no("Yes!", yes, no) is True and yes_or_no("do it.", yes, no) is True
    assert yes_or_no("네", yes, no) is True and yes_or_no("아니요", yes, no) is False
    assert yes_or_no("yes please turn it on", yes, no) is None
    assert normalize("Ｈｅｌｌｏ,  World!") == "hello world"


def test_answer_schema_and_reading_answers(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    schema = tools.answer_schema(list(reg.actions.values()))
    import jsonschema

    ok = [{"action": "led", "args": {"state": "on"}}, {"answer": "Hi."}, {"action": "bright", "args": {"level": 3}}]
    bad = [{"action": "door", "args": {}}, {"action": "led", "args": {"state": "on"}, "x": 1}, {"answer": 3},
           {"action": "led", "args": {"state": "dim"}}]
    for doc in ok:
        jsonschema.validate(doc, schema)
    for doc in bad:
        assert not jsonschema.Draft202012Validator(schema).is_valid(doc), doc
    assert tools.read_answer('{"action": "led", "args": {"state": "on"}}') == tools.Call("led", {"state": "on"})
    assert tools.read_answer('{"answer": "four"}') == tools.Plain("four")
    assert tools.read_answer("not json") is None and tools.read_answer('{"answer": "x", "y": 1}') is None
    text = tools.offer_text(list(reg.actions.values()), "Turn it on")
    assert 'led(state: "on" | "off")' in text and "bright(level: integer 0..100)" in text and text.endswith("Turn it on")


@pytest.mark.parametrize("pieces", [
    ['{"answer": "Hel', 'lo \\"you\\"', '\\n\\u00e9!"}'],
    ['{', '"answer"', ':', ' "', 'Hello \\"you\\"\\n\\u00e9', '!', '"', '}'],
])
def test_answer_stream_yields_the_answer_text_while_it_arrives(pieces: list[str]) -> None:
    stream = tools.AnswerStream()
    out = "".join(stream.feed(p) for p in pieces)
    assert out == 'Hello "you"\né!' == json.loads(stream.raw)["answer"]


def test_answer_stream_stays_silent_for_a_call() -> None:
    stream = tools.AnswerStream()
    assert "".join(stream.feed(p) for p in ['{"action":', ' "led", "args": {"state": "on"}}']) == ""
    assert isinstance(tools.read_answer(stream.raw), tools.Call)


def test_enum_values_with_quotes_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "q.toml"
    cfg.write_text('[[actions]]\nname = "say"\nport = "/dev/x"\n'
                   'parameters = { properties = { word = { enum = ["a\\"b"] } } }\n')
    with pytest.raises(ConfigError, match="may not contain quotes"):
        load_config(cfg, board="", environ={})


# -- the serial side: T and R lines, one call in flight, resends -----------------------------------

from edgebot.bridges.serial import protocol as sp  # noqa: E402
from edgebot.bridges.serial.actions import ActionCaller, Call  # noqa: E402


def test_r_lines_parse_and_t_lines_format() -> None:
    assert sp.parse_line(b"R 7 ok LED on", False) == sp.ActionReply(7, True, "LED on")
    assert sp.parse_line(b"r 7 ERR no such pin", False) == sp.ActionReply(7, False, "no such pin")
    assert sp.parse_line(b"R 7 ok", False) == sp.ActionReply(7, True, "")
    assert sp.parse_line(b"R 7 maybe", False) == sp.LineError(7, "bad-args", "R <id> ok|err [text]")
    assert isinstance(sp.parse_line(b"R 0 ok", False), sp.LineError)
    line = sp.format_action(3, "led", '{"state":"on"}')
    assert line.startswith(b'T 3 led {"state":"on"}*') and line.endswith(b"\n")
    assert int(line[-3:-1], 16) == sp.checksum(line[:-4])


def test_one_call_in_flight_resent_then_given_up() -> None:
    caller = ActionCaller(timeout_s=1.0)
    assert caller.add(Call("a", "led", '{"state":"on"}')) is None
    assert caller.add(Call("b", "led", '{"state":"off"}')) is None
    lines, done = caller.poll(0.0, line_quiet=False, rx=None)
    assert lines == [] and done == []  # an answer chunk is unacknowledged: wait
    lines, done = caller.poll(0.0, line_quiet=True, rx=None)
    assert lines == [sp.format_action(1, "led", '{"state":"on"}')] and caller.busy
    assert caller.poll(0.5, True, None) == ([], [])
    assert caller.poll(1.0, True, None)[0] == lines  # resent with the same id
    assert caller.poll(2.0, True, None)[0] == lines
    lines2, done = caller.poll(3.0, True, None)
    assert done[0].bus_id == "a" and not done[0].ok and done[0].timeout
    assert lines2 == [sp.format_action(2, "led", '{"state":"off"}')]  # the next call goes out
    assert caller.reply(1, True, "late") is None
    got = caller.reply(2, True, "LED off")
    assert got is not None and got.ok and got.text == "LED off" and not caller.busy


def test_a_t_line_too_long_for_the_board_is_refused() -> None:
    caller = ActionCaller()
    caller.add(Call("a", "say", json.dumps({"text": "x" * 60})))
    lines, done = caller.poll(0.0, True, rx=64)
    assert lines == [] and "64-byte buffer" in done[0].text
    assert caller.fail_all("gone") == []
