"""``edgebot-cli doctor``: one line per check, PASS/WARN/FAIL/SKIP, and a fix for every failure.

Checks: config valid; model present and verified; with ``[llm] backend = "rkllm"`` the NPU driver and
the RKLLM runtime; llama.cpp build features; free memory vs model
plus context; bus reachable; audio devices; serial ports present and permitted; systemd units
installed and active; SoC temperature and throttling. Exit 0 when nothing FAILs, else 1.
Imported only by that subcommand; llama_cpp is imported inside its own check only.
"""

from __future__ import annotations

import argparse
import glob
import grp
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
UNITS = ("edgebot.socket", "edgebot.service", "edgebot-speech-in.service", "edgebot-speech-out.service")
UNIT_DIRS = ("/etc/systemd/system", "/usr/local/lib/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
OVERHEAD_MB = 300  # MiB: llama.cpp compute buffers, Python and the bus on top of weights + KV cache
SERVICE_USER = "edgebot"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


class Context:
    """What the checks share: arguments, the config (once loaded) and the model's header."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config: Any = None
        self.gguf: Any = None
        self.bus_state: Optional[str] = None


def check_config(ctx: Context) -> Check:
    from edgebot.config import ConfigError, load_config
    from edgebot.config.loader import SYSTEM_CONFIG

    try:
        ctx.config = load_config(ctx.args.config, board=ctx.args.board)
    except ConfigError as exc:
        where = ctx.args.config or os.environ.get("EDGEBOT_CONFIG") or SYSTEM_CONFIG
        return Check("config", FAIL, str(exc), f"edit {where} (keys: docs/configuration.md)")
    source = ctx.args.config or os.environ.get("EDGEBOT_CONFIG") or (
        str(SYSTEM_CONFIG) if SYSTEM_CONFIG.is_file() else f"no {SYSTEM_CONFIG}, built-in defaults")
    return Check("config", PASS, f"valid: {source} (board {ctx.config.board or 'none'})")


def check_model(ctx: Context) -> Check:
    if ctx.config is None:
        return Check("model", SKIP, "no valid config")
    if ctx.config.get("llm", "backend") == "rkllm":
        return check_rkllm_model(ctx)
    from edgebot.gguf_info import GGUFError, read_gguf

    path = ctx.config.get("llm", "model")
    fix = "edgebot-cli model pull   (or: sudo deploy/get-model.sh)"
    try:
        ctx.gguf = read_gguf(path)
    except GGUFError as exc:
        return Check("model", FAIL, str(exc), fix)
    problems = ctx.gguf.problems()
    if problems:
        return Check("model", FAIL, f"{path}: " + "; ".join(problems), fix)
    if not os.access(path, os.R_OK):
        return Check("model", FAIL, f"{path} is not readable by this user", f"chmod 0644 {path}")
    info = ctx.gguf
    return Check("model", PASS, f"{path}: {info.architecture}, {info.file_size / 2**20:.0f} MiB, context "
                                f"{info.context_length}, chat template present")


def _rkllm(ctx: Context) -> bool:
    return ctx.config is not None and ctx.config.get("llm", "backend") == "rkllm"


def check_rkllm_model(ctx: Context) -> Check:
    """The .rkllm file of ``[llm] backend = "rkllm"``: present, readable, not a GGUF (the runtime checks the rest)."""
    path = ctx.config.get("llm", "model")
    fix = "convert it with rkllm-toolkit 1.3.0 on an x86 PC and copy it there (docs/npu.md), or set [llm] model"
    p = Path(path)
    if not p.is_file():
        return Check("model", FAIL, f"{path} does not exist (the NPU model, a .rkllm file)", fix)
    if not os.access(path, os.R_OK):
        return Check("model", FAIL, f"{path} is not readable by this user", f"chmod 0644 {path}")
    with p.open("rb") as fh:
        if fh.read(4) == b"GGUF":
            return Check("model", FAIL, f"{path} is a GGUF file: the rkllm backend needs a .rkllm file", fix)
    return Check("model", PASS, f"{path}: {p.stat().st_size / 2**20:.0f} MiB .rkllm file (the runtime checks its "
                                f"format when edgebotd loads it)")


def check_npu_driver(ctx: Context) -> Optional[Check]:
    """The RKNPU kernel driver's version against what the pinned runtime needs (only with backend = rkllm)."""
    if not _rkllm(ctx):
        return None
    from edgebot.engine.backends import rkllm_api as api

    files = tuple(os.environ.get("EDGEBOT_RKNPU_FILES", "").split()) or api.DRIVER_FILES
    version, where = api.read_driver_version(files)
    if version is None and "EDGEBOT_RKNPU_FILES" not in os.environ and shutil.which("dmesg"):
        r = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
        found = re.findall(r"Initialized rknpu (\d+\.\d+\.\d+)", r.stdout)
        if found:
            version, where = found[-1], "dmesg"
        else:
            where += "; dmesg: " + ("no rknpu line" if r.returncode == 0 else "not readable (run as root)")
    fix = ("a Rockchip vendor kernel with rknpu >= {m} (docs/npu.md), or the CPU: [llm] backend = \"llama\""
           .format(m=api.MIN_DRIVER))
    if version is None:
        return Check("npu driver", FAIL, f"no RKNPU driver version found ({where})", fix)
    if api.version_tuple(version) < api.version_tuple(api.MIN_DRIVER):
        return Check("npu driver", FAIL, f"rknpu {version} ({where}) is older than {api.MIN_DRIVER}, which RKLLM "
                                         f"runtime {api.RUNTIME_VERSION} needs", "update the board's kernel: " + fix)
    return Check("npu driver", PASS, f"rknpu {version} ({where}; at least {api.MIN_DRIVER} needed)")


def check_npu_runtime(ctx: Context) -> Optional[Check]:
    """librkllmrt.so: loadable, with the 1.3.0 functions, and whether it is the pinned release build."""
    if not _rkllm(ctx):
        return None
    from edgebot.engine.backends import rkllm_api as api

    name = ctx.config.get("rkllm", "library")
    try:
        lib = api.load_library(name)
    except api.LibraryError as exc:
        return Check("npu runtime", FAIL, str(exc), "sudo deploy/install.sh rk3588 --npu")
    path = api.library_path(lib) or name
    if api.is_pinned_build(path):
        return Check("npu runtime", PASS, f"{path}: RKLLM runtime {api.RUNTIME_VERSION}, the {api.RUNTIME_TAG} build")
    return Check("npu runtime", WARN, f"{path} loads and has the runtime's functions, but it is not the "
                                      f"{api.RUNTIME_TAG} build; edgebotd refuses it at start unless it reports "
                                      f"version {api.RUNTIME_VERSION}", "sudo deploy/install.sh rk3588 --npu")


def parse_system_info(text: str) -> dict[str, str]:
    """``"CPU : NEON = 1 | DOTPROD = 1 | ..."`` -> ``{"NEON": "1", "DOTPROD": "1", ...}``."""
    features: dict[str, str] = {}
    for part in re.split(r"\|", text):
        if "=" in part:
            key, _, value = part.rpartition("=")
            key = key.split(":")[-1].strip()
            if key:
                features[key] = value.strip()
    return features


def check_llama(ctx: Context) -> Check:
    try:
        import llama_cpp  # heavy; only here
    except ImportError as exc:
        return Check("llama.cpp", FAIL, f"llama-cpp-python is not importable ({exc})",
                     "sudo deploy/install.sh BOARD   (builds it for the board)")
    raw = llama_cpp.llama_print_system_info()
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    feats = parse_system_info(text)
    on = sorted(k for k, v in feats.items() if v not in ("0", ""))
    backends = re.findall(r"(?:^|\| )\s*([A-Za-z][\w-]*) :", text)
    machine = os.uname().machine
    detail = (f"llama-cpp-python {llama_cpp.__version__} on {machine}, backends {'+'.join(backends) or '?'}: "
              f"{', '.join(on) or text.strip()}")
    cmake = ctx.config.get("build", "cmake_args") if ctx.config else ""
    wanted = []
    if machine == "aarch64" and "dotprod" in cmake and feats.get("DOTPROD") != "1":
        wanted.append("DOTPROD")
    if "GGML_BLAS=ON" in cmake and not any(k.startswith("BLAS") for k in on) and "BLAS" not in text:
        wanted.append("BLAS")
    if "KLEIDIAI=ON" in cmake and feats.get("KLEIDIAI") != "1":
        wanted.append("KLEIDIAI")
    if wanted:
        return Check("llama.cpp", FAIL, detail + f"; the board profile asks for {', '.join(wanted)} but this build "
                                                 f"lacks it", "rebuild for the board: sudo deploy/install.sh "
                                                               f"{ctx.config.board} --rebuild")
    return Check("llama.cpp", PASS, detail)


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
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3.0)
    try:
        sock.connect(path)
        sock.sendall(b'{"type": "hello", "data": {"client": "edgebot-doctor", "version": "1", "role": "cli"}}\n'
                     b'{"type": "status", "data": {}}\n')
        buf = b""
        while b'"status-report"' not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except FileNotFoundError:
        return Check("bus", FAIL, f"{path} does not exist: edgebotd is not running",
                     "sudo systemctl enable --now edgebot.socket edgebot.service")
    except PermissionError:
        return Check("bus", FAIL, f"{path}: permission denied for {pwd.getpwuid(os.getuid()).pw_name}",
                     f"sudo usermod -aG edgebot {pwd.getpwuid(os.getuid()).pw_name}, then log in again")
    except (ConnectionRefusedError, socket.timeout, OSError) as exc:
        return Check("bus", FAIL, f"{path}: {exc}", "sudo systemctl restart edgebot.service; journalctl -u edgebot")
    finally:
        sock.close()
    for line in buf.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("type") == "status-report":
            ctx.bus_state = msg["data"].get("state")
            detail = f"{path}: edgebotd {msg['data'].get('server_version')} is {ctx.bus_state}"
            ok = ctx.bus_state in ("ready", "loading")
            return Check("bus", PASS if ok else FAIL, detail, "" if ok else "journalctl -u edgebot -e")
        if msg.get("type") == "error":
            return Check("bus", FAIL, f"{path}: {msg['data'].get('message')}", "check [bus] allowed_users/groups")
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
    problems, fine = [], []
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


CHECKS: tuple[Callable[[Context], Optional[Check]], ...] = (
    check_config, check_model, check_npu_driver, check_npu_runtime, check_llama, check_bus, check_memory, check_audio, check_serial, check_units,
    check_temperature)


def run_checks(args: argparse.Namespace) -> list[Check]:
    ctx = Context(args)
    results = []
    for check in CHECKS:
        try:
            result = check(ctx)
            if result is not None:  # None: the check does not apply to this configuration
                results.append(result)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            results.append(Check(check.__name__.removeprefix("check_"), FAIL, f"the check itself failed: {exc}"))
    return results


def run_cli(argv: list[str], global_args: Optional[argparse.Namespace] = None) -> int:
    """``edgebot-cli doctor [--json] [--board NAME]``."""
    parser = argparse.ArgumentParser(prog="edgebot-cli doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as a JSON list")
    parser.add_argument("--board", help="board profile to check against (default: the config's)")
    parser.add_argument("--config", help="config file (default: $EDGEBOT_CONFIG or /etc/edgebot/edgebot.toml)")
    parser.add_argument("--socket", help="bus socket (default: $EDGEBOT_SOCKET or [bus] socket)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    for name in ("config", "socket"):
        if getattr(args, name) is None and global_args is not None:
            setattr(args, name, getattr(global_args, name, None))
    results = run_checks(args)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1, ensure_ascii=False))
    else:
        for r in results:
            print(f"{r.status:4}  {r.name:12} {r.detail}")
            if r.fix and r.status in (FAIL, WARN):
                print(f"      {'':12} fix: {r.fix}")
        failed = [r.name for r in results if r.status == FAIL]
        print(f"doctor: {len(failed)} check(s) failed" + (f": {', '.join(failed)}" if failed else ", all good"),
              file=sys.stderr)
    return 1 if any(r.status == FAIL for r in results) else 0
