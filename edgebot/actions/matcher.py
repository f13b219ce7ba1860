"""The fast path: configured phrases and simple patterns matched against an utterance, no model.

A phrase matches the *whole* utterance after normalising both (case folded, punctuation dropped,
spaces collapsed), so "don't turn on the light" never matches "turn on the light". ``{name}`` in
a phrase captures one argument (one or more words); the value is converted to the parameter's
JSON type where it can be (``"42"`` -> 42 for an integer) and left as text otherwise, so the
registry's validation refuses it with a clear message rather than the matcher guessing.
Works for any language: matching is on Unicode characters, not on English words.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Optional

from edgebot.actions.registry import Action

_HOLE = re.compile(r"\{([A-Za-z][A-Za-z0-9_-]*)\}")
TRUE_WORDS = {"true", "yes", "on", "1"}
FALSE_WORDS = {"false", "no", "off", "0"}


def normalize(text: str) -> str:
    """Case folded, punctuation and symbols turned into spaces, whitespace collapsed (NFKC first)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out = [" " if unicodedata.category(c)[0] in "PSZC" else c for c in text]
    return " ".join("".join(out).split())


@dataclass(frozen=True)
class Match:
    action: str
    args: dict[str, Any]
    phrase: str


def _convert(value: str, spec: dict[str, Any]) -> Any:
    """A captured word(s) as the parameter's JSON type when it reads as one, else the text."""
    if "enum" in spec:
        for option in spec["enum"]:
            if isinstance(option, str) and normalize(option) == value:
                return option
            if not isinstance(option, str) and normalize(str(option).lower()) == value:
                return option
        return value
    kind = spec.get("type")
    try:
        if kind == "integer" and re.fullmatch(r"-?\d+", value):
            return int(value)
        if kind == "number" and re.fullmatch(r"-?\d+(\.\d+)?", value):
            return float(value) if "." in value else int(value)
    except ValueError:
        return value
    if kind == "boolean":
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS:
            return False
    return value


class PhraseMatcher:
    """Every phrase of every action, compiled once; :meth:`match` is a few regex tries."""

    def __init__(self, actions: list[Action]) -> None:
        self._rules: list[tuple[re.Pattern[str], Action, str, dict[str, Any]]] = []
        for action in actions:
            for phrase, fixed in action.phrases.items():
                self._rules.append((self._compile(phrase), action, phrase, fixed))
        # More fixed text first, so "turn on the big light" wins over "turn on the {what}".
        self._rules.sort(key=lambda r: -len(_HOLE.sub("", r[2])))

    @staticmethod
    def _compile(phrase: str) -> re.Pattern[str]:
        parts: list[str] = []
        pos = 0
        for hole in _HOLE.finditer(phrase):
            fixed = normalize(phrase[pos:hole.start()])
            if fixed:
                parts.append(re.escape(fixed))
            parts.append(f"(?P<{hole.group(1).replace('-', '_')}>.+?)")
            pos = hole.end()
        tail = normalize(phrase[pos:])
        if tail:
            parts.append(re.escape(tail))
        return re.compile(r"\s*".join(parts) if any(p.startswith("(?P") for p in parts) else " ".join(parts))

    def match(self, utterance: str) -> Optional[Match]:
        text = normalize(utterance)
        if not text:
            return None
        for pattern, action, phrase, fixed in self._rules:
            found = pattern.fullmatch(text)
            if found is None:
                continue
            args = dict(fixed)
            props = action.schema.get("properties", {})
            for name in _HOLE.findall(phrase):
                value = found.group(name.replace("-", "_")).strip()
                args[name] = _convert(value, props.get(name, {}))
            return Match(action.name, args, phrase)
        return None


def yes_or_no(utterance: str, yes_words: list[str], no_words: list[str]) -> Optional[bool]:
    """True/False when the whole reply is one of the yes/no words, else None."""
    text = normalize(utterance)
    if text in {normalize(w) for w in no_words}:
        return False
    if text in {normalize(w) for w in yes_words}:
        return True
    return None
