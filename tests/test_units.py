"""systemd units, sysusers.d/tmpfiles.d files and udev rules, checked with the real systemd tools.

`systemd-analyze verify` insists that every ExecStart= binary exists. The units point at
/opt/edgebot/venv/bin/...; the test verifies a copy whose ExecStart= paths point at this venv's
real console scripts instead (nothing else changed), so a bridge unit is verified against the
real entry point as soon as its console script is declared in pyproject.toml and installed.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgebot.config.loader import tomllib  # tomli on Python 3.10
from conftest import APT_LINE, NEEDS_ROOT

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
BIN = Path(sys.executable).parent
INSTALLED_BIN = "/opt/edgebot/venv/bin/"
MAX_EXPOSURE = 2.0  # systemd-analyze security: every service, every configuration install.sh writes

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason=f"systemd-analyze missing: {APT_LINE}")


def declared_scripts() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def unit_copy(tmp: Path, name: str) -> Path:
    """A copy of systemd/<name> whose ExecStart= binaries are this venv's console scripts."""
    text = (UNITS / name).read_text()
    for script in re.findall(re.escape(INSTALLED_BIN) + r"([\w.-]+)", text):
        if script not in declared_scripts():
            pytest.skip(f"{script} is not declared in pyproject.toml yet (its bridge has not landed)")
        if not (BIN / script).exists():
            pytest.fail(f"{script} is declared but not installed in {BIN}: run deploy/dev-setup.sh")
    out = tmp / name
    out.write_text(text.replace(INSTALLED_BIN, f"{BIN}/"))
    return out


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)], capture_output=True,
                          text=True, timeout=60, cwd=paths[0].parent)


@pytest.mark.parametrize("unit", ["edgebot.socket", "edgebot.service", "edgebot-speech-in.service",
                                  "edgebot-speech-out.service", "edgebot-mqtt.service", "edgebot-wyoming.service",
                                  "edgebot-serial@ttyUSB0.service",
                                  r"edgebot-serial@serial-by\x2did-usb\x2d1a86_USB_Serial-if00-port0.service"])
def test_unit_verifies(tmp_path: Path, unit: str) -> None:
    template = re.sub(r"@.+\.service$", "@.service", unit)
    unit_copy(tmp_path, template)
    pair = {"edgebot.service": "edgebot.socket", "edgebot.socket": "edgebot.service"}.get(unit)
    if pair:  # the socket and its service load each other
        unit_copy(tmp_path, pair)
    r = verify(tmp_path / unit, *([tmp_path / pair] if pair else []))
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_every_unit_file_is_tested() -> None:
    assert sorted(p.name for p in UNITS.iterdir()) == sorted(
        ["edgebot.socket", "edgebot.service", "edgebot-speech-in.service", "edgebot-speech-out.service",
         "edgebot-serial@.service", "edgebot-panel.service",  # the panel's: tests/test_panel_install.py
         "edgebot-mqtt.service", "edgebot-wyoming.service"])


def exposure(tmp: Path, unit: Path) -> tuple[float, str]:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60, cwd=tmp)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    return float(m.group(1)), m.group(2)


@pytest.mark.parametrize("name", ["edgebot.service", "edgebot-speech-in.service", "edgebot-speech-out.service",
                                  "edgebot-serial@.service", "edgebot-mqtt.service", "edgebot-wyoming.service"])
def test_security_exposure(tmp_path: Path, name: str) -> None:
    text = (UNITS / name).read_text()
    unit = tmp_path / name.replace("@.service", "@ttyUSB0.service")
    unit.write_text(text)
    score, verdict = exposure(tmp_path, unit)
    print(f"\nsystemd-analyze security --offline=yes {unit.name}: {score} {verdict}")  # reported with -s / -rA
    assert score <= MAX_EXPOSURE and verdict in ("SAFE", "OK"), f"{unit.name}: {score} {verdict}"


# The configurations that change what install.sh writes for the units: none, [http] on loopback
# (install.sh --http), [http] on the LAN with a token, and the remote backend on a LAN server.
CONFIGS = {
    "default": ([], ""),
    "http-loopback": (["--http"], ""),
    "http-lan": (["--http"], '[http]\nenabled = true\nhost = "0.0.0.0"\ntoken = "s3cret"\n'),
    "remote": ([], '[llm]\nbackend = "remote"\nremote_url = "http://192.168.1.20:8000/v1"\n'),
}
SERVICES = ["edgebot.service", "edgebot-speech-in.service", "edgebot-speech-out.service", "edgebot-serial@ttyUSB0.service"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason=f"systemd-sysusers missing: {APT_LINE}")
@NEEDS_ROOT
@pytest.mark.parametrize("config", CONFIGS)
def test_exposure_in_every_configuration(tmp_path: Path, config: str) -> None:
    """install.sh --root writes the units and its drop-ins (board limits, the network drop-in) for
    each configuration; systemd-analyze security reads them from that root, drop-ins included."""
    from test_install import fake_system, install

    args, toml = CONFIGS[config]
    root = tmp_path / "root"
    (root / "etc/edgebot").mkdir(parents=True)
    if toml:
        (root / "etc/edgebot/edgebot.toml").write_text('board = "rpi5"\n' + toml)
    r = install("rpi5", "--root", str(root), *args, env={**fake_system(tmp_path), "EDGEBOT_ARCH": "aarch64"})
    assert r.returncode == 0, r.stdout + r.stderr
    network = (root / "etc/systemd/system/edgebot.service.d/network.conf").exists()
    assert network == (config != "default")
    for name in SERVICES:
        out = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager", name],
                             capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", out.stdout)
        assert m, out.stdout + out.stderr
        print(f"\n{config}: {name}: {m.group(1)} {m.group(2)}")  # reported with -s / -rA (docs/install.md)
        assert float(m.group(1)) <= MAX_EXPOSURE, f"{config}: {name}: {m.group(1)} {m.group(2)}"
        if name == "edgebot.service":
            assert ("Service has access to the host's network" in out.stdout) == network


def test_serial_unit_recipe_names_the_right_device() -> None:
    """The unit's own comment says how to start it on a /dev/serial/by-id/ link: run that recipe and
    check the instance maps to that device in ExecStart (/dev/%I) and BindsTo (dev-%i.device)."""
    text = (UNITS / "edgebot-serial@.service").read_text()
    m = re.search(r'systemctl start "\$\((systemd-escape [^)]*)\)"', text)
    assert m, "no systemd-escape recipe in the unit's comment"
    device = re.search(r"serial/by-id/\S+", m.group(1))
    assert device
    unit = subprocess.run(m.group(1).split(), capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    instance = unit.split("@", 1)[1].removesuffix(".service")
    unescaped = subprocess.run(["systemd-escape", "--unescape", instance], capture_output=True, text=True,
                               timeout=30, check=True).stdout.strip()
    assert "/dev/" + unescaped == "/dev/" + device.group(0)  # ExecStart=... --port /dev/%I
    device_unit = subprocess.run(["systemd-escape", "--path", "--suffix=device", "/dev/" + device.group(0)],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert f"dev-{instance}.device" == device_unit  # BindsTo=dev-%i.device


def test_service_contract() -> None:
    svc = (UNITS / "edgebot.service").read_text()
    for line in ("Type=notify", "Restart=on-failure", "RestartPreventExitStatus=78", "User=edgebot",
                 "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes",
                 "RestrictAddressFamilies=AF_UNIX", "StateDirectory=edgebot", "RuntimeDirectory=edgebot",
                 "RuntimeDirectoryPreserve=yes", "Requires=edgebot.socket"):
        assert f"\n{line}\n" in svc, line
    assert re.search(r"\nWatchdogSec=\d+\n", svc)
    sock = (UNITS / "edgebot.socket").read_text()
    for line in ("ListenStream=/run/edgebot/bus.sock", "SocketMode=0660", "SocketGroup=edgebot"):
        assert f"\n{line}\n" in sock, line
    serial = (UNITS / "edgebot-serial@.service").read_text()
    for line in ("BindsTo=dev-%i.device", "SupplementaryGroups=dialout", "DevicePolicy=closed",
                 "DeviceAllow=/dev/%I rw", "ExecStart=/opt/edgebot/venv/bin/edgebot-serial --config "
                 "/etc/edgebot/edgebot.toml --port /dev/%I"):
        assert f"\n{line}\n" in serial, line
    for name in ("edgebot-speech-in.service", "edgebot-speech-out.service"):
        text = (UNITS / name).read_text()
        assert "\nSupplementaryGroups=audio\n" in text and "After=edgebot.socket" in text


def test_daemon_answers_with_memory_deny_write_execute(tmp_path: Path, script_model: Path) -> None:
    """edgebot.service sets MemoryDenyWriteExecute=yes: run edgebotd under the kernel's own MDWE
    (prctl PR_SET_MDWE, what systemd uses where the kernel has it) and ask a question through the CLI."""
    libc = ctypes.CDLL(None, use_errno=True)
    probe = subprocess.run([sys.executable, "-c", "import ctypes; print(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0))"],
                           capture_output=True, text=True, timeout=30)
    if probe.stdout.strip() != "0":
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    del libc
    sock = tmp_path / "bus.sock"
    wrapper = ("import ctypes, os, sys\n"
               "assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0\n"
               "os.execv(sys.argv[1], sys.argv[1:])\n")
    env = {**os.environ, "EDGEBOT_BOARD": "generic-x86"}
    env.pop("NOTIFY_SOCKET", None)
    log = open(tmp_path / "d.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", wrapper, str(BIN / "edgebotd"), "--model", str(script_model),
                             "--socket", str(sock)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        cli_env = {**env, "EDGEBOT_SOCKET": str(sock)}
        ready = subprocess.run([str(BIN / "edgebot-cli"), "status", "--wait", "60"], env=cli_env,
                               capture_output=True, text=True, timeout=90)
        assert ready.returncode == 0, ready.stderr + (tmp_path / "d.log").read_text()
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(r"^Mdwe:\s+1", status, re.M) or "Mdwe" not in status
        ask = subprocess.run([str(BIN / "edgebot-cli"), "ask", "What is 2+2?"], env=cli_env,
                             capture_output=True, text=True, timeout=60)
        assert ask.returncode == 0 and ask.stdout.strip() == "The answer is 4.", ask.stderr
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


@NEEDS_ROOT
def test_sysusers_and_tmpfiles_apply_to_a_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for tool, conf, extra in (("systemd-sysusers", "sysusers.d", []), ("systemd-tmpfiles", "tmpfiles.d", ["--create"])):
        with open(REPO / "deploy" / conf / "edgebot.conf") as fh:
            r = subprocess.run([tool, f"--root={tmp_path}", *extra, "-"], stdin=fh, capture_output=True,
                               text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    entry = next(ln for ln in passwd.splitlines() if ln.startswith("edgebot:")).split(":")
    assert entry[5:] == ["/var/lib/edgebot", "/usr/sbin/nologin"] and int(entry[2]) < 1000  # a system user
    uid, gid = int(entry[2]), int(entry[3])
    models = tmp_path / "var" / "lib" / "edgebot" / "models"
    st = models.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o755)
    st = (tmp_path / "etc" / "edgebot").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, gid, 0o755)


RULE_KEYS = {"ACTION", "SUBSYSTEM", "ATTRS", "ENV", "GOTO", "LABEL", "TAG", "GROUP", "MODE", "KERNEL"}


def test_udev_rules_are_well_formed() -> None:
    rules = REPO / "deploy" / "udev" / "70-edgebot-serial.rules"
    if shutil.which("udevadm") and subprocess.run(["udevadm", "verify", "--help"], capture_output=True).returncode == 0:
        r = subprocess.run(["udevadm", "verify", str(rules)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
    labels, gotos, vendors = set(), set(), 0
    for raw in rules.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for item in re.split(r",\s*", line):
            m = re.fullmatch(r'([A-Z_]+)(\{[A-Za-z_]+\})?(==|!=|\+=|=|:=)"([^"]*)"', item)
            assert m, f"not a udev key/value: {item!r} in {line!r}"
            key, _, op, value = m.groups()
            assert key in RULE_KEYS, key
            if key == "LABEL":
                labels.add(value)
            if key == "GOTO":
                gotos.add(value)
            if key == "ATTRS" and "idVendor" in item:
                assert re.fullmatch(r"[0-9a-f]{4}", value)
                vendors += 1
    assert gotos <= labels and vendors >= 5
    text = rules.read_text()
    assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in text
    wants = re.search(r'ENV\{SYSTEMD_WANTS\}\+="([^"]+)"', text)
    assert wants and wants.group(1) == "edgebot-serial@%k.service" and 'TAG+="systemd"' in text
    assert (UNITS / "edgebot-serial@.service").exists()
