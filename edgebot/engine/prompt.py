"""Render a conversation with the model's own chat template, keeping user text apart.

The template is rendered with sentinel strings in place of every message's content, then split
at the sentinels: the template's own text (``<｜User｜>``, ``<think>`` …) may become control
tokens, while message content is later tokenized as plain text only. This is how "user text is
text" holds for any template, not just R1-distill's.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import jinja2
import jinja2.sandbox

from edgebot.engine.chat_template import R1_DISTILL_CHAT_TEMPLATE


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered prompt: template text (``is_content`` False) or message content."""

    text: str
    is_content: bool


@dataclass(frozen=True)
class Turn:
    """One finished exchange: the question and the answer without its thinking."""

    user: str
    answer: str
    answer_tokens: Optional[tuple[int, ...]] = field(default=None, compare=False)
    """The tokens the model generated for ``answer`` (llama.cpp), used instead of tokenizing the text
    again so the next prompt matches what the KV cache holds; None = tokenize the text."""


class TemplateError(Exception):
    """The model's chat template cannot be rendered."""


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_segments(template: str | None, turns: list[Turn], question: str | None, *, persona: str = "",
                    bos_text: str = "", eos_text: str = "") -> list[Segment]:
    """Render ``turns`` (+ ``question`` as the open user turn, with the generation prompt).

    With ``question=None`` the history alone is rendered, without a generation prompt: the
    canonical prefix that the next prompt will start with (used to re-base the KV cache).
    ``persona`` goes at the start of the first user turn, not in a system prompt.
    """
    tag = secrets.token_hex(8)
    contents: list[str] = []

    def slot(text: str) -> str:
        contents.append(text)
        return f"\x00{tag}:{len(contents) - 1}\x00"

    messages: list[dict[str, str]] = []
    for turn in turns:
        messages.append({"role": "user", "content": slot(turn.user)})
        messages.append({"role": "assistant", "content": slot(turn.answer)})
    if question is not None:
        messages.append({"role": "user", "content": slot(question)})
    if persona and messages:
        first = messages[0]["content"]
        messages[0]["content"] = slot(persona.rstrip() + "\n\n") + first
    try:
        rendered = _compile(template or R1_DISTILL_CHAT_TEMPLATE).render(
            messages=messages, add_generation_prompt=question is not None,
            bos_token=bos_text, eos_token=eos_text)
    except TemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template failed: {exc}") from exc
    segments: list[Segment] = []
    for i, part in enumerate(re.split(f"\x00{tag}:(\\d+)\x00", rendered)):
        if i % 2 == 0:
            if part:
                segments.append(Segment(part, False))
        else:
            segments.append(Segment(contents[int(part)], True))
    return segments
