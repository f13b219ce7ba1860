"""Layered, strictly validated configuration.

Layers, later wins: built-in defaults -> ``board-configs/<board>.toml`` -> the config file
(``--config``, ``$EDGEBOT_CONFIG`` or ``/etc/edgebot/edgebot.toml`` when it exists) ->
``EDGEBOT_<SECTION>_<KEY>`` environment variables -> command-line flags.
Every mistake raises :class:`ConfigError` naming the key, where it came from and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from edgebot.config.errors import ConfigError
from edgebot.config.schema import ARRAY_SECTIONS, BY_SECTION, KEYS, SECTIONS, TOP_LEVEL, Config, Key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 boards
    import tomli as tomllib

SYSTEM_CONFIG = Path("/etc/edgebot/edgebot.toml")
__all__ = ["ConfigError", "load_config", "tomllib"]

REPO_BOARD_DIR = Path(__file__).resolve().parents[2] / "board-configs"
BOARD_DIRS = (Path("/etc/edgebot/board-configs"), Path("/opt/edgebot/board-configs"), REPO_BOARD_DIR)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_value(key: Key, value: Any, origin: str, label: str | None = None) -> Any:
    """Return ``value`` converted to the key's kind, or raise ConfigError (``label`` names the key)."""
    where = f"{origin}: {label or (f'[{key.section}] {key.name}' if key.section else key.name)}"

    def bad() -> ConfigError:
        return ConfigError(f"{where}: expected {key.allowed()}, got {value!r}")

    kind = key.kind
    if kind in ("str", "path"):
        if not isinstance(value, str):
            raise bad()
        if key.choices:
            upper = value.upper() if all(c.isupper() for c in key.choices) else value
            if upper not in key.choices:
                raise bad()
            value = upper
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if kind == "int" and not isinstance(value, int):
            raise bad()
        if (key.minimum is not None and value < key.minimum) or (key.maximum is not None and value > key.maximum):
            raise bad()
        return float(value) if kind == "float" else value
    if kind == "list:str":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad()
        return list(value)
    if kind == "table:int":
        if not isinstance(value, dict):
            raise bad()
        for name, v in value.items():
            if isinstance(v, bool) or not isinstance(v, int) or (key.minimum is not None and v < key.minimum):
                raise ConfigError(f"{where}.{name}: expected {key.allowed()}, got {v!r}")
        return dict(value)
    if kind == "table":  # contents are checked by the key's owner (e.g. edgebot.actions.registry)
        if not isinstance(value, dict):
            raise bad()
        return copy.deepcopy(value)
    raise AssertionError(kind)


def _check_entries(section: str, table: Any, origin: str) -> list[dict[str, Any]]:
    """Validate the ``[[section]]`` entries of one file: known keys, right values, named, no repeats."""
    if not isinstance(table, list) or not all(isinstance(e, dict) for e in table):
        raise ConfigError(f"{origin}: {section} must be written as [[{section}]] tables (one per entry), "
                          f"got {table!r}")
    name_key = ARRAY_SECTIONS[section]
    entries: list[dict[str, Any]] = []
    seen: dict[Any, int] = {}
    for n, entry in enumerate(table, 1):
        label = f"[[{section}]] #{n}"
        checked: dict[str, Any] = {}
        for name, value in entry.items():
            key = BY_SECTION[section].get(name)
            if key is None:
                known = list(BY_SECTION[section])
                raise ConfigError(f"{origin}: unknown key {label} {name}{_suggest(name, known)}; "
                                  f"known keys: {', '.join(known)}")
            checked[name] = check_value(key, value, origin, f"{label} {name}")
        if not checked.get(name_key):
            raise ConfigError(f"{origin}: {label}: missing key {name_key} ({BY_SECTION[section][name_key].help})")
        if checked[name_key] in seen:
            raise ConfigError(f"{origin}: {label}: {name_key} {checked[name_key]!r} is already configured "
                              f"by entry #{seen[checked[name_key]]}")
        seen[checked[name_key]] = n
        if section == "actions":  # parameters and phrases: checked by their owner (no heavy imports)
            from edgebot.actions.registry import check_entry

            defaults = {k: copy.deepcopy(key.default) for k, key in BY_SECTION[section].items()}
            check_entry({**defaults, **checked}, f"{origin}: {label}")
        entries.append(checked)
    return entries


def _merge_layer(values: dict[str, dict[str, Any]], sources: dict[str, str], layer: Mapping[str, Any],
                 origin: str, arrays: dict[str, list[dict[str, Any]]] | None = None) -> None:
    """Validate one parsed TOML document and apply it over ``values``.

    With ``arrays`` (a file layer) array sections must be ``[[section]]`` entries, which replace
    those of earlier files; without it (the environment) they are flat overrides for every entry.
    """
    top_names = {k.name for k in TOP_LEVEL}
    for section, table in layer.items():
        if section in top_names:
            continue
        if section not in BY_SECTION:
            raise ConfigError(f"{origin}: unknown section [{section}]{_suggest(section, list(SECTIONS))}; "
                              f"known sections: {', '.join(SECTIONS)}")
        if section in ARRAY_SECTIONS and arrays is not None:
            arrays[section] = _check_entries(section, table, origin)
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table, got {table!r}")
        for name, value in table.items():
            key = BY_SECTION[section].get(name)
            if key is None:
                known = list(BY_SECTION[section])
                raise ConfigError(f"{origin}: unknown key [{section}] {name}{_suggest(name, known)}; "
                                  f"known keys: {', '.join(known)}")
            checked = check_value(key, value, origin)
            if key.kind == "table:int" and isinstance(values[section][name], dict):
                checked = {**values[section][name], **checked}
            values[section][name] = checked
            sources[key.dotted] = origin


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a ConfigError naming the file."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read config file (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except OSError as exc:  # a directory, a dead mount, an I/O error ...
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None


def detect_board() -> str:
    """Guess the board profile from the device tree; ``generic-x86`` off ARM."""
    try:
        model = Path("/proc/device-tree/model").read_bytes().decode(errors="replace").lower()
        compat = Path("/proc/device-tree/compatible").read_bytes().decode(errors="replace").lower()
    except OSError:
        return "generic-x86" if os.uname().machine in ("x86_64", "i686") else ""
    if "raspberry pi 5" in model:
        return "rpi5"
    if "raspberry pi 4" in model:
        return "rpi4"
    if "rk3588" in compat:
        return "rk3588"
    return ""


def board_file(board: str, environ: Mapping[str, str] | None = None) -> Path:
    """The TOML profile for ``board``, searched in BOARD_DIRS (``$EDGEBOT_BOARD_DIR`` first)."""
    env = os.environ if environ is None else environ
    dirs = list(BOARD_DIRS)
    if env.get("EDGEBOT_BOARD_DIR"):
        dirs.insert(0, Path(env["EDGEBOT_BOARD_DIR"]))
    for d in dirs:
        candidate = d / f"{board}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.toml")})
    raise ConfigError(f"unknown board {board!r}{_suggest(board, known)}; known boards: {', '.join(known) or 'none found'}")


def _env_layer(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``EDGEBOT_<SECTION>_<KEY>`` variables as a layer; non-string values are read as TOML values."""
    layer: dict[str, dict[str, Any]] = {}
    for key in KEYS:
        raw = environ.get(key.env_name)
        if raw is None:
            continue
        if key.kind in ("str", "path"):
            value: Any = raw
        else:
            text = raw.strip()
            if key.kind in ("table:int", "table") and not text.startswith("{"):
                text = "{" + text + "}"
            try:
                value = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(f"environment {key.env_name}: expected {key.allowed()}, got {raw!r}") from None
        layer.setdefault(key.section, {})[key.name] = check_value(key, value, f"environment {key.env_name}")
    known = {k.env_name for k in KEYS}
    prefixes = tuple(f"EDGEBOT_{section.upper()}_" for section in SECTIONS)
    for name in environ:
        if name.startswith(prefixes) and name not in known:
            raise ConfigError(f"environment {name}: no such setting{_suggest(name, sorted(known))}")
    return layer


def load_config(config_file: str | os.PathLike[str] | None = None, *, board: str | None = None,
                overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from all layers.

    ``overrides`` maps ``"section.key"`` to values from command-line flags (``None`` = not given).
    """
    env = os.environ if environ is None else environ
    values = {s: {k: copy.deepcopy(key.default) for k, key in BY_SECTION[s].items()} for s in SECTIONS}
    sources: dict[str, str] = {k.dotted: "default" for k in KEYS}
    arrays: dict[str, list[dict[str, Any]]] = {}

    path: Path | None = None
    if config_file:
        path = Path(config_file)
    elif env.get("EDGEBOT_CONFIG"):
        path = Path(env["EDGEBOT_CONFIG"])
    elif SYSTEM_CONFIG.is_file():
        path = SYSTEM_CONFIG
    file_layer = read_toml(path) if path else {}

    file_board = file_layer.get("board", "")
    if not isinstance(file_board, str):
        raise ConfigError(f"{path}: board: expected a string, got {file_board!r}")
    # board="" means "no board profile" (edgebot-cli needs only the socket path)
    board_name = board if board is not None else (env.get("EDGEBOT_BOARD") or file_board or detect_board())
    if board_name:
        bfile = board_file(board_name, env)
        _merge_layer(values, sources, read_toml(bfile), str(bfile), arrays)
    if path:
        _merge_layer(values, sources, file_layer, str(path), arrays)
    _merge_layer(values, sources, _env_layer(env), "environment")
    if env.get("EDGEBOT_SOCKET"):
        values["bus"]["socket"] = check_value(BY_SECTION["bus"]["socket"], env["EDGEBOT_SOCKET"], "environment EDGEBOT_SOCKET")
        sources["bus.socket"] = "environment"
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, name = dotted.split(".", 1)
        key = BY_SECTION[section][name]
        values[section][name] = check_value(key, value, "command line")
        sources[dotted] = "command line"
    return Config(values=values, sources=sources, board=board_name, arrays=arrays)
