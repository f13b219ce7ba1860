"""The llama.cpp backend (llama-cpp-python 0.3.x), with our own eval/sample loop.

Why not ``Llama.create_completion``: we need cancel between prompt batches and after every
token, the KV-cache prefix reused across turns (and counted), text injected into the stream
(the think budget's ``</think>``), user text that can never become a control token, a KV sequence
per conversation (``llama_seqs.py``) and several answers decoded together (``llama_batch.py``).
The model and context are made with llama-cpp-python's low-level wrappers (``LlamaModel``,
``LlamaContext``), because ``Llama`` cannot create a context with several sequences.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
from typing import Any, Callable, Optional

from edgebot.engine.backend import (Backend, BackendInfo, GenerationResult, ModelError, PieceCallback,
                                    PreparedPrompt, SamplingParams)
from edgebot.engine.backends.llama_batch import Batcher, Stream, token_piece
from edgebot.engine.backends.llama_grammar import GRAMMAR_STEP_S, build_grammar
from edgebot.engine.backends.llama_load import GET_MODEL, check_model_file, load_progress
from edgebot.engine.backends.llama_seqs import SeqPool
from edgebot.engine.prompt import Turn, render_segments
from edgebot.engine.think import OPEN_TAG

log = logging.getLogger(__name__)

__all__ = ["GRAMMAR_STEP_S", "LlamaBackend", "token_piece"]

FAULT_STALL_ENV = "EDGEBOT_FAULT_STALL_GENERATE"
"""Fault-injection hook for tests/hostile: set to 1, every answer blocks forever in ``generate``
(never yields a token, never checks cancel), to prove the watchdog ping stops. Off unless set."""
KV_PAD = 256
"""llama.cpp rounds each sequence's share of a split KV cache up to a multiple of this (tokens)."""


class LlamaBackend(Backend):
    """One ``llama_cpp.Llama``; every method but ``load``/``info`` runs on the engine thread."""

    max_parallel = 64  # answers this backend can decode together (the engine asks for [engine] parallel)

    def __init__(self, model_path: str, *, n_ctx: int = 4096, n_threads: int = 0, n_batch: int = 256,
                 use_mmap: bool = True, use_mlock: bool = False, sequences: int = 4, kv_tokens: int = 0,
                 kv_per_sequence: bool = False, saved_sessions_mib: int = 0) -> None:
        """``n_ctx``: most tokens of one conversation; ``kv_tokens``: the KV cache shared by all
        ``sequences`` (conversations kept warm), at least ``n_ctx`` (0 = ``n_ctx``).
        ``kv_per_sequence``: split the cache evenly between the sequences (llama.cpp's non-unified
        KV, as ``llama-server --parallel``): several answers decode together faster, but a
        conversation holds at most its share (``n_ctx`` is lowered to it when larger).
        ``saved_sessions_mib``: RAM for the sequences of sessions that lost theirs (0 = they are re-read)."""
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or len(os.sched_getaffinity(0))
        self.n_batch = n_batch
        self.use_mmap = use_mmap
        self.use_mlock = use_mlock
        self.sequences = max(1, sequences)
        self.kv_tokens = max(n_ctx, kv_tokens)
        self.per_sequence = kv_per_sequence and self.sequences > 1
        self.save_bytes = max(0, saved_sessions_mib) << 20
        if self.per_sequence:
            share = max(KV_PAD, self.kv_tokens // self.sequences // KV_PAD * KV_PAD)  # llama.cpp pads to 256
            if share < n_ctx:
                log.warning("[engine] kv_per_sequence: each of %d sequences holds %d tokens of the %d-token KV "
                            "cache, so a conversation is limited to %d tokens ([llm] n_ctx %d); raise "
                            "[engine] kv_tokens to %d for the whole context", self.sequences, share,
                            self.kv_tokens, share, n_ctx, n_ctx * self.sequences)
                self.n_ctx = share
            self.kv_tokens = share * self.sequences
        self._llm: Any = None  # llama_cpp's LlamaModel once loaded (tokenize/detokenize)
        self._ctx: Any = None
        self.pool: Optional[SeqPool] = None
        self.batcher: Optional[Batcher] = None
        self._special: dict[str, int] = {}  # text of every control / user-defined token
        self._special_re: Optional[re.Pattern[str]] = None  # any of them, longest first
        self._spelled: dict[str, list[int]] = {}  # a special token's text as plain-character tokens
        self._template: Optional[str] = None
        self._closing = threading.Lock()  # a grammar check on another thread never races the model's release
        self.load_progress: Optional[float] = None  # percent while loading (load_progress), else None
        self._bos_text = ""
        self._eos_text = ""

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        check_model_file(self.model_path)
        import llama_cpp  # heavy: imported only by the daemon
        from llama_cpp import _internals as internals
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's own log: errors only (as llama_cpp.Llama(verbose=False))

        load_mode = {(True, True): llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK, (False, True): llama_cpp.LLAMA_LOAD_MODE_MLOCK,
                             (True, False): llama_cpp.LLAMA_LOAD_MODE_MMAP,
                             (False, False): llama_cpp.LLAMA_LOAD_MODE_NONE}[(self.use_mmap, self.use_mlock)]
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.kv_tokens
        cparams.n_batch = min(self.n_batch, self.kv_tokens)
        cparams.n_ubatch = min(cparams.n_batch, 512)
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        cparams.n_seq_max = self.sequences
        # unified: one pool of cells for every sequence, each may use up to n_ctx of them; else each
        # sequence its own kv_tokens / sequences cells (llama.cpp's streams: batched decode is faster)
        cparams.kv_unified = not self.per_sequence
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama_cpp.Llama's default
        try:
            with load_progress(self):
                mparams = llama_cpp.llama_cpp.llama_model_default_params()  # with the progress callback
                mparams.load_mode = load_mode
                model = internals.LlamaModel(path_model=self.model_path, params=mparams, verbose=False)
            ctx = internals.LlamaContext(model=model, params=cparams, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"model file {self.model_path} could not be loaded by llama.cpp ({exc}); "
                             f"it may be truncated, corrupt or of an unsupported architecture. {GET_MODEL}") from None
        self._llm, self._ctx = model, ctx
        self.pool = SeqPool(ctx, self.sequences, self.kv_tokens, per_sequence=self.per_sequence,
                            save_bytes=self.save_bytes)
        self.batcher = Batcher(ctx, model, self.pool, cparams.n_batch, self.n_ctx)
        wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        for tok in range(model.n_vocab()):
            if model.token_get_attr(tok) & wanted:
                text = token_piece(model.vocab, tok, special=True).decode("utf-8", "replace")
                if len(text) > 1:
                    self._special[text] = tok
        if self._special:
            self._special_re = re.compile("|".join(re.escape(t) for t in sorted(self._special, key=len, reverse=True)))
        self._template = model.metadata().get("tokenizer.chat_template")
        self._bos_text = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
        self._eos_text = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
        log.info("loaded %s: n_ctx=%d threads=%d batch=%d, KV cache %d tokens for %d sequences (%s), %d special "
                 "tokens", self.model_path, self.n_ctx, self.n_threads, self.n_batch, self.kv_tokens, self.sequences,
                 "split evenly" if self.per_sequence else "shared", len(self._special))

    def info(self) -> BackendInfo:
        return BackendInfo(name="llama.cpp", model=self.model_path, n_ctx=self.n_ctx)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None
        with self._closing:
            if self._ctx is not None:
                self._ctx.close()
                self._ctx = None
            if self._llm is not None:
                self._llm.close()
                self._llm = None
        self.pool = None

    def forget(self, key: str) -> None:
        if self.pool is not None:
            self.pool.forget(key)

    def kv_status(self) -> dict[str, Any]:
        pool = self.pool
        if pool is None:
            return {}
        return {"layout": "per-sequence" if pool.per_sequence else "shared",
                "cells": pool.cells * (len(pool.seqs) if pool.per_sequence else 1),
                "used": sum(len(s.tokens) for s in pool.seqs), "sequences": pool.snapshot(),
                "evictions": pool.evictions, "shifted_tokens": pool.shifted, "saved_sessions": len(pool.saved),
                "saved_bytes": pool.saved_bytes, "restored": pool.restored}

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
        turn_ends: list[int] = []
        content = -1 if persona and (turns or question is not None) else 0  # the persona is the first content
        last: list[int] = []
        for seg in segments:
            if seg.is_content:
                turn = turns[content // 2] if 0 <= content < 2 * len(turns) and content % 2 == 1 else None
                if turn is not None and turn.answer_tokens is not None and seg.text == turn.answer:
                    tokens += turn.answer_tokens  # what the model generated: what its KV sequence holds
                else:
                    tokens += self.tokenize_text(seg.text)
                if turn is not None:
                    turn_ends.append(len(tokens))  # after an earlier turn's answer
                content += 1
            else:
                last = self._llm.tokenize(seg.text.encode(), add_bos=False, special=True)
                tokens += last
        ends_thinking = bool(segments) and not segments[-1].is_content and \
            segments[-1].text.rstrip().endswith(OPEN_TAG)
        prompt = PreparedPrompt(tokens=tokens, starts_thinking=ends_thinking and question is not None,
                                turn_ends=turn_ends if len(turn_ends) == len(turns) else None)
        if prompt.starts_thinking:
            text = segments[-1].text
            head = self._llm.tokenize(text[:text.rfind(OPEN_TAG)].encode(), add_bos=False, special=True)
            prompt.think_at = len(tokens) - len(last) + len(head)
        return prompt

    def extend(self, prompt: PreparedPrompt, text: str) -> PreparedPrompt:
        assert self._llm is not None
        extra = self._llm.tokenize(text.encode(), add_bos=False, special=True)
        return PreparedPrompt(tokens=prompt.tokens + extra, starts_thinking=False, key=prompt.key,
                              turn_ends=prompt.turn_ends, dropped=prompt.dropped)

    # -- the cache ---------------------------------------------------------------------------

    def prefill(self, prompt: PreparedPrompt, stop: Callable[[], bool]) -> int:
        """Bring the conversation's sequence to ``prompt`` (its canonical history), batch by batch."""
        assert self.pool is not None and self.batcher is not None
        tokens = prompt.tokens[: self.n_ctx - 1]
        if not tokens:
            return 0
        seq = self.pool.acquire(prompt.key, tokens)
        try:
            start = self.pool.reuse(seq, tokens, prompt.dropped, keep_one=False)
            if start >= len(tokens) or not self.pool.make_room(len(tokens) - start, seq):
                return 0
            cancel = threading.Event()
            st = Stream(seq, PreparedPrompt(tokens=tokens, starts_thinking=False), start, 0, cancel,
                        lambda piece: None, None, None)
            while st.prefilling and not st.done:
                if stop():
                    cancel.set()
                self.batcher.step([st])
            return len(seq.tokens) - start
        finally:
            self.pool.release(seq)

    # -- generation --------------------------------------------------------------------------

    def _sampler(self, params: SamplingParams, grammar: Any = None) -> Any:
        """A sampler chain as ``llama_cpp.Llama`` builds one (top-k, typical, top-p, min-p 0.05,
        temperature, a seeded draw), with ``grammar`` first when given."""
        from llama_cpp import _internals as internals

        chain = internals.LlamaSampler()
        if grammar is not None:
            chain.add_grammar(self._llm, grammar)
        seed = params.seed if params.seed >= 0 else random.randrange(2**31)
        if params.temperature < 0:
            chain.add_dist(seed)
        elif params.temperature == 0:
            chain.add_greedy()
        else:
            chain.add_top_k(params.top_k)
            chain.add_typical(1.0, 1)
            chain.add_top_p(params.top_p, 1)
            chain.add_min_p(0.05, 1)
            chain.add_temp(params.temperature)
            chain.add_dist(seed)
        return chain

    def _grammar(self, json_schema: str) -> Any:
        return build_grammar(json_schema, lambda: self._llm.vocab if self._llm is not None else None, self._closing)

    def check_grammar(self, json_schema: str) -> None:
        self._grammar(json_schema)

    def open(self, prompt: PreparedPrompt, params: SamplingParams, max_tokens: int, cancel: threading.Event,
             on_piece: PieceCallback) -> Stream:
        """Start a generation in the prompt's conversation sequence (``step`` advances it).

        Raises ValueError for a JSON schema llama.cpp cannot use, MemoryError when the KV cache
        has no room for it beside the running answers (it may be opened again later).
        """
        assert self.pool is not None
        constrained = self._sampler(params, self._grammar(params.json_schema)) if params.json_schema is not None \
            else None
        seq = self.pool.acquire(prompt.key, prompt.tokens)
        cached = self.pool.reuse(seq, prompt.tokens, prompt.dropped)
        if not self.pool.make_room(len(prompt.tokens) - cached + 1, seq):
            self.pool.release(seq)
            raise MemoryError("the KV cache is full with running answers")
        st = Stream(seq, prompt, cached, max_tokens, cancel, on_piece, self._sampler(params), constrained)
        st.grammar_step_s = GRAMMAR_STEP_S  # read here, so a test may lower it
        return st

    def step(self, streams: list[Stream]) -> None:
        """One ``llama_decode`` for every open stream."""
        assert self.batcher is not None
        self.batcher.step(streams)

    def finish(self, st: Stream, keep_answer: bool) -> GenerationResult:
        """End a stream (done or not) and free its sequence. ``keep_answer``: the answer becomes the
        conversation's history, so its thinking is shifted out of the sequence now (the R1 template
        drops past thinking), and the next question does not re-read the answer."""
        assert self.pool is not None and self.batcher is not None
        result = self.batcher.end(st)
        seq, think_at = st.seq, st.prompt.think_at
        if keep_answer and st.answer_at is not None:
            self._answer_tokens(result, seq.tokens[st.answer_at:])
        if keep_answer and think_at is not None and st.answer_at is not None and st.answer_at > think_at:
            if self.pool.drop_span(seq, think_at, st.answer_at - think_at):
                log.debug("KV sequence %d: thinking shifted out (%d tokens)", seq.id, st.answer_at - think_at)
        self.pool.release(seq)
        return result

    def _answer_tokens(self, result: GenerationResult, tokens: list[int]) -> None:
        """Offer the answer's generated tokens for the next prompt (none that is a control token)."""
        assert self._llm is not None
        special = set(self._special.values())
        pieces = [token_piece(self._llm.vocab, t) for t in tokens]
        # whitespace-only tokens at either end are dropped (the history's answer is stripped); a token
        # holding part of a character (Qwen's byte-level BPE splits rare CJK characters) is never blank,
        # and the bytes are decoded together, so such a character is whole here as in the streamed text
        while pieces and not pieces[0].decode("utf-8", "replace").strip():
            tokens, pieces = tokens[1:], pieces[1:]
        while pieces and not pieces[-1].decode("utf-8", "replace").strip():
            tokens, pieces = tokens[:-1], pieces[:-1]
        if tokens and not special.intersection(tokens):
            result.answer_tokens = tuple(tokens)
            result.answer_text = b"".join(pieces).decode("utf-8", "replace")

    def generate(self, prompt: PreparedPrompt, params: SamplingParams, max_tokens: int,
                 cancel: threading.Event, on_piece: PieceCallback) -> GenerationResult:
        if os.environ.get(FAULT_STALL_ENV) == "1":  # FAULT INJECTION for tests/hostile only; off unless set
            log.warning("FAULT INJECTION %s=1: this answer blocks forever without checking cancel", FAULT_STALL_ENV)
            threading.Event().wait()
        try:
            st = self.open(prompt, params, max_tokens, cancel, on_piece)
        except ValueError as exc:
            return GenerationResult(reason="error", prompt_tokens=len(prompt.tokens), backend="local",
                                    message=str(exc))
        try:
            while not st.done:
                self.step([st])
        except BaseException:
            self.finish(st, keep_answer=False)
            raise
        return self.finish(st, keep_answer=st.result.reason in ("stop", "length"))

