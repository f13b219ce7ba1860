"""The key reference of ``docs/configuration.md``, rendered from the schema's one table of keys.

    python -m edgebot.config.reference --update docs/configuration.md
"""

from __future__ import annotations

from edgebot.config import schema


def render_markdown() -> str:
    """The key reference for ``docs/configuration.md``."""
    lines: list[str] = []
    for section in schema.SECTIONS:
        title = f"[[{section}]] (one table per entry)" if section in schema.ARRAY_SECTIONS else f"[{section}]"
        lines += [f"### {title}", "", "| key | type | default | unit | meaning | env |", "|---|---|---|---|---|---|"]
        for k in schema.BY_SECTION[section].values():
            default = repr(k.default) if not isinstance(k.default, bool) else str(k.default).lower()
            lines.append(f"| `{k.name}` | {k.kind} | `{default}` | {k.unit} | {k.help} | `{k.env_name}` |")
        lines.append("")
    return "\n".join(lines)


def update_doc(path: str) -> None:
    """Replace the generated key reference (from the first ``### [`` heading to the end) in ``path``."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    head = text[: text.index("\n### [") + 1]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(head + render_markdown())


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update"] and len(sys.argv) == 3:
        update_doc(sys.argv[2])
    else:
        sys.stdout.write(render_markdown())
