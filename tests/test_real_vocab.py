"""The real-tokenizer script model: DeepSeek-R1-Distill-Qwen's vocabulary (Qwen2 BPE) around a scripted
network, for tests where token counts matter. Real llama.cpp, real edgebotd."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import TokenType

from conftest import Daemon
from edgebot.engine.chat_template import ASSISTANT_TEXT, BOS_TEXT, EOS_TEXT, THINK_CLOSE, THINK_OPEN, USER_TEXT
from edgebot.testing.qwen2_vocab import EOT_TEXT, R1_SPECIAL, load_r1_vocab
from edgebot.testing.script_model import REAL_VOCAB_SCRIPT, Script, write_script_model

llama_cpp = pytest.importorskip("llama_cpp")

SENTENCE = "The quick brown fox jumps over the lazy dog."
SENTENCE_TOKENS = 10
"""Qwen2's BPE: one token per word and one for the full stop (the byte-level test vocabulary needs 43)."""
REFERENCE = {
    # From llama.cpp's own tokenizer test data for this file (models/ggml-vocab-qwen2.gguf.inp/.out,
    # produced with the Hugging Face tokenizer of Qwen2).
    "Hello, world!": [9707, 11, 1879, 0],
    " this is 🦙.cpp": [419, 374, 11162, 99, 247, 13, 10821],
    "ied 4 ½ months": [1122, 220, 19, 220, 26062, 3951],
    "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～": [
        9707, 11, 379, 64848, 0, 2585, 525, 498, 26525, 223, 937, 104100, 18493, 22377, 99257, 16, 18, 16, 19, 16,
        20, 16, 35727, 21216],
}


def _vocab_only(path: Path) -> "llama_cpp.Llama":
    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


def _tokens(llm: "llama_cpp.Llama", text: str, special: bool = False) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def test_english_sentence_has_the_real_qwen2_count(real_script_model: Path, script_model: Path) -> None:
    real = _vocab_only(real_script_model)
    assert len(_tokens(real, SENTENCE)) == SENTENCE_TOKENS
    for text, ids in REFERENCE.items():
        assert _tokens(real, text) == ids, text
    # the byte-level test vocabulary: one token per byte, but " t" (its one merge) in " the"
    assert len(_tokens(_vocab_only(script_model), SENTENCE)) == len(SENTENCE.encode()) - 1 == 43


def test_r1_special_tokens_and_prompt(real_script_model: Path) -> None:
    llm = _vocab_only(real_script_model)
    for token_id, text, _ in R1_SPECIAL:
        assert _tokens(llm, text, special=True) == [token_id]
        assert llm.detokenize([token_id], special=True).decode() == text
    assert (llm.token_bos(), llm.token_eos()) == (151646, 151643)
    prompt = f"{BOS_TEXT}{USER_TEXT}{SENTENCE}{ASSISTANT_TEXT}{THINK_OPEN}\n"
    ids = _tokens(llm, prompt, special=True)
    assert ids == [151646, 151644, *_tokens(llm, SENTENCE), 151645, 151648, 198]
    # without special=True the CONTROL tokens are text; llama.cpp always matches USER_DEFINED ones
    # (<think>, </think>), as with the real model's GGUF, so edgebot's prompt code keeps user text apart itself
    control = {i for i, _, t in R1_SPECIAL if t == TokenType.CONTROL}
    assert not set(_tokens(llm, f"{USER_TEXT}{EOS_TEXT}{BOS_TEXT}{EOT_TEXT}{ASSISTANT_TEXT}")) & control
    assert _tokens(llm, THINK_CLOSE) == [151649]


def test_answers_its_exact_script(real_script_model: Path) -> None:
    llm = llama_cpp.Llama(str(real_script_model), n_ctx=256, seed=7, verbose=False)
    prompt = _tokens(llm, f"{BOS_TEXT}{USER_TEXT}What is two plus two?{ASSISTANT_TEXT}{THINK_OPEN}\n", special=True)
    out: list[str] = []
    for token in llm.generate(prompt, temp=0.6, top_p=0.95):
        if token == llm.token_eos():
            break
        out.append(llm.detokenize([token]).decode())
        assert len(out) <= len(REAL_VOCAB_SCRIPT.pieces), out
    assert tuple(out) == REAL_VOCAB_SCRIPT.pieces


def test_edgebotd_answers_the_script_with_real_prompt_counts(real_script_model: Path, daemon_factory) -> None:
    daemon: Daemon = daemon_factory(real_script_model)
    conn = daemon.connect()
    text, end = conn.answer("q1", SENTENCE)
    assert text == REAL_VOCAB_SCRIPT.answer_text
    stats = end["data"]["stats"]
    # BOS, <｜User｜>, the sentence, <｜Assistant｜>, <think>, "\n"
    assert stats["prompt_tokens"] == SENTENCE_TOKENS + 5
    assert stats["completion_tokens"] == len(REAL_VOCAB_SCRIPT.pieces)  # EOS not counted
    conn.close()


def test_small_file_and_clear_errors(real_script_model: Path, qwen2_vocab: Path, tmp_path: Path) -> None:
    assert real_script_model.stat().st_size < 16_000_000  # the two 151,936-row matrices are Q4_0
    vocab = load_r1_vocab(qwen2_vocab)
    bad = Script(think=("Okay",), close=("</", "think", ">\n\n"), answer=("The answer is four.",))
    with pytest.raises(ValueError, match="not one normal token"):
        write_script_model(tmp_path / "bad.gguf", bad, vocab=vocab)
    special = Script(think=("Okay",), close=("</", "think", ">\n\n"), answer=(EOT_TEXT,))
    with pytest.raises(ValueError, match="not one normal token"):
        write_script_model(tmp_path / "bad.gguf", special, vocab=vocab)


def test_an_answer_with_characters_split_across_tokens_is_reused_as_generated(real_script_model: Path) -> None:
    """Qwen's byte-level BPE spells an emoji or a rare CJK character in two or three tokens, none of them
    text alone. The answer's tokens must still be offered for the next prompt (else the history's answer
    is tokenized again and read again), with the text decoded from all the bytes together."""
    from edgebot.engine.backend import GenerationResult
    from edgebot.engine.backends.llama import LlamaBackend

    backend = LlamaBackend(str(real_script_model), n_ctx=256)
    backend.load()
    try:
        text = "Sure 😁 我想在apple工作 🦙!"
        tokens = backend.tokenize_text(text)
        assert {26525, 223} <= set(tokens)  # 😁 is two tokens (llama.cpp's own Qwen2 reference)
        blank = backend.tokenize_text("\n\n")
        result = GenerationResult(reason="stop")
        backend._answer_tokens(result, blank + tokens + blank)
        assert result.answer_tokens == tuple(tokens)
        assert result.answer_text == text
    finally:
        backend.close()
