"""A tiny deterministic qwen2 GGUF that "generates" a fixed script, for real llama.cpp tests.

A genuine ``qwen2`` network that llama.cpp loads and runs, with weights making it a lookup
table: attention outputs and FFN down projections are zero, so the residual stream is the
current token's embedding; embeddings are one-hot for the tokens that have a successor and
``output.weight`` gives that successor a logit of about +30 (all others 0). At any sane
temperature/top-p, after the R1 generation prompt (``...<｜Assistant｜><think>\\n``) it emits the
``think`` pieces, the ``close`` pieces (``</think>\\n\\n``), the ``answer`` pieces, then EOS (or
loops over the answer). Evaluating the ``</think>`` special token also leads to the answer.

The vocabulary is byte-level GPT-2/Qwen2 BPE (256 byte tokens, one merge, one token per piece)
plus the DeepSeek-R1-Distill special tokens; the GGUF carries the real R1-Distill chat template.
With ``vocab=`` (``edgebot.testing.qwen2_vocab``) it is instead the real DeepSeek-R1-Distill-Qwen
vocabulary (Qwen2's 151,936-token BPE): prompts and histories then have the real model's token
counts, each script piece must be one token of that vocabulary (``REAL_VOCAB_SCRIPT``), and the two
151,936-row matrices are stored as Q4_0 (exact for one-hot rows) to keep the file small.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType, quants

from edgebot.engine.chat_template import (ASSISTANT_TEXT, BOS_TEXT, EOS_TEXT, R1_DISTILL_CHAT_TEMPLATE,
                                          THINK_CLOSE, THINK_OPEN, USER_TEXT)
from edgebot.testing.qwen2_vocab import R1Vocab, VocabMissing, find_vocab, load_r1_vocab

log = logging.getLogger(__name__)

MODEL_NAME = "edgebot-script-test"
N_HEAD = 4
N_HEAD_KV = 2
ROPE_FREQ_BASE = 10000.0
RMS_EPS = 1e-6
TARGET_LOGIT = 30.0
"""Logit (nats, before temperature) given to a token's scripted successor; all others get 0."""
MERGE = ("Ġ", "t")
"""The single BPE merge (llama.cpp refuses a BPE vocabulary without merges)."""

SPECIAL_TOKENS: tuple[tuple[str, TokenType], ...] = (
    # Types as llama.cpp's convert_hf_to_gguf.py assigns them for DeepSeek-R1-Distill-Qwen:
    # BOS/EOS are special in tokenizer_config.json -> CONTROL; <｜User｜>/<｜Assistant｜> are
    # "special": false there but look special (<｜...｜>) -> CONTROL; <think>/</think> are
    # "special": false and do not look special -> USER_DEFINED.
    (BOS_TEXT, TokenType.CONTROL),
    (EOS_TEXT, TokenType.CONTROL),
    (USER_TEXT, TokenType.CONTROL),
    (ASSISTANT_TEXT, TokenType.CONTROL),
    (THINK_OPEN, TokenType.USER_DEFINED),
    (THINK_CLOSE, TokenType.USER_DEFINED),
)


@dataclass(frozen=True)
class Script:
    """What the model generates after the R1 generation prompt ``<｜Assistant｜><think>\\n``.

    Each piece becomes one token. All pieces must be distinct (the model is first-order: a
    token has exactly one successor).
    """

    think: tuple[str, ...]
    """Thinking pieces, generated right after the prompt's trailing ``<think>\\n``."""
    close: tuple[str, ...]
    """Pieces spelling ``</think>\\n\\n``, split across normal tokens, e.g. ``("</th", "ink>\\n\\n")``."""
    answer: tuple[str, ...]
    """Answer pieces; the last one is followed by EOS (or, with ``loop``, by ``answer[0]``)."""
    loop: bool = False
    """True: never emit EOS, cycle over the answer pieces forever (for long answers)."""
    after_close: tuple[str, ...] = ()
    """Pieces generated after the ``</think>`` *special token* (a think budget spent or 0), then EOS;
    empty = that token leads to the answer. Lets one model give a second, different reply."""

    def __post_init__(self) -> None:
        if not self.answer:
            raise ValueError("a Script needs at least one answer piece")
        if any(not piece for piece in self.pieces):
            raise ValueError("script pieces must be non-empty strings")

    @property
    def pieces(self) -> tuple[str, ...]:
        """All pieces in generation order (think, close, answer)."""
        return self.think + self.close + self.answer + self.after_close

    @property
    def think_text(self) -> str:
        """The thinking text (without the closing tag)."""
        return "".join(self.think)

    @property
    def close_text(self) -> str:
        """The text of the closing pieces, normally ``"</think>\\n\\n"``."""
        return "".join(self.close)

    @property
    def answer_text(self) -> str:
        """One pass over the answer pieces."""
        return "".join(self.answer)


DEFAULT_SCRIPT = Script(
    think=("Okay", ", the user", " asks what", " 2+2", " is.", " Two", " plus", " two", " makes", " four."),
    close=("</th", "ink>\n\n"),
    answer=("The", " answer", " is", " 4", "."),
)


REAL_VOCAB_SCRIPT = Script(
    think=("Okay", ",", " the", " user", " asks", " what", " two", " plus", " makes", "."),
    close=("</", "think", ">\n\n"),
    answer=("The", " answer", " is", " four", "!"),
)
"""The default script spelled in single tokens of the real Qwen2 vocabulary (for ``vocab=``)."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-character table (used by Qwen2's byte-level BPE), in vocab order."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in bs]  # unprintable bytes map to U+0100...
    return {b: chr(c) for b, c in zip(bs + rest, bs + [256 + i for i in range(len(rest))])}


def byte_level(text: str) -> str:
    """Byte-level encode ``text`` as it appears in the vocabulary (``" answer"`` -> ``"Ġanswer"``)."""
    return "".join(map(bytes_to_unicode().__getitem__, text.encode("utf-8")))


def _real_vocab(script: Script, vocab: R1Vocab) -> tuple[list[str], list[int], list[int]]:
    """Return (token texts, token types, token id of each script piece) over the real vocabulary."""
    special_ids = {vocab.bos_id, vocab.eos_id} | {i for i, t in enumerate(vocab.types) if t == TokenType.CONTROL}
    piece_ids: list[int] = []
    for piece in script.pieces:
        token_id = vocab.id_of(byte_level(piece))
        if token_id is None or token_id in special_ids or vocab.tokens[token_id] in (THINK_OPEN, THINK_CLOSE):
            raise ValueError(f"script piece {piece!r} is not one normal token of the Qwen2 vocabulary: "
                             f"split it into pieces that are (e.g. ' answer', '4', '.')")
        piece_ids.append(token_id)
    return vocab.tokens, vocab.types, piece_ids


def _build_vocab(script: Script) -> tuple[list[str], list[int], list[int]]:
    """Return (token texts, token types, token id of each script piece)."""
    tokens = list(bytes_to_unicode().values()) + ["".join(MERGE)]
    types = [int(TokenType.NORMAL)] * len(tokens)
    ids = {text: i for i, text in enumerate(tokens)}
    special_texts = {text for text, _ in SPECIAL_TOKENS}
    piece_ids: list[int] = []
    for piece in script.pieces:
        if piece in special_texts:
            raise ValueError(f"script piece {piece!r} duplicates a special token")
        text = byte_level(piece)
        if text not in ids:  # existing byte/merge tokens are reused (conflicts checked later)
            ids[text] = len(tokens)
            tokens.append(text)
            types.append(int(TokenType.NORMAL))
        piece_ids.append(ids[text])
    for text, toktype in SPECIAL_TOKENS:
        tokens.append(text)
        types.append(int(toktype))
    return tokens, types, piece_ids


def _successors(script: Script, tokens: list[str], piece_ids: list[int]) -> dict[int, int]:
    """Map each token id that has a scripted successor to that successor's id."""
    succ: dict[int, int] = {}

    def link(a: int, b: int) -> None:
        if succ.setdefault(a, b) != b:
            raise ValueError(f"token {tokens[a]!r} would need two successors ({tokens[succ[a]]!r}, {tokens[b]!r})")

    eos_id, close_id = tokens.index(EOS_TEXT), tokens.index(THINK_CLOSE)
    answer0 = piece_ids[len(script.think) + len(script.close)]
    extra = piece_ids[len(piece_ids) - len(script.after_close):] if script.after_close else []
    main = piece_ids[:len(piece_ids) - len(extra)]
    link(tokens.index(byte_level("\n")), main[0])  # the prompt ends with "<think>\n"
    for a, b in zip(main, main[1:]):
        link(a, b)
    link(main[-1], answer0 if script.loop else eos_id)
    if extra:  # an injected </think> leads to the after_close reply
        for a, b in zip(extra, extra[1:]):
            link(a, b)
        link(extra[-1], eos_id)
        link(close_id, extra[0])
    else:
        link(close_id, answer0)  # an injected </think> leads to the answer
    return succ


def write_script_model(path: Path, script: Script = DEFAULT_SCRIPT, *, n_embd: int | None = None, n_layers: int = 1,
                       n_ff: int = 128, context_length: int = 4096, vocab: R1Vocab | Path | None = None) -> Path:
    """Write the script model as a qwen2 GGUF at ``path`` and return ``path``.

    ``n_embd`` (hidden size, must be a multiple of 8 and at least the number of tokens with a
    successor; default 64, or with ``vocab`` the smallest multiple of 32 that fits), ``n_layers``
    (blocks) and ``n_ff`` (FFN width) only change the file size (about
    ``4 * n_layers * (2.5 * n_embd**2 + 3 * n_embd * n_ff)`` bytes plus the two vocabulary matrices)
    and the compute per token, not the output. ``context_length`` (tokens) is the trained context
    written to the GGUF. ``vocab`` (an ``R1Vocab`` or the path of ``ggml-vocab-qwen2.gguf``): use
    the real DeepSeek-R1-Distill-Qwen vocabulary (with n_embd 32: ~12 MB, most of it the
    tokenizer's 151,936 tokens and 151,387 merges); all tensors are F32 except, then, the
    embedding and output matrices (Q4_0).
    """
    path = Path(path)
    real = load_r1_vocab(vocab) if isinstance(vocab, (str, Path)) else vocab
    if len(set(script.pieces)) != len(script.pieces):
        raise ValueError("script pieces must be distinct (each token can have only one successor)")
    tokens, types, piece_ids = _real_vocab(script, real) if real else _build_vocab(script)
    succ = _successors(script, tokens, piece_ids)
    if n_embd is None:
        n_embd = -(-len(succ) // 32) * 32 if real else 64
    if n_embd % (2 * N_HEAD) or n_layers < 1 or n_ff < 1 or (real and n_embd % 32):
        raise ValueError("n_embd must be a multiple of 8 (of 32 with vocab=); n_layers and n_ff must be >= 1")
    if len(succ) > n_embd:
        raise ValueError(f"n_embd={n_embd} is too small: {len(succ)} tokens need a one-hot embedding")
    n_vocab = len(tokens)
    n_embd_kv = n_embd // N_HEAD * N_HEAD_KV
    f32 = np.float32

    # numpy shapes are the reverse of ggml's ne: ne {n_embd, n_vocab} is an (n_vocab, n_embd) array.
    token_embd = np.zeros((n_vocab, n_embd), dtype=f32)
    output = np.zeros((n_vocab, n_embd), dtype=f32)
    # The final RMSNorm turns a one-hot x into x / sqrt(1/n_embd + eps); undo that scale.
    weight = TARGET_LOGIT * math.sqrt(1.0 / n_embd + RMS_EPS)
    for dim, (tok, nxt) in enumerate(sorted(succ.items())):
        token_embd[tok, dim] = 1.0
        output[nxt, dim] = weight

    writer = GGUFWriter(str(path), "qwen2")
    writer.add_name(MODEL_NAME)
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(real.merges if real else [" ".join(MERGE)])
    writer.add_bos_token_id(real.bos_id if real else tokens.index(BOS_TEXT))
    writer.add_eos_token_id(real.eos_id if real else tokens.index(EOS_TEXT))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(R1_DISTILL_CHAT_TEMPLATE)

    for name, matrix in (("token_embd.weight", token_embd), ("output.weight", output)):
        if real:  # 0.5625 bytes a weight instead of 4; one value per 32-block is exact in Q4_0
            q4 = GGMLQuantizationType.Q4_0
            writer.add_tensor(name, quants.quantize(matrix, q4), raw_dtype=q4)
        else:
            writer.add_tensor(name, matrix)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=f32))
    # q/k/v (and their biases, needed by older llama.cpp) and ffn gate/up may be anything: zero.
    # np.zeros pages are only touched when written, so even big models cost little memory.
    zeros = {"attn_q.weight": (n_embd, n_embd), "attn_q.bias": (n_embd,), "attn_k.weight": (n_embd_kv, n_embd),
             "attn_k.bias": (n_embd_kv,), "attn_v.weight": (n_embd_kv, n_embd), "attn_v.bias": (n_embd_kv,),
             "attn_output.weight": (n_embd, n_embd), "ffn_gate.weight": (n_ff, n_embd),
             "ffn_up.weight": (n_ff, n_embd), "ffn_down.weight": (n_embd, n_ff)}
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=f32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=f32))
        for name, shape in zeros.items():
            writer.add_tensor(f"blk.{i}.{name}", np.zeros(shape, dtype=f32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.info("wrote script model %s (n_vocab=%d, n_embd=%d, n_layers=%d, n_ff=%d, loop=%s, %d bytes)",
             path, n_vocab, n_embd, n_layers, n_ff, script.loop, path.stat().st_size)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m edgebot.testing.script_model OUT.gguf [--loop] [--layers N] [--embd N] [--ff N] [--real-vocab]``."""
    parser = argparse.ArgumentParser(prog="python -m edgebot.testing.script_model",
                                     description="Write the tiny deterministic R1-style script model (GGUF).")
    parser.add_argument("out", type=Path, help="output .gguf path")
    parser.add_argument("--loop", action="store_true", help="repeat the answer forever instead of stopping")
    parser.add_argument("--layers", type=int, default=1, help="number of blocks (default 1)")
    parser.add_argument("--embd", type=int, default=None,
                        help="hidden size, multiple of 8 (default 64; with --real-vocab the smallest multiple of 32)")
    parser.add_argument("--ff", type=int, default=128, help="FFN width (default 128)")
    parser.add_argument("--real-vocab", action="store_true",
                        help="the real DeepSeek-R1-Distill-Qwen vocabulary (edgebot.testing.qwen2_vocab)")
    args = parser.parse_args(argv)
    script = replace(REAL_VOCAB_SCRIPT if args.real_vocab else DEFAULT_SCRIPT, loop=args.loop)
    try:
        vocab = find_vocab() if args.real_vocab else None
        out = write_script_model(args.out, script, n_embd=args.embd, n_layers=args.layers, n_ff=args.ff, vocab=vocab)
    except (ValueError, VocabMissing) as exc:
        parser.error(str(exc))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
