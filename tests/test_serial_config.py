"""``[[serial]]`` entries: an array section in the one schema, validated as strictly as the rest."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgebot.bridges.serial.settings import PortSettings, select_entry
from edgebot.config import ConfigError, load_config

from conftest import BIN


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None, **kw):
    p = tmp_path / "edgebot.toml"
    p.write_text(text)
    return load_config(p, board="generic-x86", environ=environ or {}, **kw)


TWO_PORTS = """
[[serial]]
port = "/dev/serial/by-id/usb-Arduino_Uno_1234-if00"
baud = 9600
ascii = true

[[serial]]
port = "/dev/ttyACM1"
checksum = "optional"
window = 2
"""


def test_entries_get_defaults_for_what_they_omit(tmp_path: Path) -> None:
    cfg = load(tmp_path, TWO_PORTS)
    uno, acm = cfg.entries("serial")
    assert (uno["baud"], uno["ascii"], uno["checksum"], uno["window"], uno["chunk_bytes"]) == (9600, True, "required", 1, 48)
    assert (acm["baud"], acm["checksum"], acm["window"], acm["timeout_s"]) == (115200, "optional", 2, 1.0)
    assert load(tmp_path, "").entries("serial") == []


def test_environment_and_command_line_beat_the_entry(tmp_path: Path) -> None:
    cfg = load(tmp_path, TWO_PORTS, environ={"EDGEBOT_SERIAL_TIMEOUT_S": "0.5"}, overrides={"serial.baud": 57600})
    uno, acm = cfg.entries("serial")
    assert uno["baud"] == acm["baud"] == 57600 and uno["timeout_s"] == acm["timeout_s"] == 0.5
    assert uno["ascii"] is True and cfg.sources["serial.baud"] == "command line"


@pytest.mark.parametrize("text, message", [
    ('[[serial]]\nport = "/dev/ttyUSB0"\nbauds = 9600\n',
     "unknown key [[serial]] #1 bauds (did you mean 'baud'?); known keys: port, baud,"),
    ('[[serial]]\nport = "/dev/a"\n[[serial]]\nport = "/dev/b"\nwindow = 0\n',
     "[[serial]] #2 window: expected an integer from 1 to 8 (chunks), got 0"),
    ('[[serial]]\nport = "/dev/a"\nchecksum = "sometimes"\n',
     "[[serial]] #1 checksum: expected one of 'required', 'optional', got 'sometimes'"),
    ('[[serial]]\nport = "/dev/a"\nchunk_bytes = 64\n',
     "[[serial]] #1 chunk_bytes: expected an integer from 4 to 48 (bytes), got 64"),
    ('[[serial]]\nbaud = 9600\n', "[[serial]] #1: missing key port (Serial device;"),
    ('[[serial]]\nport = "/dev/a"\n[[serial]]\nport = "/dev/a"\n',
     "[[serial]] #2: port '/dev/a' is already configured by entry #1"),
    ('[serial]\nport = "/dev/a"\n', "serial must be written as [[serial]] tables (one per entry)"),
    ('serial = 3\n', "serial must be written as [[serial]] tables"),
])
def test_mistakes_name_the_file_the_entry_and_what_is_allowed(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert message in str(err.value) and str(tmp_path / "edgebot.toml") in str(err.value)


def test_bad_environment_value_for_a_serial_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment EDGEBOT_SERIAL_WINDOW: expected an integer"):
        load(tmp_path, "", environ={"EDGEBOT_SERIAL_WINDOW": "many"})


def test_select_entry_by_path_name_or_symlink(tmp_path: Path) -> None:
    real = tmp_path / "ttyREAL"
    real.write_text("")
    alias = tmp_path / "by-id-alias"
    alias.symlink_to(real)
    cfg = load(tmp_path, TWO_PORTS + f'\n[[serial]]\nport = "{real}"\nwindow = 3\n')
    assert select_entry(cfg, "/dev/ttyACM1")["window"] == 2
    assert select_entry(cfg, "ttyACM1")["port"] == "/dev/ttyACM1"
    assert select_entry(cfg, str(alias))["window"] == 3            # the same device through a symlink
    other = select_entry(cfg, "/dev/ttyUSB7")                       # not configured: defaults
    assert other["port"] == "/dev/ttyUSB7" and other["window"] == 1
    with pytest.raises(ConfigError, match="give --port DEVICE"):
        select_entry(cfg, None)
    single = load(tmp_path, '[[serial]]\nport = "/dev/ttyS0"\n')
    s = PortSettings.from_entry(select_entry(single, None))
    assert s.port == "/dev/ttyS0" and s.name == "ttyS0" and s.think_budget == -1


def test_edgebot_serial_exits_78_on_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[serial]]\nport = "/dev/ttyUSB0"\nwindow = 99\n')
    r = subprocess.run([str(BIN / "edgebot-serial"), "--config", str(cfg), "--port", "/dev/ttyUSB0"],
                       capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "EDGEBOT_BOARD": "generic-x86"})
    assert r.returncode == 78
    assert f"{cfg}: [[serial]] #1 window: expected an integer from 1 to 8 (chunks), got 99" in r.stderr
