"""The models edgebot can download: each file's public source, size and published checksum.

Data, and the two things read from it: a catalogue given as JSON instead (a classroom mirror, a custom
model) and the URL a file is fetched from (``$EDGEBOT_MODEL_MIRROR``, ``$HF_ENDPOINT``). The commands
that use it are in ``edgebot.models``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

PIPER_BASE = "https://huggingface.co/rhasspy/piper-voices/resolve/v1.0.0/"


@dataclass(frozen=True)
class Artifact:
    """One downloadable file. ``unpack="zip"`` extracts it into a directory named ``unpacks_to``."""

    name: str
    kind: str  # "llm" | "stt" | "tts"
    url: str
    filename: str
    size: int = 0  # bytes; 0 = unknown
    sha256: str = ""
    md5: str = ""
    language: str = ""  # "en", "zh"; "" for the LLM
    unpack: str = ""
    unpacks_to: str = ""
    companions: tuple["Artifact", ...] = ()
    note: str = ""
    default: bool = False

    @property
    def installed_name(self) -> str:
        return self.unpacks_to or self.filename


def _piper(name: str, lang: str, path: str, onnx_md5: str, json_md5: str, json_size: int, size: int,
           default: bool = False) -> Artifact:
    """A piper voice: the .onnx and its .onnx.json (checksums from piper's voices.json)."""
    config = Artifact(f"{name}.json", "tts", PIPER_BASE + path + ".json", Path(path).name + ".json",
                      json_size, md5=json_md5, language=lang)
    return Artifact(name, "tts", PIPER_BASE + path, Path(path).name, size, md5=onnx_md5, language=lang,
                    companions=(config,), default=default, note="piper voice (MIT licence)")


CATALOGUE: tuple[Artifact, ...] = (
    # The Hugging Face URLs name a branch, not a commit: the commit ids could not be looked up where this
    # catalogue was written (no route to huggingface.co). What pins them: the default model's published
    # sha256 (a different file on the branch is rejected, whatever its commit); every download records
    # the commit it came from (X-Repo-Commit) and resumes from that commit; `--revision` pins a board.
    # sha256 as published for bartowski's quantization (also pinned by LocalAI's model gallery).
    Artifact("deepseek-r1-distill-qwen-1.5b-q4_k_m", "llm",
             "https://huggingface.co/bartowski/DeepSeek-R1-Distill-Qwen-1.5B-GGUF/resolve/main/"
             "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf",
             "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf", 1117320800,
             sha256="1741e5b2d062b07acf048bf0d2c514dadf2a48f94e2b4aa0cfe069af3838ee2f",
             default=True, note="the default model (MIT licence), 1.1 GB"),
    # ggml-org's Q4_0 of the same model, to compare on a board (board-configs/README.md); no
    # published checksum: the first download's sha256 is recorded and checked from then on.
    Artifact("deepseek-r1-distill-qwen-1.5b-q4_0", "llm",
             "https://huggingface.co/ggml-org/DeepSeek-R1-Distill-Qwen-1.5B-Q4_0-GGUF/resolve/main/"
             "deepseek-r1-distill-qwen-1.5b-q4_0.gguf", "deepseek-r1-distill-qwen-1.5b-q4_0.gguf",
             note="Q4_0 variant for speed comparisons on Arm; not the default"),
    Artifact("vosk-small-en", "stt", "https://alphacephei.com/vosk/models/vosk-model-small-en-us-0.15.zip",
             "vosk-model-small-en-us-0.15.zip",
             sha256="30f26242c4eb449f948e42cb302dd7a686cb29a3423a8367f99ff41780942498", language="en",
             unpack="zip", unpacks_to="vosk-model-small-en-us-0.15", default=True,
             note="vosk English, small (Apache-2.0)"),
    Artifact("vosk-small-zh", "stt", "https://alphacephei.com/vosk/models/vosk-model-small-cn-0.22.zip",
             "vosk-model-small-cn-0.22.zip", language="zh", unpack="zip", unpacks_to="vosk-model-small-cn-0.22",
             default=True, note="vosk Mandarin, small (Apache-2.0); no published checksum: the sha256 of the "
                                "first download is recorded and checked from then on"),
    _piper("piper-en-lessac-medium", "en", "en/en_US/lessac/medium/en_US-lessac-medium.onnx",
           "2fc642b535197b6305c7c8f92dc8b24f", "46e565a656f76b42b588d822025ed439", 7010, 63201294, default=True),
    _piper("piper-zh-huayan-medium", "zh", "zh/zh_CN/huayan/medium/zh_CN-huayan-medium.onnx",
           "40cdb7930ff91b81574d5f0489e076ea", "f1c77a621e220d545042a4c8c2eaae64", 6922, 63201294, default=True),
    _piper("piper-zh-huayan-x-low", "zh", "zh/zh_CN/huayan/x_low/zh_CN-huayan-x_low.onnx",
           "2b96570db6becd09814a608c8d14a64f", "9270af91d9b44a35b75cb6ce70dac93e", 5954, 20628813,
           ),
)
LANGUAGES = ("en", "zh")


def load_catalogue(path: Optional[str]) -> tuple[Artifact, ...]:
    """The built-in catalogue, or a JSON list of artifacts (a local mirror, a custom model)."""
    if not path:
        return CATALOGUE
    names = {f.name for f in fields(Artifact)}

    def build(item: dict[str, Any]) -> Artifact:
        unknown = set(item) - names
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
        item = dict(item)
        item["companions"] = tuple(build(c) for c in item.get("companions", ()))
        return Artifact(**item)

    with open(path, encoding="utf-8") as fh:
        return tuple(build(i) for i in json.load(fh))


HF_HOST = "https://huggingface.co"


def source_url(art: Artifact) -> str:
    """The artifact's URL; the same file name under ``$EDGEBOT_MODEL_MIRROR``; or, for a Hugging Face
    URL, the same path under ``$HF_ENDPOINT`` (a Hugging Face mirror, as huggingface_hub honours it)."""
    mirror = os.environ.get("EDGEBOT_MODEL_MIRROR", "").strip()
    if mirror:
        return mirror.rstrip("/") + "/" + art.filename
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    if endpoint and art.url.startswith(HF_HOST + "/"):
        return endpoint + art.url[len(HF_HOST):]
    return art.url
