"""Real llama.cpp runs of the tiny deterministic script model (edgebot.testing.script_model)."""

from __future__ import annotations

from dataclasses import replace
from itertools import cycle, islice
from pathlib import Path

import pytest

from edgebot.engine.chat_template import (
    ASSISTANT_TEXT,
    BOS_TEXT,
    EOS_TEXT,
    R1_DISTILL_CHAT_TEMPLATE,
    THINK_CLOSE,
    THINK_OPEN,
    USER_TEXT,
)
from edgebot.testing.script_model import DEFAULT_SCRIPT, Script, write_script_model

llama_cpp = pytest.importorskip("llama_cpp")
from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: E402

SAMPLING = {"temp": 0.6, "top_p": 0.95}
QUESTION = [{"role": "user", "content": "What is 2+2?"}]
EXPECTED_PROMPT = f"{BOS_TEXT}{USER_TEXT}What is 2+2?{ASSISTANT_TEXT}{THINK_OPEN}\n"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_script_model(tmp_path_factory.mktemp("script") / "script.gguf")


@pytest.fixture(scope="module")
def loop_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_script_model(tmp_path_factory.mktemp("loop") / "loop.gguf", replace(DEFAULT_SCRIPT, loop=True))


def _load(path: Path, seed: int = 1234) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(path), n_ctx=512, seed=seed, verbose=False)


def _prompt_tokens(llm: llama_cpp.Llama) -> list[int]:
    """Render QUESTION with the GGUF's own chat template and tokenize it like the real model's prompt."""
    template = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(template, eos_token=EOS_TEXT, bos_token=BOS_TEXT)
    prompt = formatter(messages=QUESTION).prompt
    assert prompt == EXPECTED_PROMPT
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    assert tokens[0] == llm.token_bos() and tokens.count(llm.token_bos()) == 1
    return tokens


def _single(llm: llama_cpp.Llama, text: str) -> int:
    (token,) = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    return token


def _generate(llm: llama_cpp.Llama, tokens: list[int], limit: int) -> list[int]:
    out: list[int] = []
    for token in llm.generate(tokens, **SAMPLING):
        if token == llm.token_eos():
            break
        out.append(token)
        if len(out) >= limit:
            break
    return out


def test_gguf_metadata(model_path: Path) -> None:
    llm = _load(model_path)
    assert llm.metadata["general.architecture"] == "qwen2"
    assert llm.metadata["general.name"] == "edgebot-script-test"
    assert llm.metadata["tokenizer.chat_template"] == R1_DISTILL_CHAT_TEMPLATE
    assert llm.detokenize([llm.token_bos()], special=True).decode() == BOS_TEXT
    assert llm.detokenize([llm.token_eos()], special=True).decode() == EOS_TEXT
    assert llama_cpp.llama_vocab_is_eog(llm._model.vocab, llm.token_eos())


@pytest.mark.parametrize("seed", [1234, 987654321])
def test_generates_script_then_eos(model_path: Path, seed: int) -> None:
    llm = _load(model_path, seed)
    prompt = _prompt_tokens(llm)
    assert prompt[-1] == _single(llm, "\n")
    out = _generate(llm, prompt, limit=100)
    text = llm.detokenize(out).decode("utf-8")
    assert text == DEFAULT_SCRIPT.think_text + "</think>\n\n" + DEFAULT_SCRIPT.answer_text
    assert text == "Okay, the user asks what 2+2 is. Two plus two makes four.</think>\n\nThe answer is 4."
    assert len(out) == len(DEFAULT_SCRIPT.pieces)  # one token per piece, then EOS
    assert [llm.detokenize([t]).decode("utf-8") for t in out] == list(DEFAULT_SCRIPT.pieces)


def test_loop_model_never_stops(loop_model_path: Path) -> None:
    llm = _load(loop_model_path)
    out = _generate(llm, _prompt_tokens(llm), limit=300)
    assert len(out) == 300
    head = DEFAULT_SCRIPT.think + DEFAULT_SCRIPT.close
    expected = list(head) + list(islice(cycle(DEFAULT_SCRIPT.answer), 300 - len(head)))
    assert [llm.detokenize([t]).decode("utf-8") for t in out] == expected


def test_tokenizer_facts(model_path: Path) -> None:
    llm = _load(model_path)
    user, assistant = _single(llm, USER_TEXT), _single(llm, ASSISTANT_TEXT)
    think_open, think_close = _single(llm, THINK_OPEN), _single(llm, THINK_CLOSE)

    # <｜User｜> / <｜Assistant｜> are CONTROL tokens (as convert_hf_to_gguf.py types them for
    # R1-Distill): with special=False their text is tokenized as plain bytes, not as the token
    # (had they been USER_DEFINED, llama.cpp would match them even with special=False)...
    plain = llm.tokenize(USER_TEXT.encode("utf-8"), add_bos=False, special=False)
    assert len(plain) > 1 and user not in plain
    assert llm.detokenize(plain).decode("utf-8") == USER_TEXT
    assert assistant not in llm.tokenize(ASSISTANT_TEXT.encode("utf-8"), add_bos=False, special=False)
    # ...and detokenize(special=False) drops CONTROL tokens entirely.
    assert llm.detokenize([llm.token_bos(), user, assistant], special=False) == b""

    # <think> / </think> are USER_DEFINED: llama.cpp matches them even with special=False, so
    # "user text is text" needs the engine to guard these strings itself, and they are rendered
    # as text by detokenize(special=False).
    assert llm.tokenize(THINK_OPEN.encode(), add_bos=False, special=False) == [think_open]
    assert llm.tokenize(THINK_CLOSE.encode(), add_bos=False, special=False) == [think_close]
    assert llm.tokenize(b"a</think>b", add_bos=False, special=False)[1] == think_close
    assert llm.detokenize([think_close], special=False) == b"</think>"
    assert llm.detokenize([think_open], special=False) == b"<think>"


def test_injected_think_close_leads_to_answer(model_path: Path) -> None:
    llm = _load(model_path)
    llm.eval(_prompt_tokens(llm))
    out: list[int] = []
    for _ in range(3):
        token = llm.sample(**SAMPLING)
        out.append(token)
        llm.eval([token])
    assert llm.detokenize(out).decode("utf-8") == "".join(DEFAULT_SCRIPT.think[:3])
    assert llm.detokenize([llm.sample(**SAMPLING)]).decode("utf-8") == DEFAULT_SCRIPT.think[3]

    llm.eval([_single(llm, THINK_CLOSE)])  # instead of the sampled 4th think piece
    answer: list[int] = []
    while (token := llm.sample(**SAMPLING)) != llm.token_eos():
        answer.append(token)
        assert len(answer) <= 20, "no EOS after the answer"
        llm.eval([token])
    assert [llm.detokenize([t]).decode("utf-8") for t in answer] == list(DEFAULT_SCRIPT.answer)


def test_script_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct"):
        write_script_model(tmp_path / "dup.gguf", Script(think=("a", "b", "a"), close=("</think>\n\n",), answer=("x",)))
    with pytest.raises(ValueError, match="too small"):
        write_script_model(tmp_path / "small.gguf", DEFAULT_SCRIPT, n_embd=16)
    with pytest.raises(ValueError, match="two successors"):  # "\n" already leads to think[0]
        write_script_model(tmp_path / "nl.gguf", Script(think=("a", "\n", "b"), close=("</th", "ink>"), answer=("x",)))
    with pytest.raises(ValueError, match="special token"):
        write_script_model(tmp_path / "sp.gguf", Script(think=("a",), close=("</think>",), answer=("x",)))
    with pytest.raises(ValueError):
        Script(think=("a",), close=("b",), answer=())
    # A piece equal to a byte token reuses it when that causes no conflict ("!" is byte token 0).
    tiny = write_script_model(tmp_path / "tiny.gguf", Script(think=("hm",), close=("</th", "ink>\n\n"), answer=("!",)))
    llm = _load(tiny)
    assert llm.detokenize(_generate(llm, _prompt_tokens(llm), limit=10)) == b"hm</think>\n\n!"
