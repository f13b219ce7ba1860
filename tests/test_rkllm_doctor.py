"""``edgebot-cli doctor`` with ``[llm] backend = "rkllm"``: the NPU driver, the runtime library and the
.rkllm model, through the real CLI, with driver version files written by the test (the
EDGEBOT_RKNPU_FILES override) and the FAKE runtime library."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import EDGEBOT_CLI
from rkllm_harness import FakeLibs, fake_libs, write_fake_model

__all__ = ["fake_libs"]

pytestmark = pytest.mark.timeout(120)


def doctor(config: Path, driver_files: str) -> tuple[int, dict[str, dict[str, Any]]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEBOT_")}
    r = subprocess.run([EDGEBOT_CLI, "doctor", "--json", "--config", str(config)], capture_output=True, text=True,
                       timeout=60, env={**base, "EDGEBOT_BOARD": "generic-x86", "EDGEBOT_RKNPU_FILES": driver_files})
    return r.returncode, {c["name"]: c for c in json.loads(r.stdout)}


def test_npu_checks_pass_warn_and_fail_with_fixes(fake_libs: FakeLibs, tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "r1.rkllm")
    (tmp_path / "debugfs").write_text("RKNPU driver: v0.9.8\n")
    (tmp_path / "old").write_text("0.9.6\n")
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text(f'[llm]\nbackend = "rkllm"\nmodel = "{model}"\n[rkllm]\nlibrary = "{fake_libs.pinned}"\n'
                   f'[bus]\nsocket = "{tmp_path}/nobody.sock"\n')
    _, checks = doctor(cfg, f"{tmp_path}/missing {tmp_path}/debugfs")
    assert checks["npu driver"]["status"] == "PASS"
    assert checks["npu driver"]["detail"] == f"rknpu 0.9.8 ({tmp_path}/debugfs; at least 0.9.8 needed)"
    # the fake loads and has every 1.3.0 function, but it is not the release's build: a warning, not a pass
    assert checks["npu runtime"]["status"] == "WARN" and str(fake_libs.pinned) in checks["npu runtime"]["detail"]
    assert "not the release-v1.3.0 build" in checks["npu runtime"]["detail"]
    assert checks["model"]["status"] == "PASS" and ".rkllm file" in checks["model"]["detail"]
    assert checks["memory"]["status"] == "SKIP"  # sized from a GGUF header only

    cfg.write_text(f'[llm]\nbackend = "rkllm"\nmodel = "{tmp_path}/none.rkllm"\n[rkllm]\n'
                   f'library = "{tmp_path}/lib/librkllmrt.so"\n[bus]\nsocket = "{tmp_path}/nobody.sock"\n')
    code, checks = doctor(cfg, f"{tmp_path}/old")
    assert code == 1
    assert checks["npu driver"]["status"] == "FAIL" and "rknpu 0.9.6" in checks["npu driver"]["detail"]
    assert "older than 0.9.8" in checks["npu driver"]["detail"] and "update the board's kernel" in checks["npu driver"]["fix"]
    assert checks["npu runtime"]["status"] == "FAIL" and "does not exist" in checks["npu runtime"]["detail"]
    assert checks["npu runtime"]["fix"] == "sudo deploy/install.sh rk3588 --npu"
    assert checks["model"]["status"] == "FAIL" and "rkllm-toolkit 1.3.0" in checks["model"]["fix"]
    _, checks = doctor(cfg, f"{tmp_path}/missing")
    assert checks["npu driver"]["status"] == "FAIL" and "no RKNPU driver version found" in checks["npu driver"]["detail"]


def test_npu_checks_are_not_shown_for_the_llama_backend(tmp_path: Path) -> None:
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text(f'[bus]\nsocket = "{tmp_path}/nobody.sock"\n')
    _, checks = doctor(cfg, f"{tmp_path}/missing")
    assert "npu driver" not in checks and "npu runtime" not in checks and "model" in checks
