"""Where the speech bridges find their model files: ``/var/lib/edgebot/voices`` and installed packages.

Shared by speech-in (vosk models) and speech-out (piper voices); imports nothing third-party, so
either bridge runs with only its own extra installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path
from typing import Optional

from edgebot.config.schema import VOICES_DIR

__all__ = ["VOICES_DIR", "installed_model_packages", "package_dir"]


def installed_model_packages(prefix: str) -> list[str]:
    """Import names of installed distributions whose name starts with ``prefix`` (``vosk-model-``)."""
    names = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith(prefix):
            names.add(name.replace("-", "_"))
    return sorted(names)


def package_dir(name: str) -> Optional[Path]:
    """Directory of an importable package ``name`` without importing it, or None."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])

