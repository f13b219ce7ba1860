"""The linter and the type checker configured in pyproject.toml ([tool.ruff], [tool.mypy]) are clean,
so the tree's ``noqa`` and ``type: ignore`` markers mean something. Both come with the dev extra."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} is not installed: pip install -e '.[dev]' (deploy/dev-setup.sh does)")
        return found
    return str(path)


def test_ruff_is_clean() -> None:
    r = subprocess.run([tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.timeout(600)
def test_mypy_is_clean() -> None:
    r = subprocess.run([tool("mypy"), "--no-incremental"], cwd=REPO, capture_output=True, text=True, timeout=580)
    assert r.returncode == 0, r.stdout + r.stderr
