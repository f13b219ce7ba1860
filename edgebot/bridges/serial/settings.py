"""One ``[[serial]]`` port's settings: the config entry a bridge serves, found by path, name or symlink."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from edgebot.config import Config, ConfigError
from edgebot.config.schema import default


@dataclass(frozen=True)
class PortSettings:
    """One ``[[serial]]`` entry (units as in the schema: seconds, bytes, tokens)."""

    port: str
    baud: int = default("serial.baud")
    checksum: str = default("serial.checksum")
    window: int = default("serial.window")
    chunk_bytes: int = default("serial.chunk_bytes")
    flush_s: float = default("serial.flush_s")
    timeout_s: float = default("serial.timeout_s")
    hello_timeout_s: float = default("serial.hello_timeout_s")
    ascii: bool = default("serial.ascii")
    session: str = default("serial.session")
    think_budget: int = default("serial.think_budget")

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> "PortSettings":
        return cls(**{k: entry[k] for k in cls.__dataclass_fields__})

    @property
    def name(self) -> str:
        """The port's short name (``ttyUSB0``), used in the source, session and ids."""
        return os.path.basename(self.port.rstrip("/"))[:64] or "serial"


def select_entry(config: Config, port: Optional[str]) -> dict[str, Any]:
    """The ``[[serial]]`` entry for ``--port`` (a path or a name under /dev), else the defaults."""
    entries = config.entries("serial")
    if not port:
        if len(entries) == 1:
            return entries[0]
        listed = ", ".join(e["port"] for e in entries) or "none configured"
        raise ConfigError(f"give --port DEVICE ([[serial]] ports: {listed})")
    if "/" not in port:
        candidates = [f"/dev/{port}", f"/dev/serial/by-id/{port}"]
        port = next((c for c in candidates if os.path.exists(c)), candidates[0])
    for entry in entries:
        same = entry["port"] == port or (os.path.exists(port) and os.path.exists(entry["port"])
                                         and os.path.realpath(port) == os.path.realpath(entry["port"]))
        if same:
            return entry
    return {**config.section("serial"), "port": port}
