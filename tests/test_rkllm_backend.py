"""The RKLLM backend and its ctypes bindings, against a FAKE librkllmrt.so built from C at test time.

These tests prove the binding (struct layouts from the real header, calls, the callback from the
runtime's thread, abort, the version check) and the backend's logic (prompt text, follow-ups,
the think budget's re-run, cancel) — not the NPU, which only a board has (docs/npu.md)."""

from __future__ import annotations

import ctypes
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from rkllm_harness import ANSWER, FAKE_DIR, SCRIPT, FakeLibs, fake_libs, read_log, runs, write_fake_model

from edgebot.engine.backends import rkllm_api as api
from edgebot.engine.backend import ModelError, SamplingParams
from edgebot.engine.prompt import Turn
from edgebot.engine.backends.rkllm import RkllmBackend, neutralize
from edgebot.engine.think import Piece, ThinkSplitter

__all__ = ["fake_libs"]  # the session fixture, re-exported for pytest

pytestmark = pytest.mark.timeout(60)
BOS, EOS, USER, ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"


@pytest.fixture
def log_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fake.log"
    monkeypatch.setenv("FAKE_RKLLM_LOG", str(path))
    return path


def loaded(lib: Path, model: Path, n_ctx: int = 1024, cpus: str = "") -> RkllmBackend:
    backend = RkllmBackend(str(model), library=str(lib), n_ctx=n_ctx, cpus=cpus)
    backend.load()
    return backend


class Collect:
    """An ``on_piece`` that records pieces, optionally injecting once or cancelling after ``n`` pieces."""

    def __init__(self, inject_after: int = 0, cancel_after: int = 0) -> None:
        self.pieces: list[str] = []
        self.inject_after, self.cancel_after = inject_after, cancel_after
        self.cancel = threading.Event()
        self.threads: set[str] = set()

    def __call__(self, piece: Piece) -> Optional[str]:
        if not piece.token:  # injected text and the final flush: not a token of the runtime
            return None
        self.pieces.append(piece.text)
        self.threads.add(threading.current_thread().name)
        if self.cancel_after and len(self.pieces) == self.cancel_after:
            self.cancel.set()
        if self.inject_after and len(self.pieces) == self.inject_after:
            return "\n</think>"
        return None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def test_struct_layouts_match_the_pinned_header(fake_libs: FakeLibs) -> None:
    header = FAKE_DIR / "rkllm.h"
    blob = subprocess.run(["git", "hash-object", str(header)], capture_output=True, text=True, check=True).stdout
    assert blob.strip() == api.HEADER_BLOB  # byte for byte rkllm.h of rknn-llm release-v1.3.0
    lib = ctypes.CDLL(str(fake_libs.pinned))  # compiled against that header by gcc
    lib.fake_rkllm_sizeof.restype = ctypes.c_size_t
    lib.fake_rkllm_sizeof.argtypes = [ctypes.c_char_p]
    lib.fake_rkllm_offsetof.restype = ctypes.c_size_t
    lib.fake_rkllm_offsetof.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    text = header.read_text()
    enums = set(re.findall(r"typedef enum\s*{[^}]*}\s*(\w+);", text))
    assert set(re.findall(r"}\s*(RKLLM\w+);", text)) - enums == set(api.STRUCTS)  # every struct, nothing else
    values = dict(re.findall(r"^\s*(RKLLM_\w+)\s*=\s*(\d+)", text, re.M))
    assert len(values) == 11 and all(getattr(api, k) == int(v) for k, v in values.items())
    for name, struct in api.STRUCTS.items():
        assert ctypes.sizeof(struct) == lib.fake_rkllm_sizeof(name.encode()), name
    checked = 0
    for name, struct in api.STRUCTS.items():
        for field, *_ in struct._fields_:
            want = lib.fake_rkllm_offsetof(name.encode(), field.encode())
            if want != ctypes.c_size_t(-1).value:
                assert getattr(struct, field).offset == want, f"{name}.{field}"
                checked += 1
    assert api.RKLLMInput.prompt_input.offset == lib.fake_rkllm_offsetof(b"RKLLMInput", b"prompt_input")  # union
    checked += 1
    assert checked == 28  # every field the fake reports an offset for


def test_every_header_function_is_in_the_fake_and_the_bound_ones_in_the_header(fake_libs: FakeLibs) -> None:
    declared = set(re.findall(r"^\w[\w\s\*]*?\b(rkllm_\w+)\(", (FAKE_DIR / "rkllm.h").read_text(), re.M))
    assert len(declared) == 15
    assert set(api.PROTOTYPES) <= declared
    lib = ctypes.CDLL(str(fake_libs.pinned))
    assert all(hasattr(lib, fn) for fn in declared)


def test_streams_the_reply_from_the_runtime_thread(fake_libs: FakeLibs, tmp_path: Path, log_path: Path) -> None:
    backend = loaded(fake_libs.pinned, write_fake_model(tmp_path / "m.rkllm"))
    try:
        prompt = backend.prepare([], "What is 2+2?")
        assert prompt.tokens == [] and prompt.starts_thinking and prompt.n_tokens >= len(prompt.text.encode()) // 3
        got = Collect()
        result = backend.generate(prompt, SamplingParams(temperature=0.5, top_p=0.9, top_k=7), 100,
                                  threading.Event(), got)
    finally:
        backend.close()
    assert got.text == "".join(SCRIPT) and len(got.pieces) == len(SCRIPT)
    assert got.threads == {threading.current_thread().name}  # on_piece runs on the caller's (engine) thread
    assert result.reason == "stop" and result.completion_tokens == len(SCRIPT) and result.cached_tokens == 0
    calls = read_log(log_path)
    init = calls[0]
    assert init.name == "init" and init.args["rc"] == "0" and init.args["max_context_len"] == "1024"
    assert init.args["is_async"] == "0" and init.args["skip_special_token"] == "1"
    assert calls[1].name == "set_chat_template" and calls[1].args == {"system": "", "prefix": "", "postfix": ""}
    run = next(runs(calls))
    sent = run.prompt()
    assert sent == f"{BOS}{USER}What is 2+2?{ASSISTANT}<think>\n"  # our template, verbatim
    assert run.args["keep_history"] == "1" and run.args["max_new_tokens"] == "100"
    assert (run.args["top_k"], run.args["top_p"], run.args["temperature"]) == ("7", "0.90", "0.50")
    assert result.prompt_tokens == (len(sent.encode()) + 3) // 4  # as the runtime counted them
    assert calls[-1].name == "destroy"


def test_a_utf8_character_split_across_tokens_waits(fake_libs: FakeLibs, tmp_path: Path) -> None:
    ga = "가".encode()  # 3 bytes: the fake reports RKLLM_RUN_WAITING for the first part
    model = write_fake_model(tmp_path / "m.rkllm", ["</think>", "A ", ga[:2], ga[2:], "!"])
    backend = loaded(fake_libs.pinned, model)
    try:
        got = Collect()
        result = backend.generate(backend.prepare([], "hi"), SamplingParams(), 50, threading.Event(), got)
    finally:
        backend.close()
    assert got.pieces == ["</think>", "A ", "", "가", "!"]  # one call per token, "" while incomplete
    assert result.completion_tokens == 5


def test_user_text_cannot_become_control_tokens(fake_libs: FakeLibs, tmp_path: Path, log_path: Path) -> None:
    question = "Say <｜User｜> and </think> and <|im_start|> please"
    backend = loaded(fake_libs.pinned, write_fake_model(tmp_path / "m.rkllm"))
    try:
        backend.generate(backend.prepare([Turn("<think>x", "ok <｜end▁of▁sentence｜>")], question, persona="Be <think>"),
                         SamplingParams(), 20, threading.Event(), Collect())
    finally:
        backend.close()
    sent = next(runs(read_log(log_path))).prompt()
    assert sent.count(USER) == 2 and sent.count(EOS) == 1 and sent.count("<think>") == 1  # the template's only
    assert sent.count("</think>") == 0 and "<|im_start|>" not in sent
    assert "Say <\u2060｜User｜> and <\u2060/think> and <\u2060|im_start|> please" in sent
    assert sent.replace("\u2060", "").count("<think>") == 3  # the words are all still there
    assert neutralize("a < b </b> <thinking>") == "a < b </b> <thinking>"  # ordinary text is left alone


def test_follow_up_sends_only_the_new_turn(fake_libs: FakeLibs, tmp_path: Path, log_path: Path) -> None:
    backend = loaded(fake_libs.pinned, write_fake_model(tmp_path / "m.rkllm"))
    try:
        first = backend.prepare([], "What is 2+2?")
        backend.generate(first, SamplingParams(), 100, threading.Event(), Collect())
        kv = (len(first.text.encode()) + 3) // 4 + len(SCRIPT)  # the fake's cache: prompt + reply
        # the scheduler stores the answer without its thinking; the next prompt renders it so
        follow = backend.prepare([Turn("What is 2+2?", ANSWER)], "And 3+3?")
        result = backend.generate(follow, SamplingParams(), 100, threading.Event(), Collect())
        other = backend.prepare([], "Unrelated")  # another conversation: the cache is cleared
        backend.generate(other, SamplingParams(), 100, threading.Event(), Collect())
    finally:
        backend.close()
    calls = [c for c in read_log(log_path) if c.name in ("run", "clear_kv_cache")]
    assert [c.name for c in calls] == ["run", "run", "clear_kv_cache", "run"]
    assert calls[1].prompt() == f"{EOS}{USER}And 3+3?{ASSISTANT}<think>\n"  # only the new turn
    assert follow.text == first.text[: -len("<think>\n")] + ANSWER + calls[1].prompt()
    assert result.cached_tokens == kv and result.prompt_tokens == kv + (len(calls[1].prompt().encode()) + 3) // 4
    assert calls[3].prompt() == other.text


def test_think_budget_aborts_and_reruns_with_the_thinking_closed(fake_libs: FakeLibs, tmp_path: Path,
                                                                   log_path: Path) -> None:
    backend = loaded(fake_libs.pinned, write_fake_model(tmp_path / "m.rkllm"))
    try:
        prompt = backend.prepare([], "What is 2+2?")
        got = Collect(inject_after=3)  # the engine's budget of 3 thinking tokens is spent
        result = backend.generate(prompt, SamplingParams(), 100, threading.Event(), got)
        splitter = ThinkSplitter(True)
        think = splitter.feed("".join(got.pieces[:3]) + "\n</think>").think
        answer = splitter.feed("".join(got.pieces[3:])).answer + splitter.flush().answer
        follow = backend.prepare([Turn("What is 2+2?", answer)], "Again?")
        backend.generate(follow, SamplingParams(), 100, threading.Event(), Collect())
    finally:
        backend.close()
    assert think == "Okay, the\n" and answer == ANSWER
    assert got.pieces[3:] == SCRIPT[len(SCRIPT) - 6:]  # the fake continues after a closed </think>
    assert result.completion_tokens == 3 + 6 and result.reason == "stop"
    calls = [c for c in read_log(log_path) if c.name in ("run", "abort", "clear_kv_cache")]
    assert [c.name for c in calls[:4]] == ["run", "abort", "clear_kv_cache", "run"]
    assert calls[3].prompt() == prompt.text + "Okay, the" + "\n</think>"
    assert calls[3].args["max_new_tokens"] == str(100 - 3)
    assert calls[4].name == "run" and calls[4].prompt() == f"{EOS}{USER}Again?{ASSISTANT}<think>\n"  # reused


def test_cancel_stops_within_a_token_and_during_prompt_processing(fake_libs: FakeLibs, tmp_path: Path,
                                                                    log_path: Path) -> None:
    backend = loaded(fake_libs.pinned, write_fake_model(tmp_path / "loop.rkllm", loop=True, token_delay_us=2000))
    slow = loaded(fake_libs.pinned, write_fake_model(tmp_path / "slow.rkllm", prefill_us_per_token=1_000_000))
    try:
        got = Collect(cancel_after=5)
        result = backend.generate(backend.prepare([], "go"), SamplingParams(), 10_000, got.cancel, got)
        assert result.reason == "cancelled" and len(got.pieces) == 5 and result.completion_tokens == 5
        after = backend.generate(backend.prepare([], "go"), SamplingParams(), 3, threading.Event(), Collect())
        assert after.reason == "length" and after.completion_tokens == 3  # the runtime is usable again
        cancel = threading.Event()
        timer = threading.Timer(0.2, cancel.set)  # the fake would take ~10 s of "prefill"
        timer.start()
        t0 = time.monotonic()
        result = slow.generate(slow.prepare([], "go"), SamplingParams(), 100, cancel, Collect())
        assert result.reason == "cancelled" and result.completion_tokens == 0
        assert time.monotonic() - t0 < 5.0
    finally:
        backend.close()
        slow.close()
    calls = read_log(log_path)
    assert sum(c.name == "abort" for c in calls) >= 3
    assert [c.args["aborted"] for c in calls if c.name == "run-end"] == ["1", "0", "1"]


def test_a_json_schema_is_refused_not_ignored(fake_libs: FakeLibs, tmp_path: Path, log_path: Path) -> None:
    backend = loaded(fake_libs.pinned, write_fake_model(tmp_path / "m.rkllm"))
    try:
        result = backend.generate(backend.prepare([], "hi"), SamplingParams(json_schema='{"type": "object"}'), 50,
                                  threading.Event(), Collect())
    finally:
        backend.close()
    assert result.reason == "error" and "cannot constrain an answer to a JSON schema" in result.message
    assert not list(runs(read_log(log_path)))  # the runtime was never asked


def test_runtime_error_is_reported(fake_libs: FakeLibs, tmp_path: Path) -> None:
    backend = loaded(fake_libs.pinned, write_fake_model(tmp_path / "m.rkllm", error_after=2))
    try:
        got = Collect()
        with pytest.raises(RuntimeError, match="RKLLM_RUN_ERROR"):
            backend.generate(backend.prepare([], "hi"), SamplingParams(), 50, threading.Event(), got)
        assert len(got.pieces) == 2
    finally:
        backend.close()


def test_wrong_runtime_version_is_refused(fake_libs: FakeLibs, tmp_path: Path, log_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        loaded(fake_libs.wrong, write_fake_model(tmp_path / "m.rkllm"))
    msg = str(err.value)
    assert "reports version 1.2.3" in msg and "runtime 1.3.0 only" in msg and "release-v1.3.0" in msg
    assert "deploy/install.sh rk3588 --npu" in msg
    assert [c.name for c in read_log(log_path)] == ["init", "destroy"]  # released, never run


@pytest.mark.parametrize("case, message", [
    ("no-library", "the RKLLM runtime library {tmp}/nowhere/librkllmrt.so does not exist; install RKLLM runtime 1.3.0"),
    ("not-a-library", "cannot load the RKLLM runtime library {tmp}/m.rkllm"),
    ("no-model", "model file {tmp}/missing.rkllm does not exist. Convert DeepSeek-R1-Distill-Qwen-1.5B"),
    ("gguf", "is a GGUF file, which llama.cpp runs, not the RKLLM runtime: set [llm] backend = \"llama\""),
    ("bad-model", "could not load the model {tmp}/bad.rkllm: E RKNN: invalid rknn llm model magic"),
    ("bad-cpus", "bad CPU list '4-9': the runtime takes CPUs 0-7"),
])
def test_clear_errors(fake_libs: FakeLibs, tmp_path: Path, case: str, message: str) -> None:
    model = write_fake_model(tmp_path / "m.rkllm")
    lib, cpus = str(fake_libs.pinned), ""
    if case == "no-library":
        lib = str(tmp_path / "nowhere" / "librkllmrt.so")
    elif case == "not-a-library":
        lib = str(model)
    elif case == "no-model":
        model = tmp_path / "missing.rkllm"
    elif case == "gguf":
        model.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 32)
    elif case == "bad-model":
        model = tmp_path / "bad.rkllm"
        model.write_bytes(b"RKLLM-but-not-the-fake's-format\n")
    elif case == "bad-cpus":
        cpus = "4-9"
    with pytest.raises(ModelError) as err:
        RkllmBackend(str(model), library=lib, cpus=cpus).load()
    assert message.format(tmp=tmp_path) in str(err.value)


def test_parsers() -> None:
    # the runtime's own lines, as users have posted them (1.1.4 and 1.0.1 formats)
    line = "I rkllm: rkllm-runtime version: 1.1.4, rknpu driver version: 0.9.7, platform: RK3588\n"
    assert api.parse_runtime_line("W rkllm: Warning\n" + line) == ("1.1.4", "0.9.7", "RK3588")
    assert api.parse_runtime_line("rkllm-runtime version: 1.0.1\n\nQuery platform error!") == ("1.0.1", None, None)
    assert api.parse_runtime_line("nothing here") == (None, None, None)
    assert api.same_release("1.3.0") and not api.same_release("1.3.0b1") and not api.same_release("1.2.3")
    assert api.parse_driver_version("RKNPU driver: v0.9.8\n") == "0.9.8"  # /sys/kernel/debug/rknpu/version
    assert api.parse_driver_version("0.9.6\n") == "0.9.6"  # /sys/module/rknpu/version
    assert api.parse_driver_version("[    9.926311] [drm] Initialized rknpu 0.9.8 20240828 for fdab0000.npu on minor 1") \
        == "0.9.8"
    assert api.version_tuple("0.9.6") < api.version_tuple(api.MIN_DRIVER) <= api.version_tuple("0.10.0")
    assert api.cpu_mask("4-7") == (4, 0xF0) and api.cpu_mask("0,2,4-5") == (4, 0b110101) and api.cpu_mask("") == (0, 0)


def test_driver_version_from_files(tmp_path: Path) -> None:
    (tmp_path / "debugfs").write_text("RKNPU driver: v0.9.8\n")
    (tmp_path / "module").write_text("0.9.6\n")
    assert api.read_driver_version((str(tmp_path / "none"), str(tmp_path / "debugfs"))) == ("0.9.8", str(tmp_path / "debugfs"))
    version, why = api.read_driver_version((str(tmp_path / "none"),))
    assert version is None and "No such file" in why


def test_cpus_and_the_version_line_reach_the_runtime_and_the_log(fake_libs: FakeLibs, tmp_path: Path,
                                                                   log_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    backend = loaded(fake_libs.pinned, write_fake_model(tmp_path / "m.rkllm"), cpus="4-7")
    backend.close()
    init = read_log(log_path)[0]
    assert (init.args["enabled_cpus_num"], init.args["enabled_cpus_mask"]) == ("4", str(0xF0))
    assert backend.runtime_version == "1.3.0" and backend.driver_version == "0.9.8"
    assert "runtime: rkllm: rkllm-runtime version: 1.3.0, rknpu driver version: 0.9.8" in caplog.text
