"""The llama.cpp backend (llama-cpp-python 0.3.x), with our own eval/sample loop.

Why not ``Llama.create_completion``: we need cancel between prompt batches and after every
token, the KV-cache prefix reused across turns (and counted), text injected into the stream
(the think budget's ``</think>``), and user text that can never become a control token.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from edgebot.config.schema import GET_MODEL as GET_MODEL_COMMAND
from edgebot.engine.backend import (Backend, BackendInfo, GenerationResult, ModelError, PieceCallback,
                                    PreparedPrompt, SamplingParams)
from edgebot.engine.prompt import Turn, render_segments
from edgebot.engine.think import CLOSE_TAG

log = logging.getLogger(__name__)

FAULT_STALL_ENV = "EDGEBOT_FAULT_STALL_GENERATE"
"""Fault-injection hook for tests/hostile: set to 1, every answer blocks forever in ``generate``
(never yields a token, never checks cancel), to prove the watchdog ping stops. Off unless set."""

GRAMMAR_STEP_S = 5.0
"""Longest one grammar-constrained sampling step may take (seconds) before the answer ends with an
error. The schema bounds keep a step to milliseconds; this is the backstop for what they miss."""
MAX_GRAMMAR_CHARS = 65536
"""Largest grammar (characters of GBNF) built from a JSON schema (the bounded schemas make a few KB)."""
GBNF_ESCAPES = set("xuUtrn\\\"[]")
"""The escapes llama.cpp's grammar parser knows. On a parse error it prints the whole grammar to stderr
itself (not through its log callback): ~120 KB per request for ``maxLength: 15000``. The schema
bounds keep grammars small, and the converter's known way of writing one llama.cpp refuses (regex
escapes such as ``\\d`` copied into a literal) is caught before llama.cpp sees it."""

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


def token_piece(vocab: object, token: int, special: bool = False) -> bytes:
    """The bytes of one token, however long. llama-cpp-python's ``detokenize``/``token_to_piece``
    use a 32-byte buffer and silently return nothing for a longer token (Qwen's vocabulary has
    tokens of long runs of spaces or symbols), so the answer would lose text."""
    import ctypes

    import llama_cpp

    size = 64
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
    if n < 0:  # the buffer was too small: -n is the size needed
        size = -n
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
    return buf.raw[:max(n, 0)]


def _unknown_escape(gbnf: str) -> str:
    """The first escape in ``gbnf`` that llama.cpp's parser would refuse (e.g. ``\\d`` copied from a
    pattern), or ""."""
    i = gbnf.find("\\")
    while i >= 0:
        if gbnf[i + 1:i + 2] not in GBNF_ESCAPES:
            return gbnf[i:i + 2]
        i = gbnf.find("\\", i + 2)
    return ""


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


class LlamaBackend(Backend):
    """One ``llama_cpp.Llama``; every method but ``load``/``info`` runs on the engine thread."""

    def __init__(self, model_path: str, *, n_ctx: int = 4096, n_threads: int = 0, n_batch: int = 256,
                 use_mmap: bool = True, use_mlock: bool = False) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or len(os.sched_getaffinity(0))
        self.n_batch = n_batch
        self.use_mmap = use_mmap
        self.use_mlock = use_mlock
        self._llm = None  # llama_cpp.Llama once loaded
        self._special: dict[str, int] = {}  # text of every control / user-defined token
        self._special_re: Optional[re.Pattern[str]] = None  # any of them, longest first
        self._spelled: dict[str, list[int]] = {}  # a special token's text as plain-character tokens
        self._template: Optional[str] = None
        self._closing = threading.Lock()  # a grammar check on another thread never races the model's release
        self._bos_text = ""
        self._eos_text = ""

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        check_model_file(self.model_path)
        import llama_cpp  # heavy: imported only by the daemon

        try:
            with load_progress(self):
                llm = llama_cpp.Llama(model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads,
                                      n_threads_batch=self.n_threads, n_batch=self.n_batch,
                                      use_mmap=self.use_mmap, use_mlock=self.use_mlock, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"model file {self.model_path} could not be loaded by llama.cpp ({exc}); "
                             f"it may be truncated, corrupt or of an unsupported architecture. {GET_MODEL}") from None
        self._llm = llm
        model = llm._model
        wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        for tok in range(model.n_vocab()):
            if model.token_get_attr(tok) & wanted:
                text = token_piece(model.vocab, tok, special=True).decode("utf-8", "replace")
                if len(text) > 1:
                    self._special[text] = tok
        if self._special:
            self._special_re = re.compile("|".join(re.escape(t) for t in sorted(self._special, key=len, reverse=True)))
        self._template = llm.metadata.get("tokenizer.chat_template")
        self._bos_text = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
        self._eos_text = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
        log.info("loaded %s: n_ctx=%d threads=%d batch=%d, %d special tokens", self.model_path, self.n_ctx,
                 self.n_threads, self.n_batch, len(self._special))

    def info(self) -> BackendInfo:
        return BackendInfo(name="llama.cpp", model=self.model_path, n_ctx=self.n_ctx)

    def close(self) -> None:
        with self._closing:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    # -- prompts -----------------------------------------------------------------------------

    def tokenize_text(self, text: str) -> list[int]:
        """Tokenize user text as plain characters: never a control or user-defined token.

        llama.cpp matches user-defined tokens (``<｜User｜>``, ``<think>`` in R1 models) even with
        ``special=False``, so every occurrence of a special token's text is tokenized one
        character at a time. One left-to-right scan (the longest special text wins where several
        start), so the time is linear in the text: 1 MiB of ``<think>`` once took 52 s here.
        """
        llm = self._llm
        assert llm is not None
        if self._special_re is None:
            return llm.tokenize(text.encode(), add_bos=False, special=False) if text else []
        tokens: list[int] = []
        pos = 0
        for match in self._special_re.finditer(text):
            if match.start() > pos:
                tokens += llm.tokenize(text[pos:match.start()].encode(), add_bos=False, special=False)
            special = match.group()
            spelled = self._spelled.get(special)
            if spelled is None:
                spelled = [t for ch in special for t in llm.tokenize(ch.encode(), add_bos=False, special=False)]
                self._spelled[special] = spelled
            tokens += spelled
            pos = match.end()
        if pos < len(text):
            tokens += llm.tokenize(text[pos:].encode(), add_bos=False, special=False)
        return tokens

    def prepare(self, turns: list[Turn], question: Optional[str], persona: str = "") -> PreparedPrompt:
        assert self._llm is not None
        segments = render_segments(self._template, turns, question, persona=persona,
                                   bos_text=self._bos_text, eos_text=self._eos_text)
        tokens: list[int] = []
        for seg in segments:
            if seg.is_content:
                tokens += self.tokenize_text(seg.text)
            else:
                tokens += self._llm.tokenize(seg.text.encode(), add_bos=False, special=True)
        ends_thinking = bool(segments) and not segments[-1].is_content and \
            segments[-1].text.rstrip().endswith("<think>")
        return PreparedPrompt(tokens=tokens, starts_thinking=ends_thinking and question is not None)

    def extend(self, prompt: PreparedPrompt, text: str) -> PreparedPrompt:
        assert self._llm is not None
        extra = self._llm.tokenize(text.encode(), add_bos=False, special=True)
        return PreparedPrompt(tokens=prompt.tokens + extra, starts_thinking=False)

    # -- the cache ---------------------------------------------------------------------------

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Drop the cache after the longest common prefix with ``tokens``; returns its length."""
        llm = self._llm
        assert llm is not None
        n = 0
        limit = min(llm.n_tokens, len(tokens) - 1)  # keep >= 1 token to evaluate for fresh logits
        cached = llm.input_ids
        while n < limit and cached[n] == tokens[n]:
            n += 1
        if n < llm.n_tokens:
            if not llm._ctx.kv_cache_seq_rm(-1, n, -1):
                n = 0
                llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            llm.n_tokens = n
        return n

    def _eval_batches(self, tokens: list[int], start: int, stop: Callable[[], bool]) -> int:
        """Evaluate ``tokens[start:]`` in n_batch batches; returns how many were evaluated."""
        llm = self._llm
        assert llm is not None
        done = 0
        for i in range(start, len(tokens), self.n_batch):
            if stop():
                break
            batch = tokens[i: i + self.n_batch]
            llm.eval(batch)
            done += len(batch)
        return done

    def prefill(self, prompt: PreparedPrompt, stop: Callable[[], bool]) -> int:
        tokens = prompt.tokens[: self.n_ctx - 1]
        if not tokens:
            return 0
        start = self._reuse_prefix(tokens + [-1])  # the whole prompt may be reused here
        return self._eval_batches(tokens, start, stop)

    # -- generation --------------------------------------------------------------------------

    def _grammar(self, json_schema: str) -> Any:
        """A ``LlamaGrammar`` for ``json_schema``, built only within the schema bounds and checked by
        llama.cpp's own parser. Raises ValueError (SchemaLimitError for a bound) naming the problem."""
        super().check_grammar(json_schema)  # the bounds, before anything is built
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            grammar = LlamaGrammar.from_json_schema(json_schema, verbose=False)
        except Exception as exc:  # noqa: BLE001 - the converter raises assorted types on odd schemas
            raise ValueError(f"the JSON schema cannot be turned into a grammar: {str(exc)[:300]}") from None
        if len(grammar._grammar) > MAX_GRAMMAR_CHARS:
            raise ValueError(f"the grammar made from the JSON schema has {len(grammar._grammar)} characters, more "
                             f"than {MAX_GRAMMAR_CHARS}; simplify the schema")
        bad_escape = _unknown_escape(grammar._grammar)
        if bad_escape:
            raise ValueError(f"a pattern in the JSON schema uses {bad_escape}, which llama-cpp-python's grammar "
                             f"converter does not translate; write a character class instead (e.g. [0-9] for \\d, "
                             f"[.] for \\.)")
        # llama-cpp-python adds a grammar sampler without checking it parsed (a NULL would crash):
        # parse it once here first. Reads only the vocabulary, so any thread may do it.
        with self._closing:
            llm = self._llm
            if llm is not None:
                import llama_cpp

                probe = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar._grammar.encode(), b"root")
                if not probe:
                    raise ValueError("llama.cpp refused the grammar made from the JSON schema (its converter does "
                                     "not support some construct in it); simplify the schema")
                llama_cpp.llama_sampler_free(probe)
        return grammar

    def check_grammar(self, json_schema: str) -> None:
        self._grammar(json_schema)

    def _grammar_sampler(self, params: SamplingParams) -> object:
        """A sampler chain like the free one, constrained by the grammar of ``params.json_schema``.

        Raises ValueError when the schema cannot be turned into a grammar llama.cpp accepts.
        """
        llm = self._llm
        assert llm is not None and params.json_schema is not None
        grammar = self._grammar(params.json_schema)
        return llm._init_sampler(temp=params.temperature, top_p=params.top_p, top_k=params.top_k, grammar=grammar)

    def generate(self, prompt: PreparedPrompt, params: SamplingParams, max_tokens: int,
                 cancel: threading.Event, on_piece: PieceCallback) -> GenerationResult:
        llm = self._llm
        assert llm is not None
        import llama_cpp

        if os.environ.get(FAULT_STALL_ENV) == "1":  # FAULT INJECTION for tests/hostile only; off unless set
            log.warning("FAULT INJECTION %s=1: this answer blocks forever without checking cancel", FAULT_STALL_ENV)
            threading.Event().wait()
        tokens = prompt.tokens
        result = GenerationResult(reason="stop", prompt_tokens=len(tokens), backend="local")
        result.cached_tokens = self._reuse_prefix(tokens)
        self._eval_batches(tokens, result.cached_tokens, cancel.is_set)
        if cancel.is_set():
            result.reason = "cancelled"
            return result
        llm.set_seed(params.seed if params.seed >= 0 else random.randrange(2**31))
        sampler = llm._init_sampler(temp=params.temperature, top_p=params.top_p, top_k=params.top_k)
        constrained = None
        if params.json_schema is not None:
            try:
                constrained = self._grammar_sampler(params)
            except ValueError as exc:
                result.reason, result.message = "error", str(exc)
                return result
        # The grammar constrains the answer only: it takes over once the thinking has closed.
        answering, seen = not prompt.starts_thinking, ""
        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        room = self.n_ctx - llm.n_tokens
        limit = min(max_tokens, room)
        while True:
            if result.completion_tokens >= limit:
                result.reason = "length"
                break
            if constrained is not None and answering:
                began = time.monotonic()
                token = constrained.sample(llm._ctx, -1)  # type: ignore[attr-defined]
                took = time.monotonic() - began
                if took > GRAMMAR_STEP_S:
                    result.reason = "error"
                    result.message = (f"one token under the JSON schema's grammar took {took:.1f} s (limit "
                                      f"{GRAMMAR_STEP_S:g} s); simplify the schema")
                    break
            else:
                token = sampler.sample(llm._ctx, -1)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            result.completion_tokens += 1
            piece = decoder.decode(token_piece(vocab, token))
            inject = on_piece(piece)
            if not answering:
                seen += piece + (inject or "")
                answering, seen = CLOSE_TAG in seen, seen[-len(CLOSE_TAG):]
            feed = [token]
            if inject:
                feed += llm.tokenize(inject.encode(), add_bos=False, special=True)
            if cancel.is_set():
                result.reason = "cancelled"
                break
            if llm.n_tokens + len(feed) > self.n_ctx:
                result.reason = "length"
                break
            llm.eval(feed)
        tail = decoder.decode(b"", final=True)
        if tail:
            on_piece(tail)
        return result
