"""Doctor checks of the machine: memory for model and context, the bus, audio devices, serial ports,
systemd units, SoC temperature and throttling."""

from __future__ import annotations

import glob
import grp
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from edgebot.doctor.base import FAIL, PASS, SKIP, WARN, Check, Context

UNITS = ("edgebot.socket", "edgebot.service", "edgebot-speech-in.service", "edgebot-speech-out.service")
UNIT_DIRS = ("/etc/systemd/system", "/usr/local/lib/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
OVERHEAD_MB = 300  # MiB: llama.cpp compute buffers, Python and the bus on top of weights + KV cache


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB."""
    out = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            out[name] = int(rest.split()[0])
    return out


def check_memory(ctx: Context) -> Check:
    if ctx.gguf is None or ctx.config is None:
        return Check("memory", SKIP, "no verified model to size")
    per_token = ctx.gguf.kv_bytes_per_token() or 0
    n_ctx = ctx.config.get("llm", "n_ctx")
    model_mb = ctx.gguf.file_size / 2**20
    kv_mb = per_token * n_ctx / 2**20
    need = model_mb + kv_mb + OVERHEAD_MB
    mem = meminfo()
    avail, total = mem.get("MemAvailable", 0) / 1024, mem.get("MemTotal", 0) / 1024
    detail = (f"need ~{need:.0f} MiB (model {model_mb:.0f} + KV cache {kv_mb:.0f} for {n_ctx} tokens + "
              f"{OVERHEAD_MB}); available {avail:.0f} of {total:.0f} MiB")
    if ctx.bus_state == "ready":
        return Check("memory", PASS if total >= need else FAIL, detail + " (the model is already loaded)",
                     "" if total >= need else "use a smaller [llm] n_ctx or a smaller model")
    if avail >= need:
        return Check("memory", PASS, detail)
    fix = f"free memory, or lower [llm] n_ctx (each 1024 tokens = {per_token * 1024 / 2**20:.0f} MiB)"
    return Check("memory", FAIL if total < need else WARN, detail, fix)


def check_bus(ctx: Context) -> Check:
    if ctx.args.socket:
        path = ctx.args.socket
    elif os.environ.get("EDGEBOT_SOCKET"):
        path = os.environ["EDGEBOT_SOCKET"]
    elif ctx.config is not None:
        path = ctx.config.socket_path
    else:
        return Check("bus", SKIP, "no valid config")
    from edgebot.bus.blocking import BlockingBusClient, BusUnavailable

    user = pwd.getpwuid(os.getuid()).pw_name
    try:
        client = BlockingBusClient.connect(path, client="edgebot-doctor", timeout=3.0)
    except BusUnavailable as exc:
        if not os.path.exists(path):
            return Check("bus", FAIL, f"{path} does not exist: edgebotd is not running",
                         "sudo systemctl enable --now edgebot.socket edgebot.service")
        if "permission denied" in str(exc):
            return Check("bus", FAIL, f"{path}: permission denied for {user}",
                         f"sudo usermod -aG edgebot {user}, then log in again")
        if "refused the connection" in str(exc):
            return Check("bus", FAIL, f"{path}: {exc}", "check [bus] allowed_users/groups")
        return Check("bus", FAIL, f"{path}: {exc}", "sudo systemctl restart edgebot.service; journalctl -u edgebot")
    try:
        client.send("status")
        msg = None
        while msg is None or msg[0] not in ("status-report", "error"):
            msg = client.recv(timeout=3.0)
            if msg is None:
                break
    except TimeoutError:
        msg = None
    finally:
        client.close()
    if msg is not None and msg[0] == "status-report":
        ctx.bus_state = msg[1].get("state")
        detail = f"{path}: edgebotd {msg[1].get('server_version')} is {ctx.bus_state}"
        ok = ctx.bus_state in ("ready", "loading")
        return Check("bus", PASS if ok else FAIL, detail, "" if ok else "journalctl -u edgebot -e")
    if msg is not None:
        return Check("bus", FAIL, f"{path}: {msg[1].get('message')}", "check [bus] allowed_users/groups")
    return Check("bus", FAIL, f"{path}: connected but no status report", "journalctl -u edgebot -e")


def check_audio(ctx: Context) -> Check:
    try:
        pcm = Path("/proc/asound/pcm").read_text()
    except OSError:
        pcm = ""
    capture = [ln for ln in pcm.splitlines() if "capture" in ln]
    playback = [ln for ln in pcm.splitlines() if "playback" in ln]
    if capture and playback:
        return Check("audio", PASS, f"{len(capture)} capture and {len(playback)} playback ALSA devices")
    missing = " and ".join(w for w, found in (("microphone", capture), ("speaker", playback)) if not found)
    return Check("audio", WARN, f"no ALSA {missing} (/proc/asound/pcm); the speech bridges need them",
                 "plug in a USB microphone/speaker and check `arecord -l` / `aplay -l`")


def _serial_ports(ctx: Context) -> list[str]:
    ports = []
    entries = getattr(ctx.config, "arrays", {}).get("serial", []) if ctx.config is not None else []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("port"):
            ports.append(str(entry["port"]))
    return ports


def check_serial(ctx: Context) -> Check:
    configured = _serial_ports(ctx)
    found = sorted(glob.glob("/dev/ttyUSB*") + glob.glob("/dev/ttyACM*"))
    if not configured and not found:
        return Check("serial", SKIP, "no serial port configured and no USB serial adapter plugged in")
    problems: list[str] = []
    fine: list[str] = []
    for port in configured or found:
        if not os.path.exists(port):
            problems.append(f"{port} is missing")
            continue
        st = os.stat(port)
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        if os.geteuid() == 0:  # root can open anything: judge for the service (user edgebot, group dialout)
            allowed = group == "dialout" and st.st_mode & 0o060 == 0o060
            why = "" if allowed else f" not read/writable by group dialout (edgebot-serial@'s group), mode " \
                                     f"{st.st_mode & 0o777:o}"
        else:
            allowed = os.access(port, os.R_OK | os.W_OK)
            why = "" if allowed else f" not read/writable by {pwd.getpwuid(os.getuid()).pw_name}"
        (fine if allowed else problems).append(f"{port} (group {group})" + why)
    if problems:
        return Check("serial", FAIL, "; ".join(problems + fine),
                     "plug the adapter in (see /dev/serial/by-id), check [[serial]] port, and that the tty is "
                     "in group dialout (deploy/udev/70-edgebot-serial.rules)")
    return Check("serial", PASS, ", ".join(fine))


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def check_units(ctx: Context) -> Check:
    installed = {u: any(os.path.exists(os.path.join(d, u)) for d in UNIT_DIRS) for u in UNITS}
    missing = [u for u, ok in installed.items() if not ok]
    if missing == list(UNITS):
        return Check("units", FAIL, "no edgebot unit is installed", "sudo deploy/install.sh BOARD")
    if not systemd_running() or not shutil.which("systemctl"):
        return Check("units", SKIP, f"installed: {', '.join(u for u in UNITS if installed[u])}; systemd is not "
                                    f"running here, so whether they are active cannot be checked")
    states = {}
    for unit in UNITS:
        if installed[unit]:
            r = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True, timeout=10)
            states[unit] = r.stdout.strip() or "unknown"
    inactive = [u for u in ("edgebot.socket", "edgebot.service") if states.get(u) != "active"]
    detail = ", ".join(f"{u} {s}" for u, s in states.items())
    if missing or inactive:
        return Check("units", FAIL, detail + (f"; missing: {', '.join(missing)}" if missing else ""),
                     "sudo systemctl enable --now edgebot.socket edgebot.service; journalctl -u edgebot -e")
    return Check("units", PASS, detail)


def read_throttled() -> Optional[int]:
    """Raspberry Pi firmware throttle bits (vcgencmd get_throttled), or None off a Pi."""
    sysfs = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
    try:
        return int(sysfs.read_text().strip(), 16)
    except (OSError, ValueError):
        pass
    if shutil.which("vcgencmd"):
        r = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5)
        m = re.search(r"0x([0-9a-fA-F]+)", r.stdout)
        if m:
            return int(m.group(1), 16)
    return None


def check_temperature(ctx: Context) -> Check:
    temps = []
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        try:
            temps.append((int(Path(zone, "temp").read_text()) / 1000, Path(zone, "type").read_text().strip()))
        except (OSError, ValueError):
            continue
    throttled = read_throttled()
    if not temps and throttled is None:
        return Check("temperature", SKIP, "this machine reports no SoC temperature (/sys/class/thermal)")
    parts, status, fix = [], PASS, ""
    if temps:
        hottest = max(temps)
        parts.append(f"hottest {hottest[1]} {hottest[0]:.1f} °C")
        if hottest[0] >= 80:
            status, fix = WARN, "add a heatsink/fan: above ~80-85 °C the CPU slows down"
    if throttled is not None:
        now = {0: "under-voltage", 1: "frequency capped", 2: "throttled", 3: "soft temperature limit"}
        active = [t for bit, t in now.items() if throttled & (1 << bit)]
        past = [t for bit, t in now.items() if throttled & (1 << (bit + 16))]
        parts.append(f"throttled=0x{throttled:x}" + (f" now: {', '.join(active)}" if active else "")
                     + (f" since boot: {', '.join(past)}" if past else ""))
        if active:
            status = FAIL
            fix = "use the official 27 W (Pi 5) / 15 W (Pi 4) power supply and cooling"
        elif past and status == PASS:
            status = WARN
            fix = "it happened since boot: check the power supply and cooling"
    return Check("temperature", status, "; ".join(parts), fix)


