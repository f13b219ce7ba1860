"""The schema is the only place a default lives, and the tree has no import cycle."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from edgebot.bridges.serial.settings import PortSettings
from edgebot.bus.hub import Limits
from edgebot.config.schema import KEYS, default
from edgebot.engine.backend import SamplingParams
from edgebot.engine.jobs import EngineSettings, Job

REPO = Path(__file__).resolve().parents[1]
# field -> the schema key whose default it must be (an item of a table key after "/")
SCHEMA_FIELDS = {
    Limits: {"max_line_bytes": "bus.max_line_bytes", "queue_max": "bus.client_queue_max", "rate": "bus.client_rate",
             "burst": "bus.client_burst", "first_message_s": "bus.first_message_s", "max_clients": "bus.max_clients"},
    PortSettings: {f: f"serial.{f}" for f in ("baud", "checksum", "window", "chunk_bytes", "flush_s", "timeout_s",
                                              "hello_timeout_s", "ascii", "session", "think_budget")},
    EngineSettings: {"queue_max": "engine.queue_max", "session_idle_s": "engine.session_idle_s",
                     "answer_reserve": "engine.answer_reserve", "persona": "llm.persona", "stall_s": "daemon.stall_s"},
    SamplingParams: {f: f"llm.{f}" for f in ("temperature", "top_p", "top_k", "seed")},
    Job: {"max_tokens": "llm.max_tokens", "think_budget": "llm.think_budget/default",
          "priority": "engine.priorities/default"},
}


def _schema_default(spec: str) -> object:
    key, _, item = spec.partition("/")
    value = default(key)
    return value[item] if item else value


@pytest.mark.parametrize("cls", list(SCHEMA_FIELDS), ids=lambda c: c.__name__)
def test_settings_take_their_defaults_from_the_schema(cls: type) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, spec in SCHEMA_FIELDS[cls].items():
        assert fields[name].default == _schema_default(spec), f"{cls.__name__}.{name} != schema {spec}"
    # and no literal is written there: the value comes from the schema, so changing it there changes it here
    path = Path(__import__(cls.__module__, fromlist=["x"]).__file__)
    node = next(n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    literals = [stmt.target.id for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and stmt.target.id in SCHEMA_FIELDS[cls] and isinstance(stmt.value, (ast.Constant, ast.BinOp, ast.UnaryOp))]
    assert not literals, f"{cls.__name__} re-declares the schema's defaults of {literals}"


def test_every_schema_key_named_above_exists() -> None:
    dotted = {k.dotted for k in KEYS}
    for fields in SCHEMA_FIELDS.values():
        assert {spec.partition("/")[0] for spec in fields.values()} <= dotted


def _module_graph() -> dict[str, set[str]]:
    """edgebot module -> the edgebot modules its import statements name (any level, lazy ones too;
    not those under ``if TYPE_CHECKING:``, which never run)."""
    modules = {}
    for path in (REPO / "edgebot").rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        tree = ast.parse(path.read_text())
        type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                     for stmt in block.body for n in ast.walk(stmt)}  # annotations only, never run
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
                edges |= subs or ({node.module} & set(modules))
        graph[name] = edges - {name}
    return graph


def test_the_tree_has_no_import_cycle() -> None:
    graph = _module_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
