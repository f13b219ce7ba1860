"""Raw llama.cpp through llama-cpp-python's low-level API: N sequences decoded per ``llama_decode``.

The baseline for issue 14's continuous batching: what llama.cpp itself gives on this machine when
1, 2 or 4 sequences share one ``llama_decode`` (one token of each per call), with one sampler chain
per sequence (top-k 40, top-p 0.95, temperature 0.6), the same threads and batch size as edgebotd,
flash attention off (as edgebotd's ``Llama``). The KV cache is split between the sequences
(``kv_unified`` false, llama-server's layout), the faster of llama.cpp's two layouts for batched
decode here (docs/benchmarks.md); ``unified=True`` gives the shared one. Also the KV-cache bytes a
sequence holds (``llama_state_seq_get_size``).
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import llama_cpp


_QUIET = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
"""llama.cpp's log callback that drops everything (kept referenced for as long as the module lives)."""


@dataclass
class RawModel:
    """A model and a context with ``n_seq_max`` sequences in one unified KV cache."""

    model: ctypes.c_void_p
    ctx: ctypes.c_void_p
    vocab: ctypes.c_void_p
    n_seq_max: int
    batch: llama_cpp.llama_batch

    @classmethod
    def load(cls, path: str, n_ctx: int, threads: int, n_batch: int, n_seq_max: int = 4,
             unified: bool = False) -> "RawModel":
        """``n_ctx``: the whole cache (tokens); split evenly between the sequences unless ``unified``."""
        llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, n_seq_max
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = unified
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = llama_cpp.llama_init_from_model(model, cp)
        if not ctx:
            raise RuntimeError("llama_init_from_model failed")
        batch = llama_cpp.llama_batch_init(max(n_batch, n_seq_max), 0, n_seq_max)
        return cls(model, ctx, llama_cpp.llama_model_get_vocab(model), n_seq_max, batch)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

    def tokenize(self, text: str) -> list[int]:
        """``text`` (a rendered prompt, BOS included) with its control tokens parsed."""
        raw = text.encode()
        buf = (llama_cpp.llama_token * (len(raw) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, True)
        if n < 0:
            raise ValueError("tokenize buffer too small")
        return list(buf[:n])

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """Decode ``(token, pos, seq, wants_logits)`` items as one batch."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def prefill(self, seq: int, tokens: list[int], n_batch: int, start: int = 0) -> float:
        """Evaluate ``tokens`` into ``seq`` from position ``start``; returns seconds."""
        t0 = time.perf_counter()
        for i in range(0, len(tokens), n_batch):
            chunk = tokens[i:i + n_batch]
            last = i + len(chunk) == len(tokens)
            self._decode([(t, start + i + j, seq, last and j == len(chunk) - 1) for j, t in enumerate(chunk)])
        return time.perf_counter() - t0

    def seq_state_bytes(self, seq: int) -> int:
        """Bytes of ``seq``'s state (its KV cells) as ``llama_state_seq_get_data`` would copy them."""
        return int(llama_cpp.llama_state_seq_get_size(self.ctx, seq))


def sampler(seed: int) -> ctypes.c_void_p:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for s in (llama_cpp.llama_sampler_init_top_k(40), llama_cpp.llama_sampler_init_top_p(0.95, 1),
              llama_cpp.llama_sampler_init_temp(0.6), llama_cpp.llama_sampler_init_dist(seed)):
        llama_cpp.llama_sampler_chain_add(chain, s)
    return chain


def batched_decode(rm: RawModel, prompts: list[list[int]], steps: int, n_batch: int) -> tuple[float, list[float]]:
    """Prefill one prompt per sequence, then ``steps`` calls of ``llama_decode`` with one token of each.

    Returns (aggregate decode tokens/s over the steps, prefill seconds of each prompt).
    """
    n = len(prompts)
    rm.clear()
    prefill = [rm.prefill(seq, p[:-1], n_batch) for seq, p in enumerate(prompts)]
    samplers = [sampler(1000 + seq) for seq in range(n)]
    # each prompt's last token goes into the first (untimed) step, whose logits give the first tokens
    rm._decode([(p[-1], len(p) - 1, seq, True) for seq, p in enumerate(prompts)])
    nxt = [llama_cpp.llama_sampler_sample(samplers[s], rm.ctx, s) for s in range(n)]
    pos = [len(p) for p in prompts]
    t0 = time.perf_counter()
    for _ in range(steps):
        rm._decode([(nxt[s], pos[s], s, True) for s in range(n)])
        for s in range(n):
            nxt[s] = llama_cpp.llama_sampler_sample(samplers[s], rm.ctx, s)
            pos[s] += 1
    elapsed = time.perf_counter() - t0
    for s in samplers:
        llama_cpp.llama_sampler_free(s)
    return n * steps / elapsed, prefill
