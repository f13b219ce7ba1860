"""``edgebot-cli model pull|list|verify``: the models edgebot uses, where they come from, and checks.

The catalogue names each file's public source and its published checksum. ``pull`` downloads
with a progress display, resumes an interrupted download (only if the file is unchanged upstream),
rejects a file whose checksum does not match (the published one, else the sha256 Hugging Face
states), and says plainly when the machine is offline. ``$EDGEBOT_MODEL_MIRROR`` (a base URL) makes
every download come from a local mirror instead (a classroom server), file names unchanged;
``$HF_ENDPOINT`` sends the Hugging Face downloads to a Hugging Face mirror (paths unchanged).
Each download records the Hugging Face commit it came from (``<file>.source``); ``model list`` shows
it and ``model pull NAME --revision COMMIT`` fetches exactly that revision on the next board.
Imported only by those subcommands: edgebot-cli's other commands never load it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional

from edgebot.catalogue import LANGUAGES, Artifact, load_catalogue, source_url
from edgebot.config import schema
from edgebot.config.schema import DEFAULT_MODEL, GET_MODEL
from edgebot.download import (DownloadError, Expected, OfflineError, at_revision, download, file_sha256,
                              recorded_sha256, recorded_source, write_sha256)
from edgebot.gguf_info import GGUFError, read_gguf

MODELS_DIR = Path(DEFAULT_MODEL).parent  # /var/lib/edgebot/models
VOICES_DIR = schema.VOICES_DIR  # /var/lib/edgebot/voices
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_OFFLINE = 0, 1, 2, 4


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
    revision = getattr(args, "revision", None) or ""
    why = _present(art, final, archive)
    had = recorded_source(final).get("commit", "")
    if why and revision and had != revision.lower():
        why = None
        print(f"{art.name}: {final} came from commit {had or 'unknown'}, not {revision}: fetching {revision}",
              file=sys.stderr)
    if why:
        lines = [f"{art.name}: {why}" + (f", commit {had}" if had else "")]
    else:
        expected = Expected(art.size, art.sha256, art.md5) if revision else _expected(art, archive)
        got = download(at_revision(source_url(art), revision), archive, expected, label=art.name)
        if not art.sha256 and not art.md5:
            print(f"{art.name}: no published checksum; recorded sha256 {got.sha256} in {archive.name}.sha256",
                  file=sys.stderr)
        if art.unpack == "zip":
            _unzip(archive, final, got.sha256)
        lines = [f"{art.name}: installed {final}" + (f" (commit {got.commit})" if got.commit else "")]
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
        if args.revision and not re.fullmatch(r"[0-9a-fA-F]{40}", args.revision):
            print(f"edgebot-cli model pull --revision: {args.revision!r} is not a commit id (40 hex digits, "
                  f"as `edgebot-cli model list` shows after a download)", file=sys.stderr)
            return EXIT_USAGE
        if args.revision and (len(arts) != 1 or "/resolve/" not in arts[0].url):
            print("edgebot-cli model pull --revision COMMIT needs exactly one NAME whose URL is a Hugging Face "
                  "`resolve/` URL", file=sys.stderr)
            return EXIT_USAGE
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
                     "configured": str(path) in pointed.values(), "note": art.note,
                     "commit": recorded_source(path).get("commit", "")})
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
        commit = str(r.get("commit") or "")
        commit = f" @{commit[:12]}" if commit else ""
        print(f"{mark} {r['kind']:3} {r['language'] or '--':2} {r['name']:38} {r['path']}{commit}{cfg}")
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
    pull.add_argument("--revision", metavar="COMMIT",
                      help="with one NAME: fetch this Hugging Face commit (as `model list` shows it on a board "
                           "that has the file) instead of the catalogue's branch")
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
