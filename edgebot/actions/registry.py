"""Declared robot actions: read from ``[[actions]]``, checked once at start-up, arguments validated.

Nothing that is not declared can be called: every path to an action (a phrase, the model, the
bus) ends in :meth:`Registry.check_call`, which refuses an undeclared name and any argument
object that its JSON Schema (made strict: no extra properties) does not accept.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from edgebot.config.errors import ConfigError
from edgebot.config.schema import Config
from edgebot.engine.schema_limits import SchemaLimitError, check_schema

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
SCALAR_TYPES = ("string", "integer", "number", "boolean")
PARAM_KEYS = {"type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxLength",
              "minLength", "description", "const"}
MAX_ARGS_BYTES = 96
"""Longest argument JSON (bytes) a ``T`` line can carry within a 128-byte line."""


@dataclass(frozen=True)
class Action:
    """One ``[[actions]]`` entry, its parameters as a strict JSON Schema."""

    name: str
    description: str
    schema: dict[str, Any]
    port: str
    confirm: bool = False
    confirm_prompt: str = ""
    rate_limit: int = 0
    rate_window_s: float = 60.0
    phrases: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The confirmation question."""
        return self.confirm_prompt or f"Shall I {self.description.rstrip('.?!') or 'run ' + self.name}?"

    def summary(self) -> dict[str, Any]:
        """What ``edgebot-cli actions`` shows."""
        return {"name": self.name, "description": self.description, "parameters": self.schema, "port": self.port,
                "confirm": self.confirm, "rate_limit": self.rate_limit, "rate_window_s": self.rate_window_s,
                "phrases": sorted(self.phrases)}


def answer_schema(actions: Sequence[Any], plain: bool = True) -> dict[str, Any]:
    """The JSON Schema every model answer must match when ``actions`` are offered (the contract is
    described in ``edgebot.actions.tools``; it lives here so that the registry can hold it to the
    schema bounds when it is built). ``actions``: declared actions or HTTP tools (anything with
    ``name`` and ``schema``); without ``plain`` the answer must be a call."""
    calls = [{"type": "object",
              "properties": {"action": {"const": a.name}, "args": a.schema},
              "required": ["action", "args"], "additionalProperties": False} for a in actions]
    answer = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"], "additionalProperties": False}
    shapes = [*calls, answer] if plain else calls
    return {"anyOf": shapes} if len(shapes) > 1 else shapes[0]


class CallError(Exception):
    """A call that must not be made: undeclared, bad arguments. The message is said to the user."""


def strict_schema(params: dict[str, Any], where: str) -> dict[str, Any]:
    """``parameters`` from the config as an object schema with no extra properties.

    Only the subset that both jsonschema and llama.cpp's grammar converter handle alike is allowed,
    so "the grammar accepts it" and "the validator accepts it" mean the same.
    """
    params = copy.deepcopy(params)
    if not params:
        return {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
    if params.get("type", "object") != "object":
        raise ConfigError(f"{where}: parameters must describe an object (type = \"object\")")
    unknown = set(params) - {"type", "properties", "required", "additionalProperties", "description"}
    if unknown:
        raise ConfigError(f"{where}: parameters: unsupported key(s) {', '.join(sorted(unknown))}")
    if params.get("additionalProperties", False) is not False:
        raise ConfigError(f"{where}: parameters: additionalProperties must be false (extra fields are never allowed)")
    props = params.get("properties", {})
    if not isinstance(props, dict):
        raise ConfigError(f"{where}: parameters.properties must be a table")
    for pname, spec in props.items():
        if not NAME_RE.match(pname):
            raise ConfigError(f"{where}: parameter name {pname!r}: use letters, digits, _ and -")
        if not isinstance(spec, dict) or not (set(spec) <= PARAM_KEYS):
            raise ConfigError(f"{where}: parameter {pname}: allowed keys are {', '.join(sorted(PARAM_KEYS))}")
        if "enum" in spec:
            if not isinstance(spec["enum"], list) or not spec["enum"]:
                raise ConfigError(f"{where}: parameter {pname}: enum must be a non-empty list")
            for option in spec["enum"]:
                # llama-cpp-python 0.3.x writes a broken grammar for a quote or backslash in an enum
                if isinstance(option, str) and (set(option) & {'"', "\\"} or not option.isprintable()):
                    raise ConfigError(f"{where}: parameter {pname}: enum value {option!r} may not contain "
                                      f"quotes, backslashes or control characters")
        elif spec.get("type") not in SCALAR_TYPES and "const" not in spec:
            raise ConfigError(f"{where}: parameter {pname}: type must be one of {', '.join(SCALAR_TYPES)}")
    required = params.get("required", list(props))  # every parameter is required unless said otherwise
    if not isinstance(required, list) or not set(required) <= set(props):
        raise ConfigError(f"{where}: parameters.required must list declared properties")
    schema = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    try:
        check_schema(schema)  # the same bounds as every schema a grammar is made from
    except SchemaLimitError as exc:
        raise ConfigError(f"{where}: parameters: {exc}") from None
    return schema


def _check_phrases(phrases: dict[str, Any], schema: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for pattern, args in phrases.items():
        if not isinstance(args, dict):
            raise ConfigError(f"{where}: phrase {pattern!r} must map to a table of arguments, got {args!r}")
        holes = re.findall(r"\{([^{}]*)\}", pattern)
        for hole in holes:
            if hole not in schema["properties"]:
                raise ConfigError(f"{where}: phrase {pattern!r}: {{{hole}}} is not a parameter")
        if not pattern.strip() or not re.sub(r"\{[^{}]*\}", "", pattern).strip():
            raise ConfigError(f"{where}: phrase {pattern!r} needs some fixed words")
        out[pattern] = dict(args)
    return out


def check_entry(entry: dict[str, Any], where: str) -> Action:
    """One ``[[actions]]`` entry (all keys, defaults filled in) as an Action, or ConfigError.

    Pure Python (no jsonschema): the config loader calls it, so every process that reads the
    configuration refuses a bad entry with a message naming it."""
    where = f"{where} {entry['name']}"
    if not NAME_RE.match(entry["name"]):
        raise ConfigError(f"{where}: name must be letters, digits, _ and - (at most 32, starting with a letter)")
    if not entry["port"]:
        raise ConfigError(f"{where}: missing key port (the serial port whose board runs it)")
    schema = strict_schema(entry["parameters"], where)
    return Action(name=entry["name"], description=entry["description"], schema=schema, port=entry["port"],
                  confirm=entry["confirm"], confirm_prompt=entry["confirm_prompt"], rate_limit=entry["rate_limit"],
                  rate_window_s=entry["rate_window_s"], phrases=_check_phrases(entry["phrases"], schema, where))


class Registry:
    """The declared actions of this edgebotd."""

    def __init__(self, actions: list[Action], enabled: bool = True) -> None:
        self.actions = {a.name: a for a in actions}
        self.enabled = enabled
        self._validators: dict[str, Any] = {}
        if actions:
            try:
                import jsonschema
            except ImportError:
                raise ConfigError("[[actions]] needs the jsonschema package (a dependency of edgebot): pip install 'jsonschema>=4.0'") from None
            for a in actions:
                try:
                    jsonschema.Draft202012Validator.check_schema(a.schema)
                except jsonschema.SchemaError as exc:
                    raise ConfigError(f"[[actions]] {a.name}: parameters are not a valid JSON Schema: "
                                      f"{exc.message}") from None
                self._validators[a.name] = jsonschema.Draft202012Validator(a.schema)
            try:
                check_schema(answer_schema(actions))
            except SchemaLimitError as exc:
                raise ConfigError(f"[[actions]]: together the actions make a schema the model's grammar cannot "
                                  f"take: {exc}; declare fewer actions or parameters") from None

    @classmethod
    def from_config(cls, config: Config) -> "Registry":
        actions = [check_entry(entry, f"[[actions]] #{n}") for n, entry in enumerate(config.entries("actions"), 1)]
        return cls(actions, enabled=config.get("robot", "actions"))

    @property
    def offered(self) -> bool:
        """Whether there is anything to offer (declared and switched on)."""
        return self.enabled and bool(self.actions)

    def check_call(self, name: Any, args: Any) -> Action:
        """The action for a call, or CallError saying why it cannot be made."""
        if not self.enabled:
            raise CallError("actions are switched off")
        if not isinstance(name, str) or name not in self.actions:
            raise CallError(f"there is no action called {str(name)[:40]!r}")
        if not isinstance(args, dict):
            raise CallError(f"{name}: the arguments must be an object")
        errors = sorted(self._validators[name].iter_errors(args), key=lambda e: list(e.path))
        if errors:
            err = errors[0]
            at = ".".join(str(p) for p in err.path)
            raise CallError(f"{name}: {at + ': ' if at else ''}{err.message}")
        if len(args_json(args).encode()) > MAX_ARGS_BYTES:
            raise CallError(f"{name}: the arguments are longer than {MAX_ARGS_BYTES} bytes")
        return self.actions[name]

    def summaries(self) -> list[dict[str, Any]]:
        return [a.summary() for a in self.actions.values()]


def args_json(args: dict[str, Any]) -> str:
    """Arguments as compact JSON, as sent on the wire (``{"state":"on"}``); ASCII-only."""
    return json.dumps(args, separators=(",", ":"), ensure_ascii=True)

