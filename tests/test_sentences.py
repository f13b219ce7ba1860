"""Cutting streamed answers into sentences and cleaning them for speech (pure text, no audio)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebot.bridges.voice.sentences import SentenceCutter, clean_for_speech, cut_text, speakable_sentences


@pytest.mark.parametrize("text, expected", [
    ("Hello there. How are you? I'm fine!", ["Hello there.", "How are you?", "I'm fine!"]),
    ("Pi is 3.14 and e is 2.71. Next.", ["Pi is 3.14 and e is 2.71.", "Next."]),
    ("See e.g. this one. Then stop.", ["See e.g. this one.", "Then stop."]),
    ('He said "Stop." Then left.', ['He said "Stop."', "Then left."]),
    ("Wait... what? Really?!", ["Wait...", "what?", "Really?!"]),
    ("你好。今天天气很好！你呢？", ["你好。", "今天天气很好！", "你呢？"]),
    ("안녕하세요. 오늘 날씨가 좋네요!", ["안녕하세요.", "오늘 날씨가 좋네요!"]),
    ("こんにちは。元気ですか？", ["こんにちは。", "元気ですか？"]),
    ("First line\nSecond line", ["First line", "Second line"]),
])
def test_sentences_end_at_latin_and_cjk_punctuation_and_newlines(text: str, expected: list[str]) -> None:
    assert cut_text(text) == expected


def test_a_sentence_is_released_as_soon_as_it_is_certain() -> None:
    cutter = SentenceCutter()
    assert cutter.feed("The answer is 4") == []
    assert cutter.feed(".") == []  # "4." could still become "4.5"
    assert cutter.feed(" And") == ["The answer is 4."]
    assert cutter.feed("你好。") == []  # a closing quote may follow
    assert cutter.feed("再") == ["And你好。"]
    assert cutter.flush() == ["再"]


def test_a_long_sentence_without_punctuation_is_cut_at_a_clause_or_word() -> None:
    cutter = SentenceCutter(max_chars=60)
    clause = "this part runs on, and on without a stop " * 4
    out = cutter.feed(clause)
    assert out and all(len(s) <= 60 for s in out)
    assert out[0].endswith(",")  # the clause mark is preferred over a plain space
    words = SentenceCutter(max_chars=60).feed("word " * 40)
    assert words and all(s.split() == ["word"] * len(s.split()) for s in words)  # never mid-word
    cjk = SentenceCutter(max_chars=60).feed("没有标点符号的中文句子" * 10)
    assert cjk and all(len(s) == 60 for s in cjk)  # no boundary at all: cut hard, never wait


def test_code_blocks_are_dropped_even_when_the_fence_arrives_in_pieces() -> None:
    text = "Here is code:\n```python\nprint('hi. there')\nx = 1\n```\nThat is all."
    pieces = ["Here is code:\n`", "``py", "thon\nprint('hi.", " there')\nx = 1\n`", "``\nThat is all."]
    assert speakable_sentences(pieces) == ["Here is code:", "That is all."]
    assert speakable_sentences([text]) == ["Here is code:", "That is all."]
    assert speakable_sentences(["Unclosed:\n```\ncode forever"]) == ["Unclosed:"]


@pytest.mark.parametrize("raw, spoken", [
    (r"\boxed{4}", "4"),
    (r"The answer is $\boxed{42}$.", "The answer is 42."),
    (r"\[ \frac{1}{2} \times 6 = 3 \]", "1 over 2 times 6 = 3"),
    (r"$x^2 + \sqrt{16}$", "x squared + the square root of 16"),
    (r"\(\text{speed} = \dfrac{d}{t}\)", "speed = d over t"),
    ("**Final Answer**", "Final Answer"),
    ("## Steps", "Steps"),
    ("- a *bulleted* point", "a bulleted point"),
    ("1. First item", "First item"),
    ("> quoted", "quoted"),
    ("Use `pip install x` now.", "Use pip install x now."),
    ("Read [the docs](https://example.com/docs) today.", "Read the docs today."),
    ("Visit https://example.com/a.b?c=d for more.", "Visit for more."),
    ("snake_case stays, _emphasis_ goes", "snake_case stays, emphasis goes"),
    ("Great! 😀", "Great!"),
    ("<br>line</br>", "line"),
    ("---", ""),
    (r"\[", ""),
    ("```", ""),
    ("| a | b |", "a b"),
])
def test_cleaning_keeps_what_is_said_and_drops_what_is_markup(raw: str, spoken: str) -> None:
    assert clean_for_speech(raw) == spoken


def test_an_r1_math_answer_reads_naturally() -> None:
    answer = ("To find 2 + 2, add the numbers.\n\n**Final Answer**\n\\[\n\\boxed{4}\n\\]")
    pieces = [answer[i:i + 3] for i in range(0, len(answer), 3)]
    assert speakable_sentences(pieces) == ["To find 2 + 2, add the numbers.", "Final Answer", "4"]


text_alphabet = st.sampled_from(list("abc XYZ.,!?;:\n。！？，、你好`*#$\\{}[]()1234")
                                + ["```", "http://x.y/z", " e.g. "])


@settings(max_examples=400, deadline=None)
@given(st.lists(text_alphabet, max_size=240), st.lists(st.integers(1, 7), min_size=1, max_size=40))
def test_streamed_pieces_give_the_same_sentences_as_the_whole_text(tokens: list[str], sizes: list[int]) -> None:
    text = "".join(tokens)
    pieces, i, k = [], 0, 0
    while i < len(text):
        n = sizes[k % len(sizes)]
        pieces.append(text[i:i + n])
        i, k = i + n, k + 1
    whole = speakable_sentences([text], max_chars=48)
    assert speakable_sentences(pieces, max_chars=48) == whole
    assert all(len(s) <= 48 for s in cut_text(text, 48))  # strip() can only shorten


def test_a_too_small_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        SentenceCutter(max_chars=10)
