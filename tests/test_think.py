"""The streaming think splitter, fed every possible split of the text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgebot.engine.think import ThinkSplitter

R1_STREAM = "Let me see. 2+2 is 4.\n</think>\n\nThe answer is **4**."


def run(pieces: list[str], thinking: bool) -> tuple[str, str]:
    s = ThinkSplitter(thinking)
    think, answer = [], []
    for p in pieces:
        out = s.feed(p)
        think.append(out.think)
        answer.append(out.answer)
    out = s.flush()
    think.append(out.think)
    answer.append(out.answer)
    return "".join(think), "".join(answer)


@pytest.mark.parametrize("cut", range(1, len(R1_STREAM)))
def test_any_two_way_split(cut: int) -> None:
    think, answer = run([R1_STREAM[:cut], R1_STREAM[cut:]], thinking=True)
    assert think == "Let me see. 2+2 is 4.\n"
    assert answer == "The answer is **4**."


def test_char_by_char() -> None:
    assert run(list(R1_STREAM), True) == ("Let me see. 2+2 is 4.\n", "The answer is **4**.")


@given(st.lists(st.integers(min_value=1, max_value=len(R1_STREAM) - 1), max_size=10))
def test_random_splits(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [R1_STREAM[a:b] for a, b in zip([0] + points, points + [len(R1_STREAM)])]
    assert run(pieces, True) == ("Let me see. 2+2 is 4.\n", "The answer is **4**.")


def test_model_without_thinking_passes_text_through() -> None:
    assert run(["Hello", " <b>world</b>", " a < b"], thinking=False) == ("", "Hello <b>world</b> a < b")


def test_model_that_opens_its_own_think_block() -> None:
    assert run(["<thi", "nk>plan</th", "ink>Answer"], thinking=False) == ("plan", "Answer")


def test_think_tag_inside_an_answer_is_text() -> None:
    assert run(["</think>Use <think> tags"], thinking=True) == ("", "Use <think> tags")


def test_unclosed_thinking_stays_thinking() -> None:
    think, answer = run(["still thinking </thi"], thinking=True)
    assert think == "still thinking </thi" and answer == ""


def test_partial_tag_is_held_back_not_emitted() -> None:
    s = ThinkSplitter(True)
    assert s.feed("abc</th").think == "abc"
    out = s.feed("ink>x")
    assert out.think == "" and out.answer == "x"
