"""Loading a llama.cpp model file: the checks before (a clear error for a missing, unreadable, empty or
foreign file) and the progress while llama.cpp maps or reads it (``status`` and the journal)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from edgebot.config.schema import GET_MODEL as GET_MODEL_COMMAND
from edgebot.engine.backend import Backend, ModelError

log = logging.getLogger(__name__)

GET_MODEL = (f"Get the model with `{GET_MODEL_COMMAND}` (DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M GGUF) "
             "or set [llm] model / --model to a GGUF file.")


def check_model_file(path: str) -> None:
    """Raise ModelError unless ``path`` looks like a readable, complete GGUF file."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file {path} does not exist. {GET_MODEL}")
    if not p.is_file():
        raise ModelError(f"model path {path} is not a file. {GET_MODEL}")
    try:
        with p.open("rb") as fh:
            head = fh.read(24)
    except PermissionError:
        raise ModelError(f"model file {path} is not readable by this user (uid {os.getuid()}); "
                         f"fix its permissions (e.g. chmod 0644)") from None
    if not head:
        raise ModelError(f"model file {path} is empty (0 bytes). {GET_MODEL}")
    if head[:4] != b"GGUF":
        raise ModelError(f"model file {path} is not a GGUF file (it starts with {head[:4]!r}). {GET_MODEL}")
    if len(head) < 24:
        raise ModelError(f"model file {path} is truncated ({p.stat().st_size} bytes). {GET_MODEL}")


@contextlib.contextmanager
def load_progress(backend: Backend, log_every: float = 10.0) -> Iterator[None]:
    """While a ``Llama`` is built: llama.cpp's ``progress_callback`` (in ``llama_model_params``, the
    fraction of the tensor data mapped/read) goes to ``backend.load_progress`` (percent) and to the
    log every ``log_every`` percent. ``Llama()`` takes no callback, so its default params get one for
    the duration (only the engine thread builds a ``Llama``)."""
    import llama_cpp.llama_cpp as lib

    default_params = lib.llama_model_default_params
    logged = [-log_every]

    def on_progress(fraction: float, _user: object) -> bool:
        try:
            backend.load_progress = percent = round(min(max(fraction, 0.0), 1.0) * 100, 1)
            if percent >= logged[0] + log_every or (percent == 100 and logged[0] < 100):
                logged[0] = percent
                log.info("loading %s: %.0f %%", getattr(backend, "model_path", "the model"), percent)
        except Exception:  # noqa: BLE001 - never abort the load (returning False would) for a log line
            pass
        return True

    callback = lib.llama_progress_callback(on_progress)  # kept alive until the load returns

    def params_with_progress() -> Any:
        params = default_params()
        params.progress_callback = callback
        return params

    backend.load_progress = 0.0
    lib.llama_model_default_params = params_with_progress
    try:
        yield
    finally:
        lib.llama_model_default_params = default_params
        backend.load_progress = None
