"""HTTP(S) downloads for model files: progress, resume after interruption, checksums, clear errors.

Standard library only (urllib), so it works on a fresh board before anything else is installed.
A download goes to ``<dest>.part``; an interrupted one is resumed with an HTTP ``Range`` request
guarded by ``If-Range`` (the ETag or Last-Modified of the first response, kept in
``<dest>.part.validator``), so a file that changed upstream is fetched whole instead of joined to the
old part. The finished file is checked against its sha256 (or the publisher's md5) — for a file
without a published checksum, the sha256 that Hugging Face states for LFS files (``X-Linked-Etag``,
or an ETag that is a sha256) — and only then renamed into place, with a ``<dest>.sha256`` record
beside it (``sha256sum -c`` format).

Hugging Face names the commit a ``resolve/<branch>/`` URL was served from (``X-Repo-Commit``, as
huggingface_hub reads it): it is kept beside the part (``<dest>.part.commit``) so that a resumed
download asks for ``resolve/<that commit>/`` — the same revision, even if the branch moved — and
recorded with the URL in ``<dest>.source`` (JSON), which ``edgebot-cli model list`` shows and
``model pull --revision`` takes on the next board.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

from edgebot import __version__

CHUNK = 1 << 20  # bytes read per call
TIMEOUT_S = 30.0  # seconds without any data before a download is abandoned (it can be resumed)


class DownloadError(Exception):
    """A download failed; the message says why and what to do."""


class OfflineError(DownloadError):
    """The server could not be reached at all (no network, DNS failure, refused, timed out)."""


class ChecksumError(DownloadError):
    """The downloaded bytes are not the published file."""


@dataclass(frozen=True)
class Expected:
    """What the finished file must be: any of size (bytes), sha256 and md5 (hex) may be unknown."""

    size: int = 0
    sha256: str = ""
    md5: str = ""


class Progress:
    """Progress on a stream: a redrawn bar on a terminal, a line every 10 % (or 5 s) otherwise."""

    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr, start: int = 0) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.tty = stream.isatty()
        self.start_bytes, self.t0 = start, time.monotonic()
        self.last_t, self.last_step = 0.0, -1

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        rate = (done - self.start_bytes) / max(now - self.t0, 1e-6) / 1e6
        pct = done * 100 // self.total if self.total else None
        text = (f"{self.label}: {pct:3d}% {done / 1e6:8.1f}/{self.total / 1e6:.1f} MB {rate:6.1f} MB/s"
                if pct is not None else f"{self.label}: {done / 1e6:8.1f} MB {rate:6.1f} MB/s")
        if self.tty:
            if final or now - self.last_t >= 0.2:
                width = 30
                filled = width * (pct or 0) // 100
                bar = "#" * filled + "-" * (width - filled)
                self.stream.write(f"\r[{bar}] {text}" + ("\n" if final else ""))
                self.stream.flush()
                self.last_t = now
            return
        step = (pct or 0) // 10
        if final or step > self.last_step or now - self.last_t >= 5.0:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_step, self.last_t = step, now


def _hash_file(path: Path, algorithms: tuple[str, ...]) -> dict[str, "hashlib._Hash"]:
    hashes = {a: hashlib.new(a) for a in algorithms}
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
    return hashes


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file."""
    return _hash_file(path, ("sha256",))["sha256"].hexdigest()


def _offline(url: str, reason: object) -> OfflineError:
    host = urllib.parse.urlparse(url).netloc
    return OfflineError(f"cannot reach {host} ({reason}). This machine seems to be offline: connect it to the "
                        f"network and run the same command again (a partial download is resumed), or copy the "
                        f"file here from a computer that has it")


_SHA256 = re.compile(r'^(?:W/)?"?([0-9a-f]{64})"?$')


class _Hops(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib's own handler and keeps each hop's headers (Hugging Face states an
    LFS file's sha256 as ``X-Linked-Etag`` on the redirect to its CDN, not on the final response)."""

    def __init__(self) -> None:
        self.headers: list[Any] = []

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def server_sha256(headers: list[Any]) -> str:
    """The sha256 the server states for the file (``X-Linked-Etag``, else an ETag that is one), or ""."""
    for name in ("X-Linked-Etag", "ETag"):
        for h in headers:
            m = _SHA256.match((h.get(name) or "").strip().lower())
            if m:
                return m.group(1)
    return ""


_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_RESOLVE = re.compile(r"/resolve/[^/]+/")


def server_commit(headers: list[Any]) -> str:
    """The repository commit Hugging Face states for the file (``X-Repo-Commit``), or ""."""
    for h in headers:
        value = (h.get("X-Repo-Commit") or "").strip().lower()
        if _COMMIT.match(value):
            return value
    return ""


def at_revision(url: str, revision: str) -> str:
    """``url`` with its Hugging Face ``resolve/<revision>/`` replaced (unchanged if it has none)."""
    return _RESOLVE.sub(f"/resolve/{revision}/", url, count=1) if revision else url


@dataclass(frozen=True)
class Downloaded:
    """A finished download: the file's sha256 and, for Hugging Face, the commit it came from ("" if unknown)."""

    sha256: str
    commit: str = ""


def _validator(headers: Any) -> str:
    """What ``If-Range`` may carry for this response: a strong ETag, else Last-Modified, else ""."""
    etag = (headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return (headers.get("Last-Modified") or "").strip()


def _open(url: str, offset: int, timeout: float, if_range: str = "") -> tuple[Any, list[Any]]:
    """The response (an HTTPError for 416) and the headers of the redirects on the way."""
    headers = {"User-Agent": f"edgebot/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if if_range:
            headers["If-Range"] = if_range
    hops = _Hops()
    try:
        resp = urllib.request.build_opener(hops).open(urllib.request.Request(url, headers=headers), timeout=timeout)
        return resp, hops.headers
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return exc, hops.headers  # the part file is already complete (or longer): checked below
        raise DownloadError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _offline(url, exc.reason) from None
    except (socket.timeout, TimeoutError, ConnectionError) as exc:
        raise _offline(url, exc) from None


def download(url: str, dest: Path, expected: Expected, *, label: str = "",
             progress: Optional[Callable[[int, int], None]] = None, stream: TextIO = sys.stderr,
             timeout: float = TIMEOUT_S) -> Downloaded:
    """Fetch ``url`` to ``dest`` (resuming ``dest.part``); returns its sha256 and source commit.

    Raises OfflineError, ChecksumError or DownloadError with a message meant for a person.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    validator_file = part.with_name(part.name + ".validator")
    commit_file = part.with_name(part.name + ".commit")
    offset = part.stat().st_size if part.exists() else 0
    if_range = validator_file.read_text().strip() if offset and validator_file.is_file() else ""
    commit = commit_file.read_text().strip() if offset and commit_file.is_file() else ""
    if offset and not if_range and not (expected.sha256 or expected.md5):
        offset = 0  # nothing tells whether the part is of the same file: fetch it whole
    if expected.size and offset > expected.size:
        part.unlink()
        offset = 0
    label = label or dest.name
    if offset:
        stream.write(f"{label}: resuming at {offset / 1e6:.1f} MB"
                     + (f" from commit {commit[:12]}" if commit else "") + "\n")
    if not (expected.size and offset == expected.size):
        resp, hops = _open(at_revision(url, commit), offset, timeout, if_range)
        status = getattr(resp, "status", None) or resp.getcode()
        stated = server_sha256([*hops, resp.headers])
        commit = server_commit([*hops, resp.headers]) or commit
        if stated and not expected.sha256:
            stream.write(f"{label}: no published checksum; checking against the server's sha256 {stated}\n")
            expected = dataclasses.replace(expected, sha256=stated)
        if status == 416:
            resp.close()
        else:
            if offset and status != 206:
                stream.write(f"{label}: " + ("the file changed on the server since the part was fetched"
                                             if if_range else "the server does not resume downloads")
                             + "; starting again\n")
                offset = 0
            if status != 206:
                validator = _validator(resp.headers)
                if validator:
                    validator_file.write_text(validator + "\n")
                else:
                    validator_file.unlink(missing_ok=True)
                if commit:
                    commit_file.write_text(commit + "\n")
                else:
                    commit_file.unlink(missing_ok=True)
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else expected.size
            meter = Progress(label, total, stream, start=offset)
            done = offset
            try:
                with resp, part.open("ab" if offset else "wb") as out:
                    while True:
                        try:
                            chunk = resp.read(CHUNK)
                        except (socket.timeout, TimeoutError) as exc:
                            raise DownloadError(f"{label}: no data for {timeout:g} s ({exc}); {done / 1e6:.1f} MB "
                                                f"kept in {part}: run the same command again to resume") from None
                        except (ConnectionError, OSError) as exc:
                            raise DownloadError(f"{label}: the connection broke ({exc}); {done / 1e6:.1f} MB kept "
                                                f"in {part}: run the same command again to resume") from None
                        if not chunk:
                            break
                        out.write(chunk)
                        done += len(chunk)
                        meter.update(done)
                        if progress:
                            progress(done, total)
                    out.flush()
                    os.fsync(out.fileno())
            except KeyboardInterrupt:
                stream.write(f"\n{label}: interrupted; {done / 1e6:.1f} MB kept in {part}: run the same command "
                             f"again to resume\n")
                raise
            meter.update(done, final=True)
            if total and done < total:
                raise DownloadError(f"{label}: the server closed the connection at {done} of {total} bytes; "
                                    f"the part is kept in {part}: run the same command again to resume")
    try:
        sha256 = finish(part, dest, expected, label, stream)
        write_source(dest, url, commit, sha256)
        return Downloaded(sha256, commit)
    finally:
        if not part.exists():
            validator_file.unlink(missing_ok=True)
            commit_file.unlink(missing_ok=True)


def finish(part: Path, dest: Path, expected: Expected, label: str, stream: TextIO) -> str:
    """Check ``part`` against ``expected`` and move it to ``dest``; returns its sha256."""
    size = part.stat().st_size
    if expected.size and size != expected.size:
        part.unlink()
        raise ChecksumError(f"{label}: {size} bytes instead of {expected.size}; the download was deleted, "
                            f"run the same command again")
    stream.write(f"{label}: checking the checksum\n")
    hashes = _hash_file(part, ("sha256", "md5") if expected.md5 else ("sha256",))
    sha256 = hashes["sha256"].hexdigest()
    for name, want in (("sha256", expected.sha256), ("md5", expected.md5)):
        got = hashes[name].hexdigest() if name in hashes else ""
        if want and got != want.lower():
            part.unlink()
            raise ChecksumError(f"{label}: {name} mismatch: expected {want}, got {got}. The file is corrupt or "
                                f"not the published one; it was deleted. Run the same command again")
    os.replace(part, dest)
    write_sha256(dest, sha256)
    return sha256


def write_sha256(path: Path, sha256: str) -> None:
    """Record ``path``'s sha256 beside it as ``<path>.sha256`` (``sha256sum -c`` format)."""
    path.with_name(path.name + ".sha256").write_text(f"{sha256}  {path.name}\n")


def write_source(path: Path, url: str, commit: str, sha256: str) -> None:
    """Record where ``path`` came from as ``<path>.source``: the URL asked for, the commit served, the sha256."""
    record = {"url": url, "commit": commit, "sha256": sha256}
    path.with_name(path.name + ".source").write_text(json.dumps(record) + "\n")


def recorded_source(path: Path) -> dict[str, str]:
    """What ``write_source`` recorded beside ``path`` (empty if nothing or unreadable)."""
    try:
        record = json.loads(path.with_name(path.name + ".source").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in record.items() if isinstance(v, str)} if isinstance(record, dict) else {}


def recorded_sha256(path: Path) -> Optional[str]:
    """The sha256 recorded beside ``path`` when it was downloaded, if any."""
    try:
        return path.with_name(path.name + ".sha256").read_text().split()[0]
    except (OSError, IndexError):
        return None
