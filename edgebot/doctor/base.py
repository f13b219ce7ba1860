"""What every doctor check shares: its result (``Check``), the statuses and the ``Context``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"


@dataclass
class Check:
    """One line of the report: ``status`` is PASS, WARN, FAIL or SKIP; ``fix`` says what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""


class Context:
    """What the checks share: arguments, the config (once loaded) and the model's header."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config: Any = None
        self.gguf: Any = None
        self.bus_state: Optional[str] = None
