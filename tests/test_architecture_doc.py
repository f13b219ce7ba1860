"""docs/architecture.md stays true: its module map names every core module, and the dependency
rules it states hold in the source (checked on the import statements, without importing)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

DOC = REPO / "docs" / "architecture.md"
PKG = REPO / "edgebot"
CORE = sorted(
    [p for d in ("config", "bus", "engine") for p in (PKG / d).glob("*.py") if p.name != "__init__.py"]
    + [PKG / n for n in ("daemon.py", "dispatch.py", "asks.py", "systemd.py", "cli.py")]
    + [PKG / "bridges" / "supervisor.py", PKG / "testing" / "script_model.py"])


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules named by the import statements of ``path`` (``from a.b import c`` gives ``a.b``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_module_map_names_every_core_module() -> None:
    mapped = set(re.findall(r"^\| `(edgebot/[\w/]+\.py)` \|", DOC.read_text(), flags=re.M))
    core = {str(p.relative_to(REPO)) for p in CORE}
    assert core - mapped == set(), "add these to the module map in docs/architecture.md"
    assert {m for m in mapped if not (REPO / m).exists()} == set(), "the map names modules that do not exist"


def test_engine_imports_neither_bus_nor_bridges() -> None:
    for path in (PKG / "engine").rglob("*.py"):
        bad = {n for n in imports(path) if under(n, "edgebot")
               and not under(n, "edgebot.engine", "edgebot.config.schema")}
        assert not bad, f"{path.name} imports {bad}"


def test_bus_imports_neither_engine_nor_bridges() -> None:
    for path in (PKG / "bus").rglob("*.py"):
        bad = {n for n in imports(path) if under(n, "edgebot.engine", "edgebot.bridges", "edgebot.dispatch",
                                                   "edgebot.daemon", "edgebot.cli")}
        assert not bad, f"{path.name} imports {bad}"


def test_bridges_and_cli_never_import_the_engine() -> None:
    for path in [*(PKG / "bridges").rglob("*.py"), PKG / "cli.py"]:
        bad = {n for n in imports(path) if under(n, "edgebot.engine", "edgebot.dispatch", "edgebot.daemon", "llama_cpp")}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


HEAVY = ("numpy", "jinja2", "llama_cpp", "vosk", "piper", "sounddevice", "aiohttp", "jsonschema", "gguf")


def module_path(name: str) -> Path | None:
    """The source file of an edgebot module (a package's ``__init__.py``), else None."""
    base = REPO / name.replace(".", "/")
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def closure(start: str, top_level_only: bool) -> set[str]:
    """Every module that importing ``start`` can import: edgebot modules are followed (with their
    parent packages, which Python runs first), others are listed. ``top_level_only`` follows only
    what runs at import time; otherwise function-level (lazy) imports count too."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if not under(name, "edgebot"):
            continue
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        path = module_path(name)
        if path is None:
            continue
        for imp in imports(path, top_level_only):
            todo.append(imp)
            if under(imp, "edgebot"):  # ``from edgebot.x import y`` may import the module edgebot.x.y
                tree = ast.parse(path.read_text())
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and node.module == imp:
                        todo += [f"{imp}.{a.name}" for a in node.names if module_path(f"{imp}.{a.name}")]
    return seen


def test_cli_imports_nothing_heavy_at_start() -> None:
    """What ``edgebot-cli ask/status`` import before they talk to the bus: the blocking client and the
    framing, not asyncio, not the message classes, not the config (only looked up without a socket)."""
    names = closure("edgebot.cli", top_level_only=True)
    ours = {n for n in names if under(n, "edgebot")}
    assert ours <= {"edgebot", "edgebot.cli", "edgebot.cli_args", "edgebot.bus", "edgebot.bus.blocking",
                    "edgebot.bus.framing", "edgebot.bus.sockdir"}, ours
    assert not {n for n in names if under(n, "asyncio", "dataclasses", "typing_extensions", *HEAVY)}, names


def test_cli_local_commands_never_import_the_engine() -> None:
    """``edgebot-cli model|doctor|completion``, followed through every import, lazy ones included."""
    from edgebot.cli_args import LOCAL_COMMANDS

    for command, module in LOCAL_COMMANDS.items():
        # the one documented exception: the config loader's [[actions]] check uses the pure schema bounds
        names = closure(module, top_level_only=False) - {"edgebot.engine", "edgebot.engine.schema_limits"}
        bad = {n for n in names if under(n, "edgebot.engine", "edgebot.dispatch", "edgebot.daemon", "llama_cpp",
                                          "numpy", "vosk", "piper", "sounddevice", "aiohttp")}
        assert not bad, f"edgebot-cli {command} ({module}) imports {sorted(bad)}"


def test_the_ask_pipeline_knows_no_transport() -> None:
    bad = {n for n in imports(PKG / "asks.py") if under(n, "edgebot.bus", "edgebot.http", "edgebot.actions",
                                                       "edgebot.dispatch", "aiohttp")}
    assert not bad, f"asks.py imports {bad}"
    for front in (PKG / "dispatch.py", PKG / "http" / "server.py", PKG / "http" / "panel.py", PKG / "actions" / "desk.py"):
        src = front.read_text()
        assert "Job(" not in src and "priorities" not in src and "budgets" not in src, \
            f"{front.name} builds jobs itself; use edgebot.asks"


def test_http_never_imports_the_bus_and_aiohttp_stays_in_the_route_modules() -> None:
    for path in (PKG / "http").rglob("*.py"):
        names = imports(path)
        assert not {n for n in names if under(n, "edgebot.bus", "edgebot.dispatch", "edgebot.bridges")}, path.name
        if path.name not in ("server.py", "panel.py", "ollama.py"):
            assert not {n for n in names if under(n, "aiohttp")}, f"{path.name} imports aiohttp"
