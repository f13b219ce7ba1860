"""docs/bus-protocol.md stays true to the code: its reference is generated from the message
classes, every type/field/error code has a meaning, routes agree with the dispatcher, and every
example line in the doc is a message the codec accepts."""

from __future__ import annotations

import dataclasses
import re

from edgebot.bus import codec, docs
from edgebot.bus import messages as m

from conftest import REPO

DOC = REPO / "docs" / "bus-protocol.md"


def test_doc_contains_the_generated_reference() -> None:
    text = DOC.read_text()
    assert docs.BEGIN in text and docs.END in text
    assert "\n" + docs.render_markdown() + "\n" in text, \
        "regenerate with: python -m edgebot.bus.docs --update docs/bus-protocol.md"


def test_every_type_field_and_error_code_has_a_meaning() -> None:
    missing = [cls.TYPE for cls in m.ALL_TYPES if not docs.type_help(cls.TYPE)]
    # every field of the brief's core types; a type added later may explain its fields in its docstring
    missing += [f"{cls.TYPE}.{f.name}" for cls in m.ALL_TYPES if cls.TYPE in docs.CORE_TYPES
                for f in dataclasses.fields(cls) if not docs.field_help(cls.TYPE, f.name)]
    missing += [f"error code {c}" for c in m.ERROR_CODES if c not in docs.ERROR_HELP]
    assert not missing, "document these in edgebot/bus/docs.py (or as docstrings in messages.py): " + \
        ", ".join(missing)
    assert set(docs.CORE_TYPES) <= set(m.BY_TYPE)


def test_routes_agree_with_the_dispatcher() -> None:
    from edgebot.dispatch import DAEMON_ONLY, RELAYED

    from_daemon = {t for t in m.BY_TYPE if docs.route(t)[0] == "edgebotd"}
    assert from_daemon == DAEMON_ONLY
    for t in RELAYED:
        assert "relayed" in docs.route(t)[1] and docs.route(t)[0] != "edgebotd", t
    unlisted = {t for t in m.BY_TYPE if t not in docs.ROUTES}
    assert unlisted <= RELAYED, f"give {unlisted} a route in edgebot/bus/docs.py ROUTES"


def test_example_lines_in_the_doc_are_valid_messages() -> None:
    blocks = re.findall(r"```jsonl\n(.*?)```", DOC.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert len(lines) >= 10
    for line in lines:
        assert isinstance(codec.decode(line), m.Message), line


def test_update_rewrites_only_the_generated_part(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"# head\n\n{docs.BEGIN}\nstale\n{docs.END}\n\n## tail\n")
    assert docs.update(page) is True
    text = page.read_text()
    assert text.startswith("# head\n") and text.endswith("## tail\n") and "stale" not in text
    assert docs.render_markdown() in text
    assert docs.update(page) is False  # idempotent
