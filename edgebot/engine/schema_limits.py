"""Bounds on what a JSON Schema may ask of the grammar made from it, checked before any grammar is built.

llama-cpp-python turns a JSON Schema into a GBNF grammar and llama.cpp parses and runs it. Some
small schemas are ruinous there: ``maxLength: 20000`` becomes 20,000 nested optional groups and
llama.cpp's parser recursion overflows the stack (edgebotd died of SIGSEGV); ``maxItems`` and
``{0,N}`` in a ``pattern`` expand the same way; a pattern with a repeated group that can match
nothing (``^((a?){0,50}){0,50}$``) makes every sampled token cost seconds; 900 optional properties
take seconds to convert (the converter is quadratic in them); a remote ``$ref`` would be fetched.
:func:`check_schema` refuses all of that with a :class:`SchemaLimitError` naming the limit, in time
linear in the schema's size and without recursion. Every path that builds a grammar from a schema
someone else wrote calls it first: the HTTP API's ``response_format``, the ``[[actions]]``
parameter schemas, and the llama backend itself. Pure Python, no third-party imports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class SchemaLimits:
    """The bounds. The defaults keep a grammar well inside what llama.cpp parses (it refuses
    ``maxLength`` above about 1,100 on its own) and cheap to convert (milliseconds)."""

    max_depth: int = 12
    """Nesting of subschemas (properties, items, anyOf ...)."""
    max_nodes: int = 512
    """Subschemas in all."""
    max_properties: int = 256
    """Properties of all objects together."""
    max_optional_properties: int = 64
    """Optional properties of one object (the grammar converter is quadratic in them)."""
    max_enum: int = 256
    """Values of all ``enum`` lists together."""
    max_literal_chars: int = 512
    """JSON text of one ``enum``/``const`` value or one property name (characters)."""
    max_length: int = 1000
    """``minLength``/``maxLength`` (characters)."""
    max_items: int = 256
    """``minItems``/``maxItems``/``minProperties``/``maxProperties``."""
    max_pattern_chars: int = 256
    """Length of one ``pattern`` (characters)."""
    max_repeat: int = 100
    """One ``{m,n}`` in a pattern."""
    max_repeat_product: int = 256
    """Counts of ``{m,n}`` nested inside each other, multiplied."""
    max_schema_chars: int = 65536
    """The schema's JSON text (characters)."""


DEFAULT_LIMITS = SchemaLimits()
KNOWN_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
SCHEMA_DICTS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SCHEMA_ONE = ("additionalProperties", "items", "not", "contains", "if", "then", "else", "propertyNames",
              "unevaluatedProperties", "unevaluatedItems", "additionalItems")
COUNTS = {"minLength": "max_length", "maxLength": "max_length", "minItems": "max_items", "maxItems": "max_items",
          "minProperties": "max_items", "maxProperties": "max_items"}


class SchemaLimitError(ValueError):
    """A schema that asks for more than a limit allows. ``limit`` names the limit, ``where`` is the
    JSON pointer of the part of the schema at fault."""

    def __init__(self, message: str, limit: str, where: str) -> None:
        super().__init__(f"{message} (at {where or '/'}; JSON schema limit {limit})")
        self.limit, self.where = limit, where


def _literal_chars(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False))


def check_schema(schema: Any, limits: SchemaLimits = DEFAULT_LIMITS) -> None:
    """Raise SchemaLimitError unless ``schema`` (parsed JSON) stays within ``limits``.

    Only the bounds: whether the grammar converter supports every keyword is the converter's
    business. Iterative, so a deeply nested schema costs no Python recursion."""
    try:
        size = len(json.dumps(schema, ensure_ascii=False))
    except (TypeError, ValueError, RecursionError):
        raise SchemaLimitError("the schema is not plain JSON or is nested too deeply", "max_depth", "") from None
    if size > limits.max_schema_chars:
        raise SchemaLimitError(f"the schema's JSON is {size} characters, more than {limits.max_schema_chars}",
                               "max_schema_chars", "")
    nodes = properties = enums = 0
    stack: list[tuple[Any, str, int]] = [(schema, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, bool):
            continue
        if not isinstance(node, dict):
            raise SchemaLimitError(f"a schema must be an object or a boolean, not {type(node).__name__}",
                                   "schema shape", where)
        nodes += 1
        if nodes > limits.max_nodes:
            raise SchemaLimitError(f"the schema has more than {limits.max_nodes} subschemas", "max_nodes", where)
        if depth > limits.max_depth:
            raise SchemaLimitError(f"subschemas are nested more than {limits.max_depth} deep (nesting)",
                                   "max_depth", where)
        _check_keywords(node, where, limits)
        props = node.get("properties")
        if isinstance(props, dict):
            properties += len(props)
            if properties > limits.max_properties:
                raise SchemaLimitError(f"the schema has more than {limits.max_properties} properties in all",
                                       "max_properties", where + "/properties")
            listed = node.get("required")
            required = listed if isinstance(listed, list) else []
            optional = len(set(props) - set(r for r in required if isinstance(r, str)))
            if optional > limits.max_optional_properties:
                raise SchemaLimitError(f"an object has {optional} optional properties, more than "
                                       f"{limits.max_optional_properties}; list the ones it must have in required",
                                       "max_optional_properties", where + "/properties")
        if isinstance(node.get("enum"), list):
            enums += len(node["enum"])
            if enums > limits.max_enum:
                raise SchemaLimitError(f"the schema's enum lists hold more than {limits.max_enum} values in all",
                                       "max_enum", where + "/enum")
        for key in SCHEMA_DICTS:
            sub = node.get(key)
            if isinstance(sub, dict):
                for name, child in sub.items():
                    if len(name) > limits.max_literal_chars:
                        raise SchemaLimitError(f"a name in {key} is longer than {limits.max_literal_chars} characters",
                                               "max_literal_chars", f"{where}/{key}")
                    stack.append((child, f"{where}/{key}/{_pointer(name)}", depth + 1))
            elif sub is not None:
                raise SchemaLimitError(f"{key} must be an object", "schema shape", f"{where}/{key}")
        for key in SCHEMA_LISTS:
            sub = node.get(key)
            if isinstance(sub, list):
                stack.extend((child, f"{where}/{key}/{i}", depth + 1) for i, child in enumerate(sub))
            elif sub is not None:
                raise SchemaLimitError(f"{key} must be a list", "schema shape", f"{where}/{key}")
        for key in SCHEMA_ONE:
            sub = node.get(key)
            if isinstance(sub, list) and key == "items":  # the older tuple form
                stack.extend((child, f"{where}/items/{i}", depth + 1) for i, child in enumerate(sub))
            elif sub is not None:
                stack.append((sub, f"{where}/{key}", depth + 1))


def _pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _check_keywords(node: dict[str, Any], where: str, limits: SchemaLimits) -> None:
    """The keywords of one subschema that carry sizes, patterns, literals and references."""
    for key, limit_name in COUNTS.items():
        if key in node:
            value, bound = node[key], getattr(limits, limit_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SchemaLimitError(f"{key} must be a non-negative integer", limit_name, f"{where}/{key}")
            if value > bound:
                raise SchemaLimitError(f"{key} {value} is more than this server allows ({bound})", limit_name,
                                       f"{where}/{key}")
    ref = node.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
        raise SchemaLimitError(f"$ref {str(ref)[:80]!r} is not a reference inside this schema (#/...): remote "
                               f"schemas are never fetched", "local $ref only", f"{where}/$ref")
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if len(kinds) > len(KNOWN_TYPES) or any(not isinstance(k, str) or k not in KNOWN_TYPES for k in kinds):
        raise SchemaLimitError(f"type must be one of {', '.join(sorted(KNOWN_TYPES))} or a list of them",
                               "schema shape", f"{where}/type")
    if "const" in node and _literal_chars(node["const"]) > limits.max_literal_chars:
        raise SchemaLimitError(f"const is longer than {limits.max_literal_chars} characters of JSON",
                               "max_literal_chars", f"{where}/const")
    if "enum" in node:
        values = node["enum"]
        if not isinstance(values, list):
            raise SchemaLimitError("enum must be a list", "schema shape", f"{where}/enum")
        for i, value in enumerate(values):
            if _literal_chars(value) > limits.max_literal_chars:
                raise SchemaLimitError(f"an enum value is longer than {limits.max_literal_chars} characters of JSON",
                                       "max_literal_chars", f"{where}/enum/{i}")
    if "pattern" in node:
        pattern = node["pattern"]
        if not isinstance(pattern, str):
            raise SchemaLimitError("pattern must be a string", "schema shape", f"{where}/pattern")
        check_pattern(pattern, limits, f"{where}/pattern")


@dataclass
class _Part:
    """What a parsed piece of a pattern can do: match nothing, hold a quantifier, expand copies."""

    nullable: bool = False
    quantified: bool = False
    product: int = 1


@dataclass
class _Group:
    alternatives: list[list[_Part]]


def _sequence(parts: list[_Part]) -> _Part:
    return _Part(nullable=all(p.nullable for p in parts), quantified=any(p.quantified for p in parts),
                 product=max((p.product for p in parts), default=1))


def _close(group: _Group) -> _Part:
    alts = [_sequence(a) for a in group.alternatives]
    return _Part(nullable=any(a.nullable for a in alts), quantified=any(a.quantified for a in alts),
                 product=max(a.product for a in alts))


def _count(text: str) -> Optional[tuple[int, Optional[int]]]:
    """``{m}``, ``{m,}``, ``{m,n}`` (without braces) as (m, n or None); None when not a count."""
    lo, sep, hi = text.partition(",")
    lo, hi = lo.strip(), hi.strip()
    if not (lo.isdigit() or (sep and not lo)) or (hi and not hi.isdigit()):
        return None
    low = int(lo) if lo else 0
    if not sep:
        return low, low
    return low, int(hi) if hi else None


def check_pattern(pattern: str, limits: SchemaLimits = DEFAULT_LIMITS, where: str = "/pattern") -> None:
    """Raise SchemaLimitError for a regular expression whose grammar would be huge or ambiguous:
    too long, a ``{m,n}`` over ``max_repeat``, nested counts whose product is over
    ``max_repeat_product``, or a repeated group that can match the empty string (``(a?)*``,
    ``((a?){0,50}){0,50}``: the nested-quantifier shape that made each token cost seconds). Also
    an unescaped ``]`` or ``}`` that closes nothing, or a ``{`` that is not a count: on those the
    grammar converter of llama-cpp-python 0.3.x loops forever (``^[]a]$``)."""
    if len(pattern) > limits.max_pattern_chars:
        raise SchemaLimitError(f"the pattern is {len(pattern)} characters, more than {limits.max_pattern_chars}",
                               "max_pattern_chars", where)
    stack: list[_Group] = [_Group([[]])]
    last: Optional[_Part] = None  # the atom a quantifier would apply to
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        seq = stack[-1].alternatives[-1]
        if c == "\\":
            last = _Part()
            seq.append(last)
            i += 2
            continue
        if c == "[":
            j = i + 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            last = _Part()
            seq.append(last)
            i = j + 1
            continue
        if c == "(":
            stack.append(_Group([[]]))
            last = None
            i += 1
            continue
        if c == ")":
            if len(stack) > 1:
                last = _close(stack.pop())
                stack[-1].alternatives[-1].append(last)
            i += 1
            continue
        if c in "]}":  # llama-cpp-python's converter loops forever on these (0.3.x)
            raise SchemaLimitError(f"pattern: a {c!r} at {i} closes nothing; write it as \\{c}", "pattern syntax", where)
        if c == "|":
            stack[-1].alternatives.append([])
            last = None
            i += 1
            continue
        if c in "^$":
            seq.append(_Part(nullable=True))
            last = None
            i += 1
            continue
        if c in "*+?{":
            counts: Optional[tuple[int, Optional[int]]]
            end = i + 1
            if c == "{":
                close = pattern.find("}", i)
                counts = _count(pattern[i + 1:close]) if close > 0 else None
                if counts is None:
                    raise SchemaLimitError(f"pattern: {pattern[i:i + 12]!r} at {i} is not a repeat count {{m,n}}; "
                                           f"write a literal brace as \\{{", "pattern syntax", where)
                end = close + 1
            else:
                counts = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            if end < n and pattern[end] in "?+":  # lazy or possessive marker
                end += 1
            if last is not None:
                _quantify(last, counts, pattern[i:end], limits, where)
            i = end
            continue
        last = _Part()
        seq.append(last)
        i += 1


def _quantify(part: _Part, counts: tuple[int, Optional[int]], text: str, limits: SchemaLimits, where: str) -> None:
    """Apply a quantifier (its ``counts`` and source ``text``) to ``part`` in place, or refuse it."""
    low, high = counts
    copies = max(low, high or 0)
    if copies > limits.max_repeat:
        raise SchemaLimitError(f"pattern: the repeat {text} is more than {limits.max_repeat}", "max_repeat", where)
    repeats = high is None or high > 1
    if repeats and part.nullable and part.quantified:
        raise SchemaLimitError(f"pattern: {text} repeats a part that can match nothing and holds its own "
                               f"quantifier (nested quantifiers such as (a?)* or ((a?){{0,9}}){{0,9}})",
                               "no repeated empty-matching groups", where)
    product = part.product * max(copies, 1)
    if product > limits.max_repeat_product:
        raise SchemaLimitError(f"pattern: nested repeats multiply to {product}, more than "
                               f"{limits.max_repeat_product}", "max_repeat_product", where)
    part.product = product
    part.quantified = True
    part.nullable = part.nullable or low == 0
