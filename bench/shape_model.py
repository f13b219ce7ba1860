"""A same-shape stand-in for DeepSeek-R1-Distill-Qwen-1.5B, for benchmarks.

Same architecture and sizes as the real model (qwen2, 28 layers, hidden 1536, FFN 8960, 12 heads,
2 KV heads, vocab 151936, untied output), random F16 weights quantized to Q4_K_M with llama.cpp's
own quantizer: ~1.1 GB and the real model's cost per token. Its tokenizer is the real one: Qwen2's
BPE from llama.cpp's ``ggml-vocab-qwen2.gguf`` with DeepSeek-R1-Distill's special tokens and chat
template (``edgebot.testing.qwen2_vocab``), so prompts and histories have the real model's token
counts. Its text is noise (random tokens); its speed is real. Cached outside the repository
(``$EDGEBOT_BENCH_CACHE`` or ``~/.cache/edgebot/bench``); never commit it.

    python bench/shape_model.py            # make (or reuse) it and print its path (minutes on 2 cores)
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType

from edgebot.engine.chat_template import R1_DISTILL_CHAT_TEMPLATE
from edgebot.testing.qwen2_vocab import N_VOCAB, R1Vocab, load_r1_vocab

log = logging.getLogger(__name__)

N_LAYERS, N_EMBD, N_FF, N_HEAD, N_HEAD_KV = 28, 1536, 8960, 12, 2
CACHE = Path(os.environ.get("EDGEBOT_BENCH_CACHE", Path.home() / ".cache" / "edgebot" / "bench"))
NAME = "r1-distill-qwen-1.5b-shape-qwen2vocab-Q4_K_M.gguf"
"""(The name changed when the byte-level stand-in vocabulary gave way to the real one.)"""


def write_f16(path: Path, seed: int = 0) -> Path:
    """Write the random F16 model (~3.6 GB) at ``path``."""
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    vocab: R1Vocab = load_r1_vocab()
    kv = N_EMBD // N_HEAD * N_HEAD_KV
    w = GGUFWriter(str(path), "qwen2")
    w.add_name("r1-distill-qwen-1.5b-shape")
    w.add_file_type(LlamaFileType.MOSTLY_F16)
    w.add_context_length(131072)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.bos_id)
    w.add_eos_token_id(vocab.eos_id)
    w.add_pad_token_id(vocab.eos_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(R1_DISTILL_CHAT_TEMPLATE)
    w.add_tensor("token_embd.weight", rand(N_VOCAB, N_EMBD))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", rand(N_VOCAB, N_EMBD))
    for i in range(N_LAYERS):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(b + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(b + "attn_q.weight", rand(N_EMBD, N_EMBD))
        w.add_tensor(b + "attn_q.bias", np.zeros(N_EMBD, dtype=np.float32))
        w.add_tensor(b + "attn_k.weight", rand(kv, N_EMBD))
        w.add_tensor(b + "attn_k.bias", np.zeros(kv, dtype=np.float32))
        w.add_tensor(b + "attn_v.weight", rand(kv, N_EMBD))
        w.add_tensor(b + "attn_v.bias", np.zeros(kv, dtype=np.float32))
        w.add_tensor(b + "attn_output.weight", rand(N_EMBD, N_EMBD))
        w.add_tensor(b + "ffn_gate.weight", rand(N_FF, N_EMBD))
        w.add_tensor(b + "ffn_up.weight", rand(N_FF, N_EMBD))
        w.add_tensor(b + "ffn_down.weight", rand(N_EMBD, N_FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    return path


def ensure_shape_model(cache: Path = CACHE) -> Path:
    """The Q4_K_M model in ``cache``, made once (a few minutes on 2 cores)."""
    import llama_cpp

    out = cache / NAME
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    f16 = cache / "shape-f16.gguf.tmp"
    t0 = time.monotonic()
    log.info("writing random F16 weights to %s", f16)
    write_f16(f16)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 2
    tmp = cache / (NAME + ".tmp")
    log.info("quantizing to Q4_K_M")
    rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params)
    f16.unlink()
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with {rc}")
    tmp.rename(out)
    log.info("made %s (%.2f GB) in %.0f s", out, out.stat().st_size / 1e9, time.monotonic() - t0)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_shape_model())
    sys.exit(0)
