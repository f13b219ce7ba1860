"""``edgebot-cli model pull|list|verify``: the models edgebot uses, where they come from, and checks.

The catalogue names each file's public source and its published checksum. ``pull`` downloads
with a progress display, resumes an interrupted download (only if the file is unchanged upstream),
rejects a file whose checksum does not match (the published one, else the sha256 Hugging Face
states), and says plainly when the machine is offline. ``$EDGEBOT_MODEL_MIRROR`` (a base URL) makes
every download come from a local mirror instead (a classroom server), file names unchanged;
``$HF_ENDPOINT`` sends the Hugging Face downloads to a Hugging Face mirror (paths unchanged).
Imported only by those subcommands: edgebot-cli's other commands never load it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from edgebot.config import schema
from edgebot.config.schema import DEFAULT_MODEL, GET_MODEL
from edgebot.download import (DownloadError, Expected, OfflineError, download, file_sha256,
                              recorded_sha256, write_sha256)
from edgebot.gguf_info import GGUFError, read_gguf

MODELS_DIR = Path(DEFAULT_MODEL).parent  # /var/lib/edgebot/models
VOICES_DIR = schema.VOICES_DIR  # /var/lib/edgebot/voices
PIPER_BASE = "https://huggingface.co/rhasspy/piper-voices/resolve/v1.0.0/"
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_OFFLINE = 0, 1, 2, 4


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


def target_dir(art: Artifact, args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    return MODELS_DIR if art.kind == "llm" else VOICES_DIR


def _expected(art: Artifact, dest: Path) -> Expected:
    sha256 = art.sha256 or (recorded_sha256(dest) or "")
    return Expected(art.size, sha256, art.md5)


def _present(art: Artifact, final: Path, archive: Path) -> Optional[str]:
    """Why ``art`` needs no download (a sentence), or None."""
    if art.unpack:
        marker = final / ".edgebot-sha256"
        if final.is_dir() and marker.is_file():
            got = marker.read_text().split()[0]
            if not art.sha256 or got == art.sha256:
                return f"already installed in {final}"
        return None
    if not final.is_file():
        return None
    if art.size and final.stat().st_size != art.size:
        return None
    recorded = recorded_sha256(final)
    if recorded and (not art.sha256 or recorded == art.sha256):
        return f"already present, {final} (sha256 recorded at download)"
    if art.sha256 or art.md5:
        sha256 = file_sha256(final)
        if art.sha256 and sha256 != art.sha256:
            return None
        write_sha256(final, sha256)
        return f"already present, {final} (checksum verified)"
    return None


def _unzip(archive: Path, final: Path, sha256: str) -> None:
    """Extract ``archive`` (one top-level directory, no path tricks) into ``final``."""
    tmp = final.with_name(final.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        for n in names:
            if n.startswith("/") or ".." in Path(n).parts:
                raise DownloadError(f"{archive}: refusing an archive member outside its folder: {n}")
        tops = {Path(n).parts[0] for n in names if n.strip("/")}
        zf.extractall(tmp)
    inner = tmp / next(iter(tops)) if len(tops) == 1 and (tmp / next(iter(tops))).is_dir() else tmp
    shutil.rmtree(final, ignore_errors=True)
    os.replace(inner, final)
    shutil.rmtree(tmp, ignore_errors=True)
    (final / ".edgebot-sha256").write_text(f"{sha256}  {archive.name}\n")
    archive.unlink()
    archive.with_name(archive.name + ".sha256").unlink(missing_ok=True)


def pull_one(art: Artifact, args: argparse.Namespace) -> str:
    """Download (and unpack) one artifact; returns a one-line result."""
    folder = target_dir(art, args)
    final = folder / art.installed_name
    archive = folder / art.filename
    why = _present(art, final, archive)
    if why:
        lines = [f"{art.name}: {why}"]
    else:
        sha256 = download(source_url(art), archive, _expected(art, archive), label=art.name)
        if not art.sha256 and not art.md5:
            print(f"{art.name}: no published checksum; recorded sha256 {sha256} in {archive.name}.sha256",
                  file=sys.stderr)
        if art.unpack == "zip":
            _unzip(archive, final, sha256)
        lines = [f"{art.name}: installed {final}"]
    for comp in art.companions:
        lines.append(pull_one(comp, args))
    return "\n".join(lines)


def selected(catalogue: tuple[Artifact, ...], names: list[str], language: Optional[str]) -> list[Artifact]:
    """The artifacts a pull means: named ones, else the default LLM and the language's voice models."""
    by_name = {a.name: a for a in catalogue}
    if names:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"unknown model {', '.join(missing)}; known: {', '.join(by_name)}")
        return [by_name[n] for n in names]
    lang = language or "en"
    return [a for a in catalogue if a.default and (a.kind == "llm" or a.language == lang)]


def _config(args: argparse.Namespace) -> Optional[Any]:
    from edgebot.config import load_config

    try:
        return load_config(args.config)
    except Exception as exc:  # noqa: BLE001 - a config mistake must not stop model management
        print(f"edgebot-cli model: config not used ({exc})", file=sys.stderr)
        return None


def configured_paths(config: Any) -> dict[str, str]:
    """What the config points to: the LLM, and the speech models when those sections exist."""
    paths = {"llm": config.get("llm", "model")} if config else {}
    values = getattr(config, "values", {}) if config else {}
    for key, (section, name) in {"stt": ("speech_in", "model"), "tts": ("speech_out", "voice")}.items():
        value = values.get(section, {}).get(name)
        if isinstance(value, str) and value:
            paths[key] = value
    return paths


def cmd_pull(args: argparse.Namespace) -> int:
    try:
        catalogue = load_catalogue(args.catalog)
        if args.url:
            if not args.names or len(args.names) != 1:
                print("edgebot-cli model pull --url URL needs exactly one NAME (the file name to save)",
                      file=sys.stderr)
                return EXIT_USAGE
            arts = [Artifact(args.names[0], "llm", args.url, args.names[0], args.size or 0, sha256=args.sha256 or "")]
        else:
            arts = selected(catalogue, args.names, args.lang)
    except (KeyError, ValueError, OSError) as exc:
        print(f"edgebot-cli model pull: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code = EXIT_OK
    for art in arts:
        try:
            print(pull_one(art, args))
        except OfflineError as exc:
            print(f"edgebot-cli model pull: {art.name}: {exc}", file=sys.stderr)
            return EXIT_OFFLINE
        except PermissionError as exc:
            print(f"edgebot-cli model pull: {art.name}: {exc}; run it as root (sudo) or choose a folder "
                  f"with --dir", file=sys.stderr)
            code = EXIT_FAIL
        except (DownloadError, OSError, zipfile.BadZipFile) as exc:
            print(f"edgebot-cli model pull: {art.name}: {exc}", file=sys.stderr)
            code = EXIT_FAIL
    return code


def cmd_list(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.catalog)
    config = _config(args)
    pointed = configured_paths(config)
    rows = []
    for art in catalogue:
        path = target_dir(art, args) / art.installed_name
        rows.append({"name": art.name, "kind": art.kind, "language": art.language, "path": str(path),
                     "installed": path.exists() and not Path(str(path) + ".part").exists(),
                     "configured": str(path) in pointed.values(), "note": art.note})
    known = {r["path"] for r in rows}
    for kind, cfg_path in pointed.items():
        if cfg_path not in known:
            rows.append({"name": "(configured)", "kind": kind, "language": "", "path": cfg_path,
                         "installed": Path(cfg_path).exists(), "configured": True, "note": "not from the catalogue"})
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    for r in rows:
        mark = "installed" if r["installed"] else "missing  "
        cfg = " <- config" if r["configured"] else ""
        print(f"{mark} {r['kind']:3} {r['language'] or '--':2} {r['name']:38} {r['path']}{cfg}")
    for kind, cfg_path in pointed.items():
        if not Path(cfg_path).exists():
            print(f"edgebot-cli model: the config's {kind} model {cfg_path} is missing; get it with "
                  f"`{GET_MODEL}`", file=sys.stderr)
    return EXIT_OK


def verify_gguf(path: str) -> tuple[bool, list[str]]:
    """(usable, lines describing the file or its problems)."""
    try:
        info = read_gguf(path)
    except GGUFError as exc:
        return False, [str(exc)]
    lines = [f"{path}: GGUF v{info.version}, {info.file_size / 1e6:.1f} MB, {info.tensor_count} tensors "
             f"({', '.join(f'{n} {t}' for t, n in sorted(info.tensor_types.items()))})",
             f"architecture: {info.architecture}, context length: {info.context_length} tokens, "
             f"chat template: {'yes' if info.chat_template else 'NO'}"]
    problems = info.problems()
    recorded = recorded_sha256(Path(path))
    if recorded and not problems:
        got = file_sha256(Path(path))
        if got != recorded:
            problems.append(f"sha256 {got} differs from the {recorded} recorded at download: the file changed "
                            f"or is corrupt")
        else:
            lines.append("sha256 matches the one recorded at download")
    return not problems, lines + [f"problem: {p}" for p in problems]


def cmd_verify(args: argparse.Namespace) -> int:
    paths = args.paths
    if not paths:
        config = _config(args)
        paths = [config.get("llm", "model")] if config else [DEFAULT_MODEL]
    ok_all = True
    for path in paths:
        ok, lines = verify_gguf(path)
        ok_all &= ok
        print("\n".join(lines))
        print(f"{path}: {'OK' if ok else 'NOT USABLE'}")
        if not ok:
            print(f"fix: get it again with `{GET_MODEL}`", file=sys.stderr)
    return EXIT_OK if ok_all else EXIT_FAIL


def build_parser() -> argparse.ArgumentParser:
    """``edgebot-cli model ...``'s own parser (built only when that subcommand runs)."""
    parser = argparse.ArgumentParser(prog="edgebot-cli model", description="Download, list and verify models.")
    parser.add_argument("--config", help="config file (default: $EDGEBOT_CONFIG or /etc/edgebot/edgebot.toml)")
    msub = parser.add_subparsers(dest="model_command", required=True)
    pull = msub.add_parser("pull", help="download the default model and the voice models for a language")
    pull.add_argument("names", nargs="*", metavar="NAME", help="catalogue names (default: the default set)")
    pull.add_argument("--lang", choices=LANGUAGES, help="voice models for this language (default: en)")
    pull.add_argument("--dir", help="download into this directory (default: /var/lib/edgebot/models or voices)")
    pull.add_argument("--catalog", help="a JSON catalogue to use instead of the built-in one")
    pull.add_argument("--url", help="download this URL as NAME instead of a catalogue entry")
    pull.add_argument("--sha256", help="with --url: the expected sha256")
    pull.add_argument("--size", type=int, help="with --url: the expected size in bytes")
    lst = msub.add_parser("list", help="show what is installed and what the config points to")
    lst.add_argument("--dir", help="look in this directory instead of /var/lib/edgebot/{models,voices}")
    lst.add_argument("--catalog", help="a JSON catalogue to use instead of the built-in one")
    lst.add_argument("--json", action="store_true")
    ver = msub.add_parser("verify", help="check a GGUF's header and metadata before edgebotd loads it")
    ver.add_argument("paths", nargs="*", metavar="FILE", help="GGUF files (default: the config's [llm] model)")
    return parser


def run_cli(argv: list[str], global_args: Optional[argparse.Namespace] = None) -> int:
    """Run ``edgebot-cli model ARGV...``; ``global_args`` carries edgebot-cli's own ``--config``."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if not args.config and global_args is not None:
        args.config = getattr(global_args, "config", None)
    commands = {"pull": cmd_pull, "list": cmd_list, "verify": cmd_verify}
    try:
        return commands[args.model_command](args)
    except KeyboardInterrupt:
        return 130
