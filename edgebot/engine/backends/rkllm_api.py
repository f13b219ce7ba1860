"""ctypes bindings for Rockchip's RKLLM runtime (``librkllmrt.so``), pinned to ONE version.

Written against exactly ``rkllm-runtime/Linux/librkllm_api/include/rkllm.h`` of
airockchip/rknn-llm at tag ``release-v1.3.0`` (commit 878f9361, header git blob c76346c7): runtime
**1.3.0**. The runtime's ABI changes between releases (1.3.0 passes an ``RKLLMCallback`` struct to
``rkllm_init`` where 1.2.x took a bare function pointer; ``RKLLMParam`` lost three pointers and
``RKLLMInferParam`` gained two fields), so a library of another version is refused, not guessed at.

How the runtime reports its version: it has no version function; ``rkllm_init`` prints
``I rkllm: rkllm-runtime version: X, rknpu driver version: Y, platform: Z`` on stdout. The backend
captures that line (``captured_stdio``) and checks X. The pinned release's aarch64 library is also
recognised by its git blob hash, which ``deploy/install.sh --npu`` and ``edgebot-cli doctor`` use.

Only the standard library here (ctypes), so ``edgebot-cli doctor`` can import the constants and the
driver-version helpers cheaply.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from ctypes import (CFUNCTYPE, POINTER, Structure, Union, c_bool, c_char_p, c_float, c_int, c_int8, c_int32,
                    c_size_t, c_uint8, c_uint32, c_uint64, c_void_p)
from pathlib import Path
from typing import Iterator, Optional

RUNTIME_VERSION = "1.3.0"
RUNTIME_TAG = "release-v1.3.0"
RUNTIME_COMMIT = "878f9361fd3afa7e167b7079918918f78d2c1c2a"
HEADER_BLOB = "c76346c7f7bcab9e8eb61e3f903ee93cdc03d236"
# git blob ids of the release's rkllm-runtime/Linux/librkllm_api/<arch>/librkllmrt.so (deploy/install.sh
# verifies the download against the same id).
LIBRARY_BLOBS = {"aarch64": "34167b32f99cb7ab19e21fb579fb750d96b878f1"}
# The NPU kernel driver this runtime needs: the release ships rknpu_driver_0.9.8 and Rockchip's
# answers to "matmul(w8a8) run failed" on 1.2.x/1.3.0 are "update the driver to 0.9.8".
MIN_DRIVER = "0.9.8"
DRIVER_FILES = ("/sys/kernel/debug/rknpu/version", "/sys/module/rknpu/version")

# LLMCallState
RKLLM_RUN_NORMAL, RKLLM_RUN_WAITING, RKLLM_RUN_FINISH, RKLLM_RUN_ERROR = 0, 1, 2, 3
# RKLLMInputType
RKLLM_INPUT_PROMPT, RKLLM_INPUT_TOKEN, RKLLM_INPUT_EMBED, RKLLM_INPUT_MULTIMODAL = 0, 1, 2, 3
# RKLLMInferMode
RKLLM_INFER_GENERATE, RKLLM_INFER_GET_LAST_HIDDEN_LAYER, RKLLM_INFER_GET_LOGITS = 0, 1, 2

c_enum = c_int  # C enums are int-sized on both x86-64 and aarch64 (LP64)


class RKLLMExtendParam(Structure):
    _fields_ = [("base_domain_id", c_int32), ("embed_flash", c_int8), ("enabled_cpus_num", c_int8),
                ("enabled_cpus_mask", c_uint32), ("n_batch", c_uint8), ("use_cross_attn", c_int8),
                ("reserved", c_uint8 * 104)]


class RKLLMParam(Structure):
    _fields_ = [("model_path", c_char_p), ("max_context_len", c_int32), ("max_new_tokens", c_int32),
                ("top_k", c_int32), ("n_keep", c_int32), ("top_p", c_float), ("temperature", c_float),
                ("repeat_penalty", c_float), ("frequency_penalty", c_float), ("presence_penalty", c_float),
                ("mirostat", c_int32), ("mirostat_tau", c_float), ("mirostat_eta", c_float),
                ("skip_special_token", c_bool), ("ignore_eos_token", c_bool), ("is_async", c_bool),
                ("extend_param", RKLLMExtendParam)]


class RKLLMLoraAdapter(Structure):
    _fields_ = [("lora_adapter_path", c_char_p), ("lora_adapter_name", c_char_p), ("scale", c_float)]


class RKLLMEmbedInput(Structure):
    _fields_ = [("embed", POINTER(c_float)), ("n_tokens", c_size_t)]


class RKLLMTokenInput(Structure):
    _fields_ = [("input_ids", POINTER(c_int32)), ("n_tokens", c_size_t)]


class _ImageInput(Structure):
    _fields_ = [("image_embed", POINTER(c_float)), ("n_image_tokens", c_size_t), ("n_image", c_size_t),
                ("image_start", c_char_p), ("image_end", c_char_p), ("image_content", c_char_p),
                ("image_width", c_size_t), ("image_height", c_size_t)]


class _VideoInput(Structure):
    _fields_ = [("video_embed", POINTER(c_float)), ("n_frame_tokens", c_size_t), ("n_frame_per_video", c_size_t),
                ("n_video", c_size_t), ("video_start", c_char_p), ("video_end", c_char_p),
                ("video_content", c_char_p), ("frame_width", c_size_t), ("frame_height", c_size_t)]


class RKLLMMultiModalInput(Structure):
    _fields_ = [("prompt", c_char_p), ("image", _ImageInput), ("video", _VideoInput)]


class _InputUnion(Union):
    _fields_ = [("prompt_input", c_char_p), ("embed_input", RKLLMEmbedInput), ("token_input", RKLLMTokenInput),
                ("multimodal_input", RKLLMMultiModalInput)]


class RKLLMInput(Structure):
    _anonymous_ = ("_u",)
    _fields_ = [("role", c_char_p), ("enable_thinking", c_bool), ("input_type", c_enum), ("_u", _InputUnion)]


class RKLLMLoraParam(Structure):
    _fields_ = [("lora_adapter_name", c_char_p)]


class RKLLMPromptCacheParam(Structure):
    _fields_ = [("save_prompt_cache", c_int), ("prompt_cache_path", c_char_p)]


class RKLLMCrossAttnParam(Structure):
    _fields_ = [("encoder_k_cache", POINTER(c_float)), ("encoder_v_cache", POINTER(c_float)),
                ("encoder_mask", POINTER(c_float)), ("encoder_pos", POINTER(c_int32)), ("num_tokens", c_int)]


class RKLLMSamplingParam(Structure):
    _fields_ = [("top_k", c_int32), ("top_p", c_float), ("temperature", c_float), ("repeat_penalty", c_float),
                ("frequency_penalty", c_float), ("presence_penalty", c_float), ("mirostat", c_int32),
                ("mirostat_tau", c_float), ("mirostat_eta", c_float)]


class RKLLMInferParam(Structure):
    _fields_ = [("mode", c_enum), ("lora_params", POINTER(RKLLMLoraParam)),
                ("prompt_cache_params", POINTER(RKLLMPromptCacheParam)),
                ("sampling_params", POINTER(RKLLMSamplingParam)), ("keep_history", c_int),
                ("max_new_tokens", c_int32)]


class RKLLMResultLastHiddenLayer(Structure):
    _fields_ = [("hidden_states", POINTER(c_float)), ("embd_size", c_int), ("num_tokens", c_int)]


class RKLLMResultLogits(Structure):
    _fields_ = [("logits", POINTER(c_float)), ("vocab_size", c_int), ("num_tokens", c_int)]


class RKLLMPerfStat(Structure):
    """Times in milliseconds, counts in tokens, memory in MB (VmHWM)."""

    _fields_ = [("prefill_time_ms", c_float), ("prefill_tokens", c_int), ("generate_time_ms", c_float),
                ("generate_tokens", c_int), ("memory_usage_mb", c_float)]


class RKLLMResult(Structure):
    _fields_ = [("text", c_char_p), ("token_id", c_int32), ("last_hidden_layer", RKLLMResultLastHiddenLayer),
                ("logits", RKLLMResultLogits), ("perf", RKLLMPerfStat)]


LLMResultCallback = CFUNCTYPE(c_int, POINTER(RKLLMResult), c_void_p, c_enum)
LLMTokenizerCallback = CFUNCTYPE(c_int, c_void_p, c_char_p, c_int32, POINTER(c_int32), c_int32)
LLMGetEmbedCallback = CFUNCTYPE(c_int, c_void_p, POINTER(c_int32), c_uint64, c_void_p, c_uint64)


class RKLLMCallback(Structure):
    _fields_ = [("result_callback", LLMResultCallback), ("result_userdata", c_void_p),
                ("tokenizer_callback", LLMTokenizerCallback), ("tokenizer_userdata", c_void_p),
                ("embed_callback", LLMGetEmbedCallback), ("embed_userdata", c_void_p)]


STRUCTS: dict[str, type] = {c.__name__: c for c in (
    RKLLMExtendParam, RKLLMParam, RKLLMLoraAdapter, RKLLMEmbedInput, RKLLMTokenInput, RKLLMMultiModalInput,
    RKLLMInput, RKLLMLoraParam, RKLLMPromptCacheParam, RKLLMCrossAttnParam, RKLLMSamplingParam, RKLLMInferParam,
    RKLLMResultLastHiddenLayer, RKLLMResultLogits, RKLLMPerfStat, RKLLMResult, RKLLMCallback)}

_H = c_void_p  # LLMHandle
PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "rkllm_createDefaultParam": (RKLLMParam, []),
    "rkllm_init": (c_int, [POINTER(_H), POINTER(RKLLMParam), POINTER(RKLLMCallback)]),
    "rkllm_destroy": (c_int, [_H]),
    "rkllm_run": (c_int, [_H, POINTER(RKLLMInput), POINTER(RKLLMInferParam), c_void_p]),
    "rkllm_run_async": (c_int, [_H, POINTER(RKLLMInput), POINTER(RKLLMInferParam), c_void_p]),
    "rkllm_abort": (c_int, [_H]),
    "rkllm_is_running": (c_int, [_H]),
    "rkllm_clear_kv_cache": (c_int, [_H, c_int, POINTER(c_int), POINTER(c_int)]),
    "rkllm_get_kv_cache_size": (c_int, [_H, POINTER(c_int)]),
    "rkllm_set_chat_template": (c_int, [_H, c_char_p, c_char_p, c_char_p]),
}


class LibraryError(Exception):
    """The runtime library cannot be found, loaded or bound; the message says how to fix it."""


INSTALL_HINT = ("install RKLLM runtime {v} with `sudo deploy/install.sh rk3588 --npu`, or set [rkllm] library "
                "to its path (docs/npu.md)").format(v=RUNTIME_VERSION)


def load_library(name: str) -> ctypes.CDLL:
    """dlopen ``name`` (a path, or a file name searched on the library path) and declare the prototypes."""
    if "/" in name and not os.path.exists(name):
        raise LibraryError(f"the RKLLM runtime library {name} does not exist; {INSTALL_HINT}")
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise LibraryError(f"cannot load the RKLLM runtime library {name}: {exc}; {INSTALL_HINT}") from None
    missing = [fn for fn in PROTOTYPES if not hasattr(lib, fn)]
    if missing:
        raise LibraryError(f"{name} is not RKLLM runtime {RUNTIME_VERSION}: it lacks {', '.join(missing)}; "
                           f"{INSTALL_HINT}")
    for fn, (restype, argtypes) in PROTOTYPES.items():
        func = getattr(lib, fn)
        func.restype = restype
        func.argtypes = argtypes
    return lib


def library_path(lib: ctypes.CDLL) -> Optional[str]:
    """The file a loaded library came from (from /proc/self/maps), or None."""
    target = ctypes.cast(lib.rkllm_init, c_void_p).value or 0
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= target < hi and len(parts) >= 6:
                    return parts[5]
    except OSError:
        pass
    return None


def git_blob_id(path: str) -> str:
    """The git blob id of a file (what ``git hash-object`` prints): sha1 of ``blob <size>\\0`` + content."""
    h = hashlib.sha1()
    h.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_pinned_build(path: Optional[str]) -> bool:
    """True when ``path`` is byte for byte the pinned release's library for some architecture."""
    try:
        return path is not None and git_blob_id(path) in LIBRARY_BLOBS.values()
    except OSError:
        return False


_RUNTIME_LINE = re.compile(r"rkllm-runtime version:\s*v?([0-9][\w.+-]*?)(?=[,\s]|$)"
                           r"(?:.*?rknpu driver version:\s*v?([0-9][\w.+-]*?)(?=[,\s]|$))?"
                           r"(?:.*?platform:\s*(\w+))?")


def parse_runtime_line(text: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """``(runtime, driver, platform)`` from the runtime's init output; None where absent."""
    m = _RUNTIME_LINE.search(text)
    if not m:
        return None, None, None
    return m.group(1), m.group(2), m.group(3)


def same_release(reported: str, pinned: str = RUNTIME_VERSION) -> bool:
    """``1.3.0`` matches ``1.3.0``; ``1.3.0b1``, ``1.3.01`` or ``1.2.3`` do not."""
    return reported == pinned


_DRIVER = re.compile(r"(?:RKNPU driver:\s*v?|rknpu\s+|^\s*v?)(\d+\.\d+\.\d+)", re.I | re.M)


def parse_driver_version(text: str) -> Optional[str]:
    """The NPU driver version in ``RKNPU driver: v0.9.8`` (debugfs), ``0.9.6`` (/sys/module) or a
    dmesg line ``[drm] Initialized rknpu 0.9.8 20240828 for fdab0000.npu``."""
    m = _DRIVER.search(text)
    return m.group(1) if m else None


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def read_driver_version(files: tuple[str, ...] = DRIVER_FILES) -> tuple[Optional[str], str]:
    """``(version, where)`` from the first readable driver file; ``(None, reasons)`` otherwise."""
    reasons = []
    for f in files:
        try:
            text = Path(f).read_text(errors="replace")
        except OSError as exc:
            reasons.append(f"{f}: {exc.strerror or exc}")
            continue
        v = parse_driver_version(text)
        if v:
            return v, f
        reasons.append(f"{f}: no version in {text.strip()[:60]!r}")
    return None, "; ".join(reasons)


@contextmanager
def captured_stdio() -> Iterator[list[str]]:
    """Send fds 1 and 2 to a temporary file for the duration; afterwards the list holds what was written.

    The runtime prints its version (and its errors) with C stdio, so stdio is flushed (``fflush(NULL)``)
    before the descriptors are restored. Other threads' output in that window is captured too; the
    caller passes it on.
    """
    out: list[str] = []
    libc = ctypes.CDLL(None)
    libc.fflush.argtypes = [c_void_p]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            try:
                yield out
            finally:
                libc.fflush(None)
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                tmp.seek(0)
                out.append(tmp.read().decode(errors="replace"))
    finally:
        os.close(saved[0])
        os.close(saved[1])


def cpu_mask(spec: str) -> tuple[int, int]:
    """``"4-7"`` or ``"0,2,4-5"`` -> ``(number of CPUs, bit mask)`` for ``RKLLMExtendParam``; ``""`` -> (0, 0)."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"bad CPU list {spec!r}: use numbers and ranges such as 4-7 or 0,2,4-5")
        first, last = int(lo), int(hi or lo)
        if first > last or last > 7:
            raise ValueError(f"bad CPU list {spec!r}: the runtime takes CPUs 0-7")
        cpus.update(range(first, last + 1))
    return len(cpus), sum(1 << c for c in cpus)
