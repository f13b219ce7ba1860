"""JSON-schema grammars for the llama.cpp backend: built only within the schema bounds
(``edgebot.engine.schema_limits``), checked before llama.cpp parses them, and probed once with
llama.cpp's own parser (llama-cpp-python adds a grammar sampler without checking that it parsed)."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable

from edgebot.engine.schema_limits import check_schema

GRAMMAR_STEP_S = 5.0
"""Longest one grammar-constrained sampling step may take (seconds) before the answer ends with an
error. The schema bounds keep a step to milliseconds; this is the backstop for what they miss."""
MAX_GRAMMAR_CHARS = 65536
"""Largest grammar (characters of GBNF) built from a JSON schema (the bounded schemas make a few KB)."""
GBNF_ESCAPES = set("xuUtrn\\\"[]")
"""The escapes llama.cpp's grammar parser knows. On a parse error it prints the whole grammar to stderr
itself (not through its log callback): ~120 KB per request for ``maxLength: 15000``. The schema
bounds keep grammars small, and the converter's known way of writing one llama.cpp refuses (regex
escapes such as ``\\d`` copied into a literal) is caught before llama.cpp sees it."""


def _unknown_escape(gbnf: str) -> str:
    """The first escape in ``gbnf`` that llama.cpp's parser would refuse (e.g. ``\\d`` copied from a
    pattern), or ""."""
    i = gbnf.find("\\")
    while i >= 0:
        if gbnf[i + 1:i + 2] not in GBNF_ESCAPES:
            return gbnf[i:i + 2]
        i = gbnf.find("\\", i + 2)
    return ""


def build_grammar(json_schema: str, vocab: Callable[[], Any], lock: threading.Lock) -> Any:
    """A ``LlamaGrammar`` for ``json_schema``, built only within the schema bounds and checked by
    llama.cpp's own parser. Raises ValueError (SchemaLimitError for a bound) naming the problem."""
    check_schema(json.loads(json_schema))  # the bounds, before anything is built
    from llama_cpp.llama_grammar import LlamaGrammar

    try:
        grammar = LlamaGrammar.from_json_schema(json_schema, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the converter raises assorted types on odd schemas
        raise ValueError(f"the JSON schema cannot be turned into a grammar: {str(exc)[:300]}") from None
    if len(grammar._grammar) > MAX_GRAMMAR_CHARS:
        raise ValueError(f"the grammar made from the JSON schema has {len(grammar._grammar)} characters, more "
                         f"than {MAX_GRAMMAR_CHARS}; simplify the schema")
    bad_escape = _unknown_escape(grammar._grammar)
    if bad_escape:
        raise ValueError(f"a pattern in the JSON schema uses {bad_escape}, which llama-cpp-python's grammar "
                         f"converter does not translate; write a character class instead (e.g. [0-9] for \\d, "
                         f"[.] for \\.)")
    # llama-cpp-python adds a grammar sampler without checking it parsed (a NULL would crash):
    # parse it once here first. Reads only the vocabulary, so any thread may do it.
    with lock:
        v = vocab()
        if v is not None:
            import llama_cpp

            probe = llama_cpp.llama_sampler_init_grammar(v, grammar._grammar.encode(), b"root")
            if not probe:
                raise ValueError("llama.cpp refused the grammar made from the JSON schema (its converter does "
                                 "not support some construct in it); simplify the schema")
            llama_cpp.llama_sampler_free(probe)
    return grammar

