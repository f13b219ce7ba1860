"""The RKLLM backend: DeepSeek-R1-Distill on the RK3588 NPU through Rockchip's runtime 1.3.0.

The runtime takes text and tokenizes it itself, so this backend renders the whole prompt with the
model's chat template (``render_segments``, the R1-distill template) and sets the runtime's own
template to empty strings, so the text goes in unchanged. Everything the scheduler does (queue,
sessions, think splitter, budget, stats) is unchanged; the differences, each forced by the C API:

- **User text is text**, by neutralising instead of tokenizing: the runtime tokenizes the whole
  prompt, control tokens included, so in message content every special-token text (``<｜User｜>``,
  ``<think>``, ``<|im_start|>`` …) gets U+2060 WORD JOINER after its ``<`` and can no longer match.
- **Token counts** are estimated for fitting the context (UTF-8 bytes / ``BYTES_PER_TOKEN``, an
  over-estimate for Qwen's tokenizer); ``answer-end.stats`` report what the runtime counted
  (``RKLLMPerfStat.prefill_tokens``, one callback per generated token).
- **Streaming and cancel**: ``rkllm_run`` (synchronous) runs on a helper thread; the runtime calls
  back from its own thread, the callback only queues a copy, and the engine thread takes pieces off
  the queue, calls ``on_piece`` and, on cancel, calls ``rkllm_abort`` and waits for ``rkllm_run``
  to return (checked every ``POLL_S``, so also during prompt processing).
- **The think budget** cannot inject ``</think>`` into a running generation: there is no call that
  appends tokens mid-stream. When the engine asks for an injection the backend aborts the run and
  starts a new one whose prompt is the old prompt + the thinking so far + ``\\n</think>``, with the
  tokens left of ``max_tokens``. That re-reads the prompt and the thinking (prompt processing on
  the NPU: published figures for 1.5B W8A8 models range from ~144 to ~340 tokens/s), so a forced
  close costs about (prompt + budget) / that rate, once; the answer then follows as with llama.cpp.
- **Sessions / KV cache**: every run uses ``keep_history = 1``, so the runtime keeps the prompt and
  the answer in its KV cache. The next prompt of the same conversation is the canonical history
  (the R1 template drops past thinking) — the cache holds the thinking too, so it is never a prefix
  match. The backend therefore remembers the *canonical* text the cache stands for (prompt without
  its trailing ``<think>`` + the answer as the session will store it) and, when the next prompt
  starts with it, sends only the rest. So a follow-up pays only for its own tokens, and the model
  sees its earlier thinking in context (which the R1 template would have dropped). Any other prompt
  (another session, trimmed history, after a cancel) clears the cache first
  (``rkllm_clear_kv_cache``). ``prefill`` does nothing: the runtime cannot evaluate a prompt without
  generating.
- Sampling: temperature, top-p and top-k per run (``RKLLMSamplingParam``); the runtime has no seed
  and no grammar, so an answer asked to follow a JSON schema ends with reason ``error``.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import math
import os
import queue
import re
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from edgebot.engine.backends import rkllm_api as api
from edgebot.engine.backend import (Backend, BackendInfo, GenerationResult, ModelError, PieceCallback,
                                    PreparedPrompt, SamplingParams)
from edgebot.engine.chat_template import BOS_TEXT, EOS_TEXT, R1_DISTILL_CHAT_TEMPLATE
from edgebot.engine.prompt import Turn, render_segments
from edgebot.engine.think import OPEN_TAG, PieceSplitter

log = logging.getLogger(__name__)

BYTES_PER_TOKEN = 3.0  # Qwen2's BPE averages ~4 bytes/token in English, ~3 in CJK: an over-estimate
POLL_S = 0.02  # seconds between cancel checks while no token arrives (prompt processing)
STOP_TIMEOUT_S = 30.0  # seconds the runtime gets to return from rkllm_run after rkllm_abort
GET_MODEL = ("Convert DeepSeek-R1-Distill-Qwen-1.5B with rkllm-toolkit 1.3.0 for rk3588 on an x86 PC and copy "
             "the .rkllm file to the board (docs/npu.md), or set [llm] model / --model to it.")

# Special-token texts in message content: R1/DeepSeek's <｜…｜>, ChatML/Qwen's <|…|>, and <think>/</think>.
_SPECIAL_TEXT = re.compile(r"<(?=｜[^｜<>]{1,40}｜>|\|[^|<>]{1,40}\|>|/?think>)")
_GEN_THINK = re.compile(re.escape(OPEN_TAG) + r"\s*(?:</think>\s*)?$")
_DONE = object()  # queued by the helper thread when rkllm_run has returned


def neutralize(content: str) -> str:
    """``content`` with U+2060 after the ``<`` of every special-token text, so it stays text."""
    return _SPECIAL_TEXT.sub("<\u2060", content)


def check_rkllm_file(path: str) -> None:
    """Raise ModelError unless ``path`` is a readable, non-empty file (the runtime checks the rest)."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file {path} does not exist. {GET_MODEL}")
    if not p.is_file():
        raise ModelError(f"model path {path} is not a file. {GET_MODEL}")
    if not os.access(path, os.R_OK):
        raise ModelError(f"model file {path} is not readable by this user (uid {os.getuid()}); "
                         f"fix its permissions (e.g. chmod 0644)")
    if p.stat().st_size == 0:
        raise ModelError(f"model file {path} is empty. {GET_MODEL}")
    with p.open("rb") as fh:
        if fh.read(4) == b"GGUF":
            raise ModelError(f"model file {path} is a GGUF file, which llama.cpp runs, not the RKLLM runtime: "
                             f"set [llm] backend = \"llama\" to run it on the CPU. {GET_MODEL}")


class RkllmBackend(Backend):
    """One ``LLMHandle`` of librkllmrt.so; every method but ``load``/``info`` runs on the engine thread."""

    def __init__(self, model_path: str, *, library: str = "librkllmrt.so", n_ctx: int = 4096, cpus: str = "",
                 sampling: Optional[SamplingParams] = None) -> None:
        self.model_path = model_path
        self.library = library
        self.n_ctx = n_ctx
        self.cpus = cpus
        self.sampling = sampling if sampling is not None else SamplingParams()
        self.runtime_version = ""
        self.driver_version = ""
        self._lib: Any = None
        self._handle = ctypes.c_void_p()
        self._callback: Any = None  # the CFUNCTYPE object must outlive the handle
        self._events: "queue.Queue[Any]" = queue.Queue()
        self._history_key: Optional[str] = None  # canonical text the runtime's KV cache stands for

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        check_rkllm_file(self.model_path)
        try:
            lib = api.load_library(self.library)
            n_cpus, mask = api.cpu_mask(self.cpus)
        except (api.LibraryError, ValueError) as exc:
            raise ModelError(str(exc)) from None
        path = api.library_path(lib) or self.library
        pinned = api.is_pinned_build(path)
        param = lib.rkllm_createDefaultParam()
        param.model_path = self.model_path.encode()
        param.max_context_len = self.n_ctx
        param.max_new_tokens = self.n_ctx
        param.top_k, param.top_p = self.sampling.top_k, self.sampling.top_p
        param.temperature = self.sampling.temperature
        param.skip_special_token = True
        param.is_async = False
        param.extend_param.base_domain_id = 0
        if mask:
            param.extend_param.enabled_cpus_num, param.extend_param.enabled_cpus_mask = n_cpus, mask
        self._callback = api.LLMResultCallback(self._on_result)
        callbacks = api.RKLLMCallback()
        callbacks.result_callback = self._callback
        with api.captured_stdio() as captured:
            ret = lib.rkllm_init(ctypes.byref(self._handle), ctypes.byref(param), ctypes.byref(callbacks))
        output = captured[0] if captured else ""
        self._relay(output)
        version, driver, _platform = api.parse_runtime_line(output)
        self.runtime_version, self.driver_version = version or "", driver or ""
        if ret != 0 or not self._handle.value:
            errors = "; ".join(ln.strip() for ln in output.splitlines() if ln.startswith("E ")) or f"code {ret}"
            raise ModelError(f"the RKLLM runtime ({path}, version {version or 'unknown'}) could not load the model "
                             f"{self.model_path}: {errors}. Is it a .rkllm file converted with rkllm-toolkit "
                             f"{api.RUNTIME_VERSION} for rk3588? {GET_MODEL}")
        if not pinned and (version is None or not api.same_release(version)):
            lib.rkllm_destroy(self._handle)
            self._handle = ctypes.c_void_p()
            said = f"reports version {version}" if version else "did not report its version during rkllm_init"
            raise ModelError(f"the RKLLM runtime library {path} {said}; edgebot's bindings are written against "
                             f"runtime {api.RUNTIME_VERSION} only (rkllm.h of airockchip/rknn-llm {api.RUNTIME_TAG}) "
                             f"and other versions have a different ABI. {api.INSTALL_HINT[0].upper()}"
                             f"{api.INSTALL_HINT[1:]}, and convert the model with rkllm-toolkit {api.RUNTIME_VERSION}.")
        if driver and api.version_tuple(driver) < api.version_tuple(api.MIN_DRIVER):
            log.warning("NPU driver %s is older than %s, which RKLLM runtime %s needs; update the board's kernel "
                        "(docs/npu.md)", driver, api.MIN_DRIVER, api.RUNTIME_VERSION)
        if lib.rkllm_set_chat_template(self._handle, b"", b"", b"") != 0:
            lib.rkllm_destroy(self._handle)
            self._handle = ctypes.c_void_p()
            raise ModelError("the RKLLM runtime refused rkllm_set_chat_template(\"\", \"\", \"\")")
        self._lib = lib
        log.info("RKLLM runtime %s (%s%s), NPU driver %s, model %s", version or api.RUNTIME_VERSION, path,
                 ", the pinned release build" if pinned else "", driver or "unknown", self.model_path)

    @staticmethod
    def _relay(output: str) -> None:
        """Pass on what was printed while stdout/stderr were captured: the runtime's lines to the log."""
        for line in output.splitlines():
            if not line.strip():
                continue
            if re.match(r"^[IWE] \w+:", line):
                level = {"E": logging.ERROR, "W": logging.WARNING}.get(line[0], logging.INFO)
                log.log(level, "runtime: %s", line[2:].strip())
            else:
                os.write(2, (line + "\n").encode())

    def info(self) -> BackendInfo:
        return BackendInfo(name="rkllm", model=self.model_path, n_ctx=self.n_ctx)

    # -- prompts -----------------------------------------------------------------------------

    @staticmethod
    def estimate(text: str) -> int:
        """Tokens ``text`` will take, over-estimated (see ``BYTES_PER_TOKEN``)."""
        return max(1, math.ceil(len(text.encode()) / BYTES_PER_TOKEN))

    def prepare(self, turns: list[Turn], question: Optional[str], persona: str = "") -> PreparedPrompt:
        segments = render_segments(R1_DISTILL_CHAT_TEMPLATE, turns, question, persona=persona,
                                   bos_text=BOS_TEXT, eos_text=EOS_TEXT)
        text = "".join(neutralize(s.text) if s.is_content else s.text for s in segments)
        ends_thinking = bool(segments) and not segments[-1].is_content and \
            segments[-1].text.rstrip().endswith(OPEN_TAG)
        return PreparedPrompt(tokens=[], starts_thinking=ends_thinking and question is not None, text=text,
                              count=self.estimate(text))

    def extend(self, prompt: PreparedPrompt, text: str) -> PreparedPrompt:
        full = (prompt.text or "") + text
        return PreparedPrompt(tokens=[], starts_thinking=False, text=full, count=self.estimate(full))

    def prefill(self, prompt: PreparedPrompt, stop: Callable[[], bool]) -> int:
        """Nothing to do: the runtime cannot evaluate a prompt without generating (see the module doc)."""
        return 0

    # -- the runtime's callback (its thread) ------------------------------------------------------

    def _on_result(self, result: Any, userdata: Any, state: int) -> int:
        try:
            if state in (api.RKLLM_RUN_NORMAL, api.RKLLM_RUN_WAITING):
                text = result.contents.text if result else None
                self._events.put((state, text or b"", None))
            elif state == api.RKLLM_RUN_FINISH:
                perf = None
                if result:
                    p = result.contents.perf
                    perf = (p.prefill_tokens, p.prefill_time_ms, p.generate_tokens, p.generate_time_ms)
                self._events.put((state, b"", perf))
            else:
                self._events.put((state, b"", None))
        except Exception:  # noqa: BLE001 - an exception must never unwind into C
            log.exception("RKLLM result callback failed")
        return 0

    # -- generation --------------------------------------------------------------------------

    def _kv_size(self) -> int:
        sizes = (ctypes.c_int * 1)()
        return sizes[0] if self._lib.rkllm_get_kv_cache_size(self._handle, sizes) == 0 else 0

    def _start(self, text: str, params: SamplingParams, max_new: int) -> threading.Thread:
        """Start ``rkllm_run`` on a helper thread; ``_DONE`` is queued when it returns."""
        self._events = queue.Queue()
        events = self._events
        sampling = api.RKLLMSamplingParam(top_k=params.top_k, top_p=params.top_p, temperature=params.temperature,
                                          repeat_penalty=1.0, mirostat_tau=5.0, mirostat_eta=0.1)
        infer = api.RKLLMInferParam(mode=api.RKLLM_INFER_GENERATE, keep_history=1, max_new_tokens=max_new)
        infer.sampling_params = ctypes.pointer(sampling)
        inp = api.RKLLMInput(role=b"user", enable_thinking=False, input_type=api.RKLLM_INPUT_PROMPT)
        inp.prompt_input = text.encode()
        keep = (sampling, infer, inp)  # alive until rkllm_run returns

        def run() -> None:
            try:
                ret = self._lib.rkllm_run(self._handle, ctypes.byref(keep[2]), ctypes.byref(keep[1]), None)
            except Exception as exc:  # noqa: BLE001 - reported to the engine thread
                ret = f"{exc}"
            events.put((_DONE, ret, None))

        thread = threading.Thread(target=run, name="rkllm-run", daemon=True)
        thread.start()
        return thread

    def _stop(self, thread: threading.Thread) -> None:
        """``rkllm_abort`` and wait until ``rkllm_run`` has returned (tokens still queued are dropped)."""
        self._lib.rkllm_abort(self._handle)
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"the RKLLM runtime did not stop within {STOP_TIMEOUT_S:.0f} s of rkllm_abort")

    def generate(self, prompt: PreparedPrompt, params: SamplingParams, max_tokens: int,
                 cancel: threading.Event, on_piece: PieceCallback) -> GenerationResult:
        assert self._lib is not None and prompt.text is not None
        if params.json_schema is not None:
            return GenerationResult(reason="error", message="the rkllm backend (the NPU runtime) cannot constrain an "
                                    "answer to a JSON schema; use [llm] backend = \"llama\" for that")
        text = prompt.text
        base = _GEN_THINK.sub("", text)  # what this turn's history starts with: the prompt minus its <think>
        key, self._history_key = self._history_key, None  # unknown until this run ends normally
        cached = self._kv_size()
        limit = min(max_tokens, max(1, self.n_ctx - prompt.n_tokens))
        if key is not None and text.startswith(key) and cached + self.estimate(text[len(key):]) + limit <= self.n_ctx:
            send = text[len(key):]
        else:
            if cached or key is not None:
                self._lib.rkllm_clear_kv_cache(self._handle, 0, None, None)
            send, cached = text, 0
        result = GenerationResult(reason="stop", cached_tokens=cached)
        splitter = PieceSplitter(prompt.starts_thinking)
        answer: list[str] = []
        generated: list[str] = []  # this run's text, for a re-run after a forced </think>
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        thread = self._start(send, params, limit)
        stopping = False  # abort requested: ignore tokens until rkllm_run returns
        rerun: Optional[str] = None
        finished = False
        while True:
            try:
                state, data, perf = self._events.get(timeout=POLL_S)
            except queue.Empty:
                if cancel.is_set() and not stopping:
                    self._stop(thread)
                    stopping = True
                continue
            if state is _DONE:
                if data != 0 and not stopping and not finished:
                    raise RuntimeError(f"rkllm_run failed ({data}); see the runtime's messages in the log")
                if rerun is not None and not cancel.is_set() and result.completion_tokens < limit:
                    self._lib.rkllm_clear_kv_cache(self._handle, 0, None, None)
                    thread = self._start(rerun, params, limit - result.completion_tokens)
                    rerun, stopping, finished, generated = None, False, False, []
                    decoder.reset()
                    continue
                break
            if stopping:
                continue
            if state == api.RKLLM_RUN_ERROR:
                self._stop(thread)
                raise RuntimeError("the RKLLM runtime reported an error during inference (RKLLM_RUN_ERROR); "
                                   "see its messages in the log")
            if state == api.RKLLM_RUN_FINISH:
                finished = True
                if perf is not None and not result.prompt_tokens:
                    result.prompt_tokens = cached + perf[0]
                continue
            if result.completion_tokens >= limit:  # the runtime should have stopped at max_new_tokens
                self._stop(thread)
                stopping = True
                continue
            result.completion_tokens += 1
            piece = decoder.decode(data)
            generated.append(piece)
            split = splitter.feed(piece)
            answer.append(split.answer)
            inject = on_piece(split)
            if cancel.is_set():
                self._stop(thread)
                stopping = True
            elif inject:
                split = splitter.inject(inject)
                answer.append(split.answer)
                on_piece(split)
                rerun = text + "".join(generated) + inject
                text = rerun
                self._stop(thread)
                stopping = True
        if cancel.is_set():
            result.reason = "cancelled"
            return result
        if result.completion_tokens >= limit:
            result.reason = "length"
        if not result.prompt_tokens:
            result.prompt_tokens = cached + self.estimate(send)
        tail = decoder.decode(b"", final=True)
        if tail:
            split = splitter.feed(tail)
            on_piece(split)
            answer.append(split.answer)
        split = splitter.flush()
        on_piece(split)
        answer.append(split.answer)
        if finished:  # a run that ended by itself: the cache holds exactly what was sent and generated
            self._history_key = base + neutralize("".join(answer).strip())
        return result

    def close(self) -> None:
        if self._lib is not None and self._handle.value:
            self._lib.rkllm_abort(self._handle)
            self._lib.rkllm_destroy(self._handle)
            self._handle = ctypes.c_void_p()
