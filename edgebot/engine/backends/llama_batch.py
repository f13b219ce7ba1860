"""Batched decoding for the llama.cpp backend: each answer is a ``Stream`` in its own KV sequence,
and ``Batcher.step`` advances every open stream with one ``llama_decode``.

A step puts one token (plus any injected text) of every answering stream into the batch, then
fills the rest of ``n_batch`` with the next chunk of a stream's prompt, so running answers keep
streaming while a new prompt is read. After the decode each stream whose last entry asked for
logits samples its next token with its own sampler chain (grammar included) and hands the piece
to its ``on_piece``. One stream alone is exactly the old loop: the prompt in ``n_batch`` chunks,
then one token per ``llama_decode``.

Runs only on the engine thread.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from typing import Any, Optional

from edgebot.engine.backend import GenerationResult, PieceCallback, PreparedPrompt
from edgebot.engine.backends.llama_seqs import Seq, SeqPool
from edgebot.engine.think import CLOSE_TAG, PieceSplitter

log = logging.getLogger(__name__)


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


class Stream:
    """One generation: the prompt tokens still to read, then one token per step until it is ``done``."""

    def __init__(self, seq: Seq, prompt: PreparedPrompt, cached: int, max_tokens: int, cancel: threading.Event,
                 on_piece: PieceCallback, sampler: Any, constrained: Any) -> None:
        self.seq = seq
        self.prompt = prompt
        self.pending = list(prompt.tokens[cached:])  # tokens to evaluate next (prompt chunks, then feeds)
        self.prefilling = True
        self.max_tokens = max_tokens
        self.limit = max_tokens
        self.cancel = cancel
        self.on_piece = on_piece
        self.sampler = sampler
        self.constrained = constrained  # the grammar's chain: takes over once the thinking has closed
        self.grammar_step_s = 5.0  # longest one grammar-constrained sampling step may take (seconds)
        self.answering = not prompt.starts_thinking
        self.seen = ""
        self.pieces = PieceSplitter(prompt.starts_thinking)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.answer_at: Optional[int] = None  # where the first answer token sits in the sequence
        self.result = GenerationResult(reason="stop", prompt_tokens=len(prompt.tokens), cached_tokens=cached,
                                       backend="local")
        self.done = False

    def finish(self, reason: str) -> None:
        self.result.reason = reason  # type: ignore[assignment]
        self.done = True


class Batcher:
    """Owns the ``llama_batch`` and decodes open streams together."""

    def __init__(self, ctx: Any, model: Any, pool: SeqPool, n_batch: int, n_ctx_seq: int) -> None:
        import llama_cpp

        self._ll = llama_cpp
        self.ctx = ctx
        self.model = model
        self.pool = pool
        self.n_batch = n_batch
        self.n_ctx_seq = n_ctx_seq  # most tokens one conversation may hold ([llm] n_ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    def close(self) -> None:
        if self.batch is not None:
            self._ll.llama_batch_free(self.batch)
            self.batch = None

    # -- one llama_decode ------------------------------------------------------------------------

    def step(self, streams: list[Stream]) -> None:
        """Advance every stream that is not done by one decode; finished streams get ``done``."""
        batch, n, room = self.batch, 0, self.n_batch
        plan: list[tuple[Stream, int, bool]] = []  # stream, tokens added, logits wanted
        for st in streams:
            if st.done:
                continue
            if st.cancel.is_set():  # between prompt chunks, and before a feed is evaluated
                st.finish("cancelled")
                continue
            if st.prefilling:
                continue
            take = st.pending
            if not take or len(take) > room:
                continue
            n = self._add(st.seq, take, n, True)
            room -= len(take)
            plan.append((st, len(take), True))
        for st in streams:
            if st.done or not st.prefilling or room <= 0:
                continue
            take = st.pending[:room]
            last = len(take) == len(st.pending)
            n = self._add(st.seq, take, n, last)
            room -= len(take)
            plan.append((st, len(take), last))
        if not n:
            return
        batch.n_tokens = n
        rc = self._ll.llama_decode(self.ctx.ctx, batch)
        while rc == 1 and self.pool.evict_one():  # no room for the batch: drop idle sequences and retry
            rc = self._ll.llama_decode(self.ctx.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}" + (" (no room left in the KV cache)" if rc == 1 else ""))
        at = 0
        for st, count, logits in plan:
            st.seq.tokens += st.pending[:count]
            del st.pending[:count]
            at += count
            if logits:
                if st.prefilling:
                    st.prefilling = False
                    st.limit = min(st.max_tokens, self.n_ctx_seq - len(st.seq.tokens))
                self._next_token(st, at - 1)

    def _add(self, seq: Seq, tokens: list[int], n: int, logits_last: bool) -> int:
        batch, pos = self.batch, len(seq.tokens)
        for i, tok in enumerate(tokens):
            batch.token[n] = tok
            batch.pos[n] = pos + i
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.id
            batch.logits[n] = False
            n += 1
        if logits_last and tokens:
            batch.logits[n - 1] = True
        return n

    # -- one token of one stream -----------------------------------------------------------------

    def _next_token(self, st: Stream, index: int) -> None:
        ll, result = self._ll, st.result
        if result.completion_tokens >= st.limit:
            st.finish("length")
            return
        if st.constrained is not None and st.answering:
            began = time.monotonic()
            token = ll.llama_sampler_sample(st.constrained.sampler, self.ctx.ctx, index)
            took = time.monotonic() - began
            if took > st.grammar_step_s:
                result.message = (f"one token under the JSON schema's grammar took {took:.1f} s (limit "
                                  f"{st.grammar_step_s:g} s); simplify the schema")
                st.finish("error")
                return
        else:
            token = ll.llama_sampler_sample(st.sampler.sampler, self.ctx.ctx, index)
        if ll.llama_vocab_is_eog(self.model.vocab, token):
            st.finish("stop")
            return
        result.completion_tokens += 1
        text = st.decoder.decode(token_piece(self.model.vocab, token))
        piece = st.pieces.feed(text)
        if piece.answer and st.answer_at is None:
            st.answer_at = len(st.seq.tokens)  # this token is evaluated next, at this position
        inject = st.on_piece(piece)
        if inject:
            st.on_piece(st.pieces.inject(inject))
        if not st.answering:
            st.seen += text + (inject or "")
            st.answering, st.seen = CLOSE_TAG in st.seen, st.seen[-len(CLOSE_TAG):]
        feed = [token]
        if inject:
            feed += self.model.tokenize(inject.encode(), add_bos=False, special=True)
        if st.cancel.is_set():
            st.finish("cancelled")
            return
        if len(st.seq.tokens) + len(feed) > self.n_ctx_seq:
            st.finish("length")
            return
        st.pending = feed

    def end(self, st: Stream) -> GenerationResult:
        """The stream's last text (an incomplete character, what the splitter held back)."""
        tail = st.decoder.decode(b"", final=True)
        if tail:
            st.on_piece(st.pieces.feed(tail))
        st.on_piece(st.pieces.flush())
        return st.result
