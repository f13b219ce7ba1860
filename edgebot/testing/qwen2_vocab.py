"""The real Qwen2 BPE vocabulary as DeepSeek-R1-Distill-Qwen uses it, for test and bench models.

llama.cpp ships a vocabulary-only GGUF of Qwen2's tokenizer (``models/ggml-vocab-qwen2.gguf``:
151,936 tokens, 151,387 merges, no tensors) for its own tokenizer tests, and llama-cpp-python's
source distribution carries it under ``vendor/llama.cpp/``. DeepSeek-R1-Distill-Qwen keeps that
vocabulary and renames ids 151643–151649 to its own special tokens (``R1_SPECIAL``). With it, a
generated model tokenizes text exactly as the real model does, so prompt and history token counts
are the real ones (the byte-level vocabulary of the small test models spells text about 4x longer).

The file is kept outside the repository: ``$EDGEBOT_QWEN2_VOCAB`` or
``~/.cache/edgebot/vocab/ggml-vocab-qwen2.gguf``. ``python -m edgebot.testing.qwen2_vocab --fetch``
(run by ``deploy/dev-setup.sh``) downloads the llama-cpp-python sdist with pip and extracts it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from gguf import TokenType

from edgebot.engine.chat_template import (ASSISTANT_TEXT, BOS_TEXT, EOS_TEXT, THINK_CLOSE, THINK_OPEN,
                                          USER_TEXT)

log = logging.getLogger(__name__)

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The sdist the file is taken from (the version edgebot is tested against)."""
VOCAB_NAME = "ggml-vocab-qwen2.gguf"
MEMBER = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/models/{VOCAB_NAME}"
VOCAB_SHA256 = "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c"
N_VOCAB = 151936
N_MERGES = 151387

EOT_TEXT = "<|EOT|>"
R1_SPECIAL: tuple[tuple[int, str, TokenType], ...] = (
    # id, DeepSeek-R1-Distill-Qwen's text, and the type llama.cpp's convert_hf_to_gguf.py gives it
    # (special in tokenizer_config.json or looking like <|...|> / <｜...｜> -> CONTROL, else USER_DEFINED).
    (151643, EOS_TEXT, TokenType.CONTROL),
    (151644, USER_TEXT, TokenType.CONTROL),
    (151645, ASSISTANT_TEXT, TokenType.CONTROL),
    (151646, BOS_TEXT, TokenType.CONTROL),
    (151647, EOT_TEXT, TokenType.CONTROL),
    (151648, THINK_OPEN, TokenType.USER_DEFINED),
    (151649, THINK_CLOSE, TokenType.USER_DEFINED),
)
BOS_ID, EOS_ID = 151646, 151643


class VocabMissing(FileNotFoundError):
    """The vocabulary file is not where it is looked for; the message says how to get it."""


@dataclass(frozen=True)
class R1Vocab:
    """DeepSeek-R1-Distill-Qwen's tokenizer: what a GGUF writer needs."""

    tokens: list[str]
    """Token texts in byte-level form (``" the"`` is ``"Ġthe"``), index = id."""
    types: list[int]
    """``gguf.TokenType`` of each token."""
    merges: list[str]
    """BPE merges, ``"a b"``, in priority order."""
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def id_of(self, text: str) -> Optional[int]:
        """The id whose token text is ``text`` (byte-level form), or None."""
        index = self.__dict__.get("_index")
        if index is None:
            index = {t: i for i, t in enumerate(self.tokens)}
            object.__setattr__(self, "_index", index)
        return index.get(text)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edgebot`` or ``~/.cache/edgebot`` (where dev-setup keeps the wheels too)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgebot"


def vocab_path() -> Path:
    """Where the vocabulary file is looked for (it may not exist)."""
    env = os.environ.get("EDGEBOT_QWEN2_VOCAB")
    return Path(env) if env else cache_dir() / "vocab" / VOCAB_NAME


def find_vocab() -> Path:
    """The vocabulary file; raises ``VocabMissing`` saying how to get it."""
    path = vocab_path()
    if not path.is_file():
        raise VocabMissing(f"the Qwen2 vocabulary {path} is missing: run ./deploy/dev-setup.sh or "
                           f"`python -m edgebot.testing.qwen2_vocab --fetch` (downloads the llama-cpp-python "
                           f"{LLAMA_CPP_PYTHON_VERSION} sdist with pip), or set EDGEBOT_QWEN2_VOCAB")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_vocab(sdist: Path, dest: Path) -> Path:
    """Copy the vocabulary out of the llama-cpp-python sdist ``sdist`` (.tar.gz) to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        src = tar.extractfile(MEMBER)
        if src is None:
            raise ValueError(f"{sdist} has no {MEMBER}")
        tmp = dest.with_name(dest.name + ".tmp")
        with open(tmp, "wb") as out:
            out.write(src.read())
    if _sha256(tmp) != VOCAB_SHA256:
        tmp.unlink()
        raise ValueError(f"{MEMBER} in {sdist} is not the expected file (sha256 differs)")
    tmp.replace(dest)
    return dest


def fetch_sdist() -> Path:
    """The llama-cpp-python sdist in ``~/.cache/edgebot/sdist/``, downloaded with pip when missing."""
    sdists = cache_dir() / "sdist"
    sdist = sdists / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.is_file():
        with tempfile.TemporaryDirectory(prefix="edgebot-sdist-") as tmp:
            log.info("downloading the llama-cpp-python %s sdist (~77 MB) with pip", LLAMA_CPP_PYTHON_VERSION)
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"], check=True)
            sdists.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / sdist.name).replace(sdist)
    return sdist


def fetch_vocab(dest: Optional[Path] = None) -> Path:
    """Download the sdist with pip (or reuse ``~/.cache/edgebot/sdist/``) and extract the vocabulary."""
    dest = dest or vocab_path()
    if dest.is_file() and _sha256(dest) == VOCAB_SHA256:
        return dest
    return extract_vocab(fetch_sdist(), dest)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf_kv(path: Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF v2/v3 file (arrays as lists), without its tensors.

    A plain reader for the few MB of a vocabulary file: ``gguf.GGUFReader`` builds numpy views
    of every one of the ~300,000 strings and takes 5-10 s here; this takes a fraction of a second.
    """
    data = Path(path).read_bytes()
    magic, version, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    if magic != b"GGUF" or version < 2:
        raise ValueError(f"{path} is not a GGUF v2+ file")
    pos = 24

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        return data[pos - n:pos].decode("utf-8")

    def value(vtype: int) -> Any:
        nonlocal pos
        if vtype == _STRING:
            return string()
        if vtype == _ARRAY:
            etype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if etype in _SCALARS:
                fmt = _SCALARS[etype]
                size = struct.calcsize(fmt)
                items = list(struct.unpack_from("<" + fmt[1] * count, data, pos))
                pos += size * count
                return items
            return [value(etype) for _ in range(count)]
        fmt = _SCALARS[vtype]
        (item,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return item

    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        kv[key] = value(vtype)
    return kv


def load_r1_vocab(path: Optional[Path] = None) -> R1Vocab:
    """Read ``ggml-vocab-qwen2.gguf`` and rename ids 151643–151649 as DeepSeek-R1-Distill-Qwen does."""
    kv = read_gguf_kv(path or find_vocab())
    tokens, merges = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.merges"]
    types = kv["tokenizer.ggml.token_type"]
    if len(tokens) != N_VOCAB or len(merges) != N_MERGES:
        raise ValueError(f"{path}: {len(tokens)} tokens / {len(merges)} merges, expected {N_VOCAB} / {N_MERGES}")
    for token_id, text, toktype in R1_SPECIAL:
        tokens[token_id] = text
        types[token_id] = int(toktype)
    return R1Vocab(tokens, types, merges)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the vocabulary's path; ``--fetch`` gets it first when it is missing."""
    parser = argparse.ArgumentParser(prog="python -m edgebot.testing.qwen2_vocab", description=__doc__.split("\n")[0])
    parser.add_argument("--fetch", action="store_true", help="download the sdist with pip and extract the file")
    parser.add_argument("--sdist", action="store_true", help="print the sdist's path instead (downloaded if missing)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="qwen2_vocab: %(message)s")
    try:
        path = fetch_sdist() if args.sdist else fetch_vocab() if args.fetch else find_vocab()
    except (VocabMissing, ValueError, subprocess.CalledProcessError) as exc:
        print(f"qwen2_vocab: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
