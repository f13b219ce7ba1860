"""edgebot-cli doctor: the checks that can run on this machine, through the real CLI (--json)."""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import EDGEBOT_CLI, Daemon

from edgebot.config import schema
from edgebot.doctor import parse_system_info

SERIAL_CONFIG = "serial" in getattr(schema, "ARRAY_SECTIONS", {})  # [[serial]] tables (the serial bridge's)
needs_serial_config = pytest.mark.skipif(not SERIAL_CONFIG, reason="[[serial]] config has not landed yet")


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, Any]]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEBOT_")}
    r = subprocess.run([EDGEBOT_CLI, *args, "doctor", "--json"], capture_output=True, text=True, timeout=60,
                       env={**base, "EDGEBOT_BOARD": "generic-x86", **(env or {})})
    return r.returncode, {c["name"]: c for c in json.loads(r.stdout)}


def test_healthy_setup_passes_the_checks_that_apply_here(daemon: Daemon, script_model: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text(f'[llm]\nmodel = "{script_model}"\nn_ctx = 2048\n[bus]\nsocket = "{daemon.socket}"\n')
    code, checks = doctor("--config", str(cfg))
    assert checks["config"]["status"] == "PASS" and str(cfg) in checks["config"]["detail"]
    assert checks["model"]["status"] == "PASS" and "qwen2" in checks["model"]["detail"]
    assert checks["llama.cpp"]["status"] == "PASS" and "backends CPU" in checks["llama.cpp"]["detail"]
    assert checks["bus"]["status"] == "PASS" and "is ready" in checks["bus"]["detail"]
    assert checks["memory"]["status"] == "PASS" and "for 2048 tokens" in checks["memory"]["detail"]
    for name in ("audio", "serial", "units", "temperature"):  # present, whatever this machine has
        assert checks[name]["status"] in ("PASS", "WARN", "FAIL", "SKIP")
        if checks[name]["status"] in ("FAIL", "WARN"):
            assert checks[name]["fix"], name  # every failure says how to fix it
    assert code == (1 if any(c["status"] == "FAIL" for c in checks.values()) else 0)


def test_failures_come_with_fixes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 10)  # a header cut short
    cfg = tmp_path / "edgebot.toml"
    serial = f'[[serial]]\nport = "{tmp_path}/ttyUSB9"\n' if SERIAL_CONFIG else ""
    cfg.write_text(f'[llm]\nmodel = "{bad}"\n[bus]\nsocket = "{tmp_path}/nobody.sock"\n{serial}')
    code, checks = doctor("--config", str(cfg))
    assert code == 1
    assert checks["model"]["status"] == "FAIL" and "truncated header" in checks["model"]["detail"]
    assert "edgebot-cli model pull" in checks["model"]["fix"]
    assert checks["bus"]["status"] == "FAIL" and "edgebotd is not running" in checks["bus"]["detail"]
    assert "systemctl enable --now edgebot.socket" in checks["bus"]["fix"]
    assert checks["memory"]["status"] == "SKIP"
    if SERIAL_CONFIG:
        assert checks["serial"]["status"] == "FAIL" and f"{tmp_path}/ttyUSB9 is missing" in checks["serial"]["detail"]


@needs_serial_config
def test_serial_port_present_and_permitted(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        cfg = tmp_path / "edgebot.toml"
        cfg.write_text(f'[[serial]]\nport = "{port}"\n')
        _, checks = doctor("--config", str(cfg))
        if os.geteuid() != 0:
            assert checks["serial"]["status"] == "PASS" and port in checks["serial"]["detail"]
            return
        # as root the check judges for the service: a pty (group tty, 0620) is not usable by it...
        assert checks["serial"]["status"] == "FAIL", checks["serial"]
        assert "not read/writable by group dialout" in checks["serial"]["detail"]
        assert "dialout" in checks["serial"]["fix"]
        # ...until it is in group dialout with rw, as the udev rule makes a USB adapter
        os.chown(port, -1, grp.getgrnam("dialout").gr_gid)
        os.chmod(port, 0o660)
        _, checks = doctor("--config", str(cfg))
        assert checks["serial"]["status"] == "PASS" and f"{port} (group dialout)" in checks["serial"]["detail"]
    finally:
        os.close(master)
        os.close(slave)


def test_bad_config_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text("[llm]\nn_cxt = 4096\n")
    code, checks = doctor("--config", str(cfg))
    assert code == 1 and checks["config"]["status"] == "FAIL"
    assert "unknown key [llm] n_cxt (did you mean 'n_ctx'?)" in checks["config"]["detail"]
    assert str(cfg) in checks["config"]["fix"]
    assert checks["model"]["status"] == "SKIP"


def test_units_check_says_what_it_cannot_see() -> None:
    _, checks = doctor()
    units = checks["units"]
    if not os.path.isdir("/run/systemd/system"):  # this machine: no systemd as PID 1
        assert units["status"] in ("FAIL", "SKIP")
        assert "no edgebot unit is installed" in units["detail"] or "systemd is not running" in units["detail"]


def test_text_output_has_one_line_per_check() -> None:
    r = subprocess.run([EDGEBOT_CLI, "doctor"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "EDGEBOT_BOARD": "generic-x86"})
    names = [ln.split()[1] for ln in r.stdout.splitlines() if ln[:4] in ("PASS", "WARN", "FAIL", "SKIP")]
    assert names == ["config", "model", "llama.cpp", "bus", "memory", "audio", "serial", "units", "temperature"]
    assert "doctor:" in r.stderr


def test_parse_system_info() -> None:
    text = "CPU : NEON = 1 | ARM_FMA = 1 | DOTPROD = 1 | SVE = 0 | REPACK = 1 | BLAS : ACCELERATE = 0 |"
    feats = parse_system_info(text)
    assert feats["DOTPROD"] == "1" and feats["SVE"] == "0" and feats["ACCELERATE"] == "0"


def test_cli_model_and_doctor_modules_import_nothing_heavy() -> None:
    code = ("import sys, edgebot.cli, edgebot.models, edgebot.doctor, edgebot.download, edgebot.gguf_info\n"
            "heavy = [m for m in ('llama_cpp', 'numpy', 'vosk', 'piper', 'sounddevice') if m in sys.modules]\n"
            "print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
