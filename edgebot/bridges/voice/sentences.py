"""Cutting a streamed answer into sentences for speech, and cleaning what must not be read aloud.

``SentenceCutter`` is fed answer deltas as they arrive and returns each sentence as soon as it is
complete: at Latin terminal punctuation followed by white space (``.``, ``!``, ``?``, ``…``), at
CJK terminal punctuation at once (``。！？``), and at newlines. A sentence that grows past
``max_chars`` characters without one is cut at the last clause mark (``,;:`` and their CJK forms)
or else at the last space, so speech never waits for the end of a long answer. Fenced code blocks
(```` ``` ````) are dropped whole.

``clean_for_speech`` turns one sentence into what a voice should say: Markdown markers, inline code
ticks, URLs, HTML tags and emoji go; ``[text](url)`` reads as ``text``; LaTeX reads as words
(``\\boxed{4}`` -> ``4``, ``\\frac{1}{2}`` -> ``1 over 2``). It returns ``""`` when nothing
speakable is left (a lone ``\\[`` line, a rule, a bullet).

Pure text code: no audio, no I/O; the same cutter serves any language.
"""

from __future__ import annotations

import re
from typing import Iterable

TERMINAL_LATIN = ".!?…"
TERMINAL_CJK = "。！？｡"
CLAUSE_MARKS = ",;:，、；："
CLOSERS = "\"'”’)]}»」』）】"
FENCE = "```"
ABBREVIATIONS = frozenset({"e.g", "i.e", "mr", "mrs", "ms", "dr", "prof", "vs", "etc", "st", "no", "fig", "approx"})

DEFAULT_MAX_CHARS = 200
"""Longest sentence (characters) before it is cut at a clause or word boundary."""
MIN_CUT_CHARS = 24
"""A long sentence is not cut at a boundary closer to its start than this (characters)."""


class SentenceCutter:
    """Incremental sentence splitter. ``feed`` and ``flush`` return the sentences completed so far."""

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        if max_chars < 2 * MIN_CUT_CHARS:
            raise ValueError(f"max_chars must be at least {2 * MIN_CUT_CHARS}, got {max_chars}")
        self.max_chars = max_chars
        self.buf = ""
        self.in_fence = False

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the sentences it completed (raw, not yet cleaned)."""
        self.buf += text
        return self._cut(final=False)

    def flush(self) -> list[str]:
        """The answer ended: return whatever is left as the last sentence(s)."""
        out = self._cut(final=True)
        rest = "" if self.in_fence else self.buf.strip()
        self.buf, self.in_fence = "", False
        if rest:
            out.append(rest)
        return out

    # -- internals -----------------------------------------------------------------------------

    def _cut(self, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            if self.in_fence:
                end = self.buf.find(FENCE)
                if end < 0:
                    # keep a possible partial fence (`` or `) at the end; drop the code before it
                    keep = len(self.buf) - len(self.buf.rstrip("`"))
                    self.buf = self.buf[len(self.buf) - keep:] if keep else ""
                    return out
                nl = self.buf.find("\n", end)
                if nl < 0 and not final:
                    self.buf = self.buf[end:]  # wait for the end of the closing fence line
                    return out
                self.buf = "" if nl < 0 else self.buf[nl + 1:]
                self.in_fence = False
                continue
            fence = self.buf.find(FENCE)
            limit = fence if fence >= 0 else len(self.buf)
            if fence < 0 and not final:
                limit -= len(self.buf) - len(self.buf.rstrip("`"))  # a fence may be arriving tick by tick
            cut = self._boundary(self.buf[:limit], final or fence >= 0)
            if cut is not None and cut > self.max_chars and len(self.buf[:cut].strip()) > self.max_chars:
                cut = None  # too long even so: cut it at a clause or word below (same as when streamed)
            if cut is not None:
                sentence, self.buf = self.buf[:cut], self.buf[cut:]
                if sentence.strip():
                    out.append(sentence.strip())
                continue
            if limit > self.max_chars:
                cut = self._long_cut(self.buf[:self.max_chars])
                sentence, self.buf = self.buf[:cut], self.buf[cut:]
                out.append(sentence.strip())
                continue
            if fence >= 0:
                before = self.buf[:fence].strip()
                if before:
                    out.append(before)
                self.buf, self.in_fence = self.buf[fence + len(FENCE):], True
                continue
            return out

    def _boundary(self, text: str, final: bool) -> int | None:
        """Index just after the first sentence end in ``text``, or None if none is certain yet."""
        for i, ch in enumerate(text):
            if ch == "\n":
                return i + 1
            if ch in TERMINAL_CJK:
                j = _skip(text, i + 1, TERMINAL_CJK + TERMINAL_LATIN + CLOSERS)
                if j == len(text) and not final:
                    return None  # more closing marks may follow
                return j
            if ch in TERMINAL_LATIN:
                j = _skip(text, i + 1, TERMINAL_LATIN + CLOSERS)
                if j == len(text):
                    if not final:
                        return None  # "4." may become "4.5": wait for the next character
                    return j
                if not text[j].isspace():
                    continue  # 3.14, example.com, "e.g.x"
                if ch == "." and _not_an_end(text[:i]):
                    continue
                return j
        return None

    @staticmethod
    def _long_cut(text: str) -> int:
        """Where to cut an over-long sentence: after the last clause mark, else the last space."""
        for marks in (CLAUSE_MARKS, " \t"):
            best = max(text.rfind(mark) for mark in marks)
            if best >= MIN_CUT_CHARS:
                return best + 1
        return len(text)  # no boundary at all (e.g. CJK without marks): cut hard


def _skip(text: str, j: int, chars: str) -> int:
    while j < len(text) and text[j] in chars:
        j += 1
    return j


def _not_an_end(before: str) -> bool:
    """True when the ``.`` after ``before`` ends an abbreviation or a list number, not a sentence."""
    word = before.rsplit(None, 1)[-1] if before.split() else ""
    if word.lower().rstrip(".") in ABBREVIATIONS:
        return True
    return word.isdigit() and before.strip() == word  # "1. First item": a list marker


def cut_text(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Cut a whole text at once (for ``say``): the same sentences as feeding it in any pieces."""
    cutter = SentenceCutter(max_chars)
    return cutter.feed(text) + cutter.flush()


# -- cleaning -----------------------------------------------------------------------------------

_LATEX_WORDS = {
    "times": " times ", "cdot": " times ", "div": " divided by ", "pm": " plus or minus ",
    "leq": " less than or equal to ", "le": " less than or equal to ", "geq": " greater than or equal to ",
    "ge": " greater than or equal to ", "neq": " is not equal to ", "ne": " is not equal to ",
    "approx": " approximately ", "infty": " infinity ", "pi": " pi ", "theta": " theta ", "alpha": " alpha ",
    "beta": " beta ", "degree": " degrees ", "circ": " degrees ", "to": " to ", "rightarrow": " gives ",
    "implies": " which means ", "quad": " ", "qquad": " ", "ldots": " ", "cdots": " ", "dots": " ",
    "left": "", "right": "", ",": " ", ";": " ", "!": "", "%": " percent",
}
_LATEX_ARG = r"\{([^{}]*)\}"
_LATEX_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"\\d?frac" + _LATEX_ARG + _LATEX_ARG, r" \1 over \2 "),
    (r"\\sqrt" + _LATEX_ARG, r" the square root of \1 "),
    (r"\\(?:boxed|text|textbf|textit|mathrm|mathbf|mathit|operatorname|emph|mbox)" + _LATEX_ARG, r"\1"),
    (r"\^\{?2\}?", " squared "),
    (r"\^\{?3\}?", " cubed "),
    (r"\^" + _LATEX_ARG, r" to the power of \1 "),
    (r"\^(\w)", r" to the power of \1 "),
))
_URL = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>()\[\]]+", re.IGNORECASE)
_MD_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\uFE0F\u200D]")
_LINE_MARKERS = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|[-*+•]\s+|\d+[.)]\s+)+")
_RULE = re.compile(r"^\s*(?:[-*_=]\s*){3,}$")
_SPEAKABLE = re.compile(r"\w", re.UNICODE)


def clean_latex(text: str) -> str:
    """LaTeX as words: ``\\boxed{4}`` -> ``4``; delimiters dropped; unknown commands keep their argument."""
    text = re.sub(r"\\[\[\]()]|\$\$?", " ", text)
    for _ in range(4):  # nested constructs resolve from the inside out
        before = text
        for pattern, repl in _LATEX_RULES:
            text = pattern.sub(repl, text)
        if text == before:
            break
    text = re.sub(r"\\([A-Za-z]+|[,;!%])", lambda mo: _LATEX_WORDS.get(mo.group(1), " "), text)
    return text.replace("{", "").replace("}", "")


def clean_for_speech(sentence: str) -> str:
    """What a voice should say for one sentence; ``""`` when nothing speakable is left."""
    text = sentence.replace(FENCE, " ")
    if _RULE.match(text):
        return ""
    text = _MD_IMAGE_OR_LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    text = _HTML_TAG.sub(" ", text)
    text = _LINE_MARKERS.sub("", text)
    if "\\" in text or "$" in text or "^" in text:
        text = clean_latex(text)
    text = re.sub(r"(\*\*|__|~~|\*|`|\|)", " ", text)
    text = re.sub(r"(?<!\w)_(?=\w)|(?<=\w)_(?!\w)", " ", text)  # _emphasis_ but not snake_case
    text = re.sub(r"(?m)^\s*#+\s*", "", text)
    text = _EMOJI.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?。，、！？])", r"\1", text)
    return text if _SPEAKABLE.search(text) else ""


def speakable_sentences(pieces: Iterable[str], max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Cut and clean a sequence of streamed pieces: the sentences a voice would say, in order."""
    cutter = SentenceCutter(max_chars)
    raw: list[str] = []
    for piece in pieces:
        raw += cutter.feed(piece)
    raw += cutter.flush()
    return [s for s in map(clean_for_speech, raw) if s]
