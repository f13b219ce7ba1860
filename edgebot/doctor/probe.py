"""The doctor's child probes: ``python -m edgebot.doctor.probe llama|npu-driver|npu-runtime [LIB]``.

Run in a child interpreter by ``edgebot.doctor.software``, never imported by the doctor: they load
native libraries (llama.cpp, the RKLLM runtime), whose crash must not end the doctor's report.
Each prints one JSON object on its last line.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def llama() -> dict[str, Any]:
    """llama-cpp-python's version and llama.cpp's ``llama_print_system_info`` line."""
    try:
        import llama_cpp
    except ImportError as exc:
        return {"error": f"llama-cpp-python is not importable ({exc})"}
    raw = llama_cpp.llama_print_system_info()
    return {"version": llama_cpp.__version__,
            "system_info": raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)}


def npu_driver() -> dict[str, Any]:
    """The RKNPU driver version from its sysfs/debugfs files (``$EDGEBOT_RKNPU_FILES`` in tests)."""
    from edgebot.engine.backends import rkllm_api as api

    files = tuple(os.environ.get("EDGEBOT_RKNPU_FILES", "").split()) or api.DRIVER_FILES
    version, where = api.read_driver_version(files)
    return {"version": version, "where": where, "min_driver": api.MIN_DRIVER, "runtime_version": api.RUNTIME_VERSION}


def npu_runtime(name: str) -> dict[str, Any]:
    """Whether librkllmrt.so loads with the pinned functions, where it is, and whether it is the pinned build."""
    from edgebot.engine.backends import rkllm_api as api

    try:
        lib = api.load_library(name)
    except api.LibraryError as exc:
        return {"error": str(exc)}
    path = api.library_path(lib)
    return {"path": path, "pinned": api.is_pinned_build(path), "runtime_version": api.RUNTIME_VERSION,
            "runtime_tag": api.RUNTIME_TAG}


def main(argv: list[str]) -> int:
    if argv[:1] == ["llama"]:
        out = llama()
    elif argv[:1] == ["npu-driver"]:
        out = npu_driver()
    elif argv[:1] == ["npu-runtime"] and len(argv) == 2:
        out = npu_runtime(argv[1])
    else:
        out = {"error": "usage: python -m edgebot.doctor.probe llama|npu-driver|npu-runtime LIB"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
