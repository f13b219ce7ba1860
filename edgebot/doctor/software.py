"""Doctor checks of the software: the config, the model file, llama.cpp's build, the NPU driver and runtime.

llama.cpp and the RKLLM runtime are native libraries: they are asked in a child interpreter
(``edgebot.doctor.probe``), so the doctor never imports them (or the engine) and a crash in one is
a failed check, not the end of the report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from edgebot.config.schema import GET_MODEL
from edgebot.doctor.base import FAIL, PASS, SKIP, WARN, Check, Context


def probe(*args: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Run ``python -m edgebot.doctor.probe ARGS`` and return its JSON; ``{"error": ...}`` when it fails."""
    try:
        r = subprocess.run([sys.executable, "-m", "edgebot.doctor.probe", *args], capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout_s:g} s"}
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"the probe ended with code {r.returncode}: {(r.stderr.strip() or r.stdout.strip())[-300:]}"}
    return out if isinstance(out, dict) else {"error": f"unexpected probe output {r.stdout[:200]!r}"}


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
    fix = GET_MODEL
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
    found = probe("npu-driver")
    if "error" in found:
        return Check("npu driver", FAIL, f"the driver check failed: {found['error']}", "docs/npu.md")
    version, where = found.get("version"), found.get("where", "")
    if version is None and "EDGEBOT_RKNPU_FILES" not in os.environ and shutil.which("dmesg"):
        r = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
        dmesg = re.findall(r"Initialized rknpu (\d+\.\d+\.\d+)", r.stdout)
        if dmesg:
            version, where = dmesg[-1], "dmesg"
        else:
            where += "; dmesg: " + ("no rknpu line" if r.returncode == 0 else "not readable (run as root)")
    minimum, runtime = found["min_driver"], found["runtime_version"]
    fix = f"a Rockchip vendor kernel with rknpu >= {minimum} (docs/npu.md), or the CPU: [llm] backend = \"llama\""
    if version is None:
        return Check("npu driver", FAIL, f"no RKNPU driver version found ({where})", fix)
    if _version_tuple(version) < _version_tuple(minimum):
        return Check("npu driver", FAIL, f"rknpu {version} ({where}) is older than {minimum}, which RKLLM "
                                         f"runtime {runtime} needs", "update the board's kernel: " + fix)
    return Check("npu driver", PASS, f"rknpu {version} ({where}; at least {minimum} needed)")


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def check_npu_runtime(ctx: Context) -> Optional[Check]:
    """librkllmrt.so: loadable, with the 1.3.0 functions, and whether it is the pinned release build."""
    if not _rkllm(ctx):
        return None
    name = ctx.config.get("rkllm", "library")
    found = probe("npu-runtime", name)
    if "error" in found:
        return Check("npu runtime", FAIL, found["error"], "sudo deploy/install.sh rk3588 --npu")
    path, version, tag = found["path"] or name, found["runtime_version"], found["runtime_tag"]
    if found["pinned"]:
        return Check("npu runtime", PASS, f"{path}: RKLLM runtime {version}, the {tag} build")
    return Check("npu runtime", WARN, f"{path} loads and has the runtime's functions, but it is not the "
                                      f"{tag} build; edgebotd refuses it at start unless it reports "
                                      f"version {version}", "sudo deploy/install.sh rk3588 --npu")


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
    found = probe("llama")
    if "error" in found:
        return Check("llama.cpp", FAIL, f"llama-cpp-python does not load: {found['error']}",
                     "sudo deploy/install.sh BOARD   (builds it for the board)")
    text = found["system_info"]
    feats = parse_system_info(text)
    on = sorted(k for k, v in feats.items() if v not in ("0", ""))
    backends = re.findall(r"(?:^|\| )\s*([A-Za-z][\w-]*) :", text)
    machine = os.uname().machine
    detail = (f"llama-cpp-python {found['version']} on {machine}, backends {'+'.join(backends) or '?'}: "
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


