"""deploy/panel.sh (install.sh --panel): the kiosk unit verified by systemd, the files it writes
into a scratch root (--root), idempotence, the desktop variant, the dry run hiding the token, and
the generated launcher starting a browser (a recording stand-in for chromium) once the page's port
answers."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import APT_LINE
from test_install import fake_system, install

REPO = Path(__file__).resolve().parents[1]
PANEL = REPO / "deploy" / "panel.sh"
UNIT = REPO / "systemd" / "edgebot-panel.service"
TOKEN = "kiosk-token-123"


def panel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(PANEL), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": os.environ["PATH"]})


def board_root(tmp: Path, port: int = 8080, token: str = TOKEN) -> Path:
    root = tmp / "root"
    (root / "etc" / "edgebot").mkdir(parents=True)
    (root / "etc" / "edgebot" / "edgebot.toml").write_text(
        f'[llm]\nn_ctx = 2048\n\n[http]\nenabled = true\nhost = "0.0.0.0"   # the LAN\nport = {port}\n'
        f'token = "{token}"\n')
    return root


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason=f"systemd-analyze missing: {APT_LINE}")
def test_kiosk_unit_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for line in ("User=edgebot-panel", "PAMName=login", "TTYPath=/dev/tty1", "Conflicts=getty@tty1.service",
                 "ExecStart=/usr/bin/cage -d -s -- /usr/local/bin/edgebot-panel-browser", "Restart=always"):
        assert f"\n{line}\n" in text, line
    copy = tmp_path / "edgebot-panel.service"  # verify insists ExecStart exists: cage is on the board, not here
    copy.write_text(text.replace("/usr/bin/cage -d -s -- /usr/local/bin/edgebot-panel-browser", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_root_install_writes_the_kiosk_and_is_idempotent(tmp_path: Path) -> None:
    root = board_root(tmp_path, 8123)
    r = panel("--root", str(root))
    assert r.returncode == 0, r.stderr
    launcher = root / "usr/local/bin/edgebot-panel-browser"
    text = launcher.read_text()
    assert f'--app="http://127.0.0.1:8123/?kiosk=1#token={TOKEN}"' in text and "--kiosk" in text
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o750  # holds the token: root and the panel's group
    assert (root / "etc/systemd/system/edgebot-panel.service").read_text() == UNIT.read_text()
    sysusers = root / "usr/lib/sysusers.d/edgebot-panel.conf"
    assert "u edgebot-panel" in sysusers.read_text()
    subprocess.run(["bash", "-n", str(launcher)], check=True)
    if shutil.which("systemd-sysusers"):
        (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
        r2 = subprocess.run(["systemd-sysusers", f"--root={root}", str(sysusers)], capture_output=True, text=True)
        assert r2.returncode == 0, r2.stderr
        assert "edgebot-panel:" in (root / "etc/passwd").read_text()
        assert "video:" in (root / "etc/group").read_text()
    again = panel("--root", str(root))
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout


def test_desktop_variant_and_dry_run(tmp_path: Path) -> None:
    root = board_root(tmp_path)
    dry = panel("--root", str(root), "--desktop", "--dry-run")
    assert dry.returncode == 0 and "would write /etc/xdg/autostart/edgebot-panel.desktop" in dry.stdout
    assert TOKEN not in dry.stdout and "#token=<the [http] token>" in dry.stdout
    assert not (root / "usr").exists()
    r = panel("--root", str(root), "--desktop", "--lang", "zh")
    assert r.returncode == 0, r.stderr
    assert "Exec=/usr/local/bin/edgebot-panel-browser" in (root / "etc/xdg/autostart/edgebot-panel.desktop").read_text()
    assert "--lang=zh-CN" in (root / "usr/local/bin/edgebot-panel-browser").read_text()
    assert not (root / "etc/systemd/system/edgebot-panel.service").exists()
    bad = panel("--lang", "fr", "--dry-run")
    assert bad.returncode == 2 and "--lang must be en or zh" in bad.stderr


def test_install_sh_panel_flag_runs_panel_sh(tmp_path: Path) -> None:
    env = {**fake_system(tmp_path), "EDGEBOT_ARCH": "aarch64"}
    r = install("rpi5", "--dry-run", "--panel", env=env)
    assert r.returncode == 0, r.stderr
    assert "==> the kiosk launcher" in r.stdout and "would write /etc/systemd/system/edgebot-panel.service" in r.stdout


def test_launcher_waits_for_the_page_then_starts_the_browser(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        root = board_root(tmp_path, port, token="")
        assert panel("--root", str(root), "--desktop").returncode == 0
        stub = tmp_path / "bin"
        stub.mkdir()
        record = tmp_path / "args"
        (stub / "chromium").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
        (stub / "chromium").chmod(0o755)
        r = subprocess.run([str(root / "usr/local/bin/edgebot-panel-browser")], capture_output=True, text=True,
                           timeout=30, env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    args = record.read_text().splitlines()
    assert "--kiosk" in args and f"--app=http://127.0.0.1:{port}/?kiosk=1" in args
    assert f"--user-data-dir={tmp_path}/.config/edgebot-panel" in args
