"""Fitting a conversation into the context: which old turns to drop, decided in linear time.

When a conversation's prompt plus room for the answer would overflow ``n_ctx``, the first turn
(which carries the persona: the fixed prefix) stays, and a block of the oldest turns after it is
dropped — enough to come down to a low-water mark a quarter of the context below the limit, so the
next turns fit without dropping again. The choice uses each turn's token offset from one render
(``PreparedPrompt.turn_ends``, or an estimate by characters for backends that do not tokenize),
and the trimmed prompt is rendered once more: two renders, whatever the length of the history.

The trimmed prompt records which span of the full prompt it lost (``PreparedPrompt.dropped``), so
the llama.cpp backend removes exactly those tokens from the conversation's KV sequence and shifts
the rest down instead of re-reading them.
"""

from __future__ import annotations

from typing import Callable, Optional

from edgebot.engine.backend import PreparedPrompt
from edgebot.engine.prompt import Turn

Prepare = Callable[[list[Turn], Optional[str]], PreparedPrompt]


def turn_ends(prompt: PreparedPrompt, turns: list[Turn], question: str) -> list[int]:
    """Token offset after each turn: the backend's own, or an estimate in proportion to characters."""
    if prompt.turn_ends is not None and len(prompt.turn_ends) == len(turns):
        return prompt.turn_ends
    sizes = [len(t.user) + len(t.answer) + 16 for t in turns]
    per_char = prompt.n_tokens / max(1, sum(sizes) + len(question) + 16)
    ends, at = [], 0.0
    for size in sizes:
        at += size * per_char
        ends.append(int(at))
    return ends


def dropped_span(full: PreparedPrompt, trimmed: PreparedPrompt) -> Optional[tuple[int, int]]:
    """``(start, count)`` when ``trimmed.tokens`` is ``full.tokens`` with one contiguous span removed."""
    a, b = full.tokens, trimmed.tokens
    count = len(a) - len(b)
    if not a or not b or count <= 0:
        return None
    start = 0
    while start < len(b) and a[start] == b[start]:
        start += 1
    return (start, count) if a[start + count:] == b[start:] else None


def fit(prepare: Prepare, turns: list[Turn], question: str, n_ctx: int,
        reserve: int) -> tuple[PreparedPrompt, list[Turn]]:
    """The prompt for ``question`` after ``turns`` that leaves ``reserve`` tokens for the answer
    within ``n_ctx``, and the turns it kept (all of them when nothing had to go)."""
    full = prepare(turns, question)
    limit = n_ctx - reserve
    if full.n_tokens <= limit or not turns:
        return full, turns
    keep = 1 if len(turns) > 1 else 0  # the first turn (with the persona) is the fixed prefix
    ends = turn_ends(full, turns, question)
    base = ends[keep - 1] if keep else 0
    target = max(0, limit - n_ctx // 4)  # the low-water mark: room for a few more turns
    drop = 1
    while keep + drop < len(turns) and full.n_tokens - (ends[keep + drop - 1] - base) > target:
        drop += 1
    kept = turns[:keep] + turns[keep + drop:]
    prompt = prepare(kept, question)
    if prompt.n_tokens > limit and len(kept) > keep:  # the estimate was short: keep only the first turn
        kept = turns[:keep]
        prompt = prepare(kept, question)
    if prompt.n_tokens > limit and kept:  # even the first turn does not fit beside the question
        kept = []
        prompt = prepare(kept, question)
    prompt.dropped = dropped_span(full, prompt)
    return prompt, kept
