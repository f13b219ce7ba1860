"""Test harness for the RKLLM backend: builds the FAKE librkllmrt.so (tests/fake_rkllm/fake_rkllm.c)
with gcc, writes fake .rkllm "models" (a scripted reply), and reads the fake's call log.

The fake proves the bindings (structs, calls, callback threading, abort), never the NPU."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import pytest

from conftest import APT_LINE

FAKE_DIR = Path(__file__).resolve().parent / "fake_rkllm"

# The default script: thinking with a </think> split across two tokens, then the answer.
THINK_TOKENS = ["Okay", ",", " the", " user", " asks", " 2", "+", "2", ".", "\n</th", "ink>"]
ANSWER_TOKENS = ["\n\n", "The", " answer", " is", " 4", "."]
SCRIPT = THINK_TOKENS + ANSWER_TOKENS
THINKING = "Okay, the user asks 2+2."
ANSWER = "The answer is 4."


@dataclass(frozen=True)
class FakeLibs:
    pinned: Path  # reports runtime 1.3.0, like the release edgebot is written against
    wrong: Path  # reports runtime 1.2.3


def build_fake(out: Path, version: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lib = out / "librkllmrt.so"
    cmd = ["gcc", "-shared", "-fPIC", "-pthread", "-O1", "-Wall", "-Wextra", "-Werror",
           f"-I{FAKE_DIR / 'shim'}", f"-I{FAKE_DIR}", f'-DFAKE_RKLLM_VERSION="{version}"',
           "-o", str(lib), str(FAKE_DIR / "fake_rkllm.c")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return lib


@pytest.fixture(scope="session")
def fake_libs(tmp_path_factory: pytest.TempPathFactory) -> FakeLibs:
    """The FAKE runtime, compiled once per test session (two versions)."""
    if shutil.which("gcc") is None:
        pytest.skip(f"gcc missing: {APT_LINE}")
    base = tmp_path_factory.mktemp("fake_rkllm")
    return FakeLibs(build_fake(base / "v1.3.0", "1.3.0"), build_fake(base / "v1.2.3", "1.2.3"))


def write_fake_model(path: Path, tokens: Sequence[Union[str, bytes]] = SCRIPT, *, token_delay_us: int = 300,
                     loop: bool = False, prefill_us_per_token: int = 0, error_after: int = -1) -> Path:
    """A fake .rkllm file: the fake runtime streams ``tokens`` (one callback each; bytes may split a
    UTF-8 character) as its reply."""
    raw = [t if isinstance(t, bytes) else t.encode() for t in tokens]
    assert not any(b"|" in t for t in raw)
    head = (f"FAKE-RKLLM 1\ntoken_delay_us={token_delay_us}\nprefill_us_per_token={prefill_us_per_token}\n"
            f"loop={int(loop)}\nerror_after={error_after}\n---\n")
    path.write_bytes(head.encode() + b"|".join(raw) + b"\n")
    return path


@dataclass
class Call:
    name: str
    args: dict[str, str]

    def prompt(self) -> str:
        return bytes.fromhex(self.args["prompt"]).decode()


def read_log(path: Path) -> list[Call]:
    """The fake's call log: one ``Call`` per line (``run``, ``abort``, ``clear_kv_cache`` …)."""
    calls = []
    if not path.exists():
        return calls
    for line in path.read_text().splitlines():
        name, *rest = line.split(" ")
        args = dict(part.split("=", 1) for part in rest if "=" in part)
        calls.append(Call(name, args))
    return calls


def runs(calls: list[Call]) -> Iterator[Call]:
    return (c for c in calls if c.name == "run")
