"""edgebot-cli model pull/list/verify against a real HTTP server on loopback, and GGUF checks.

The server serves files from memory, honours Range requests (206) and If-Range (a whole 200 when
the file's ETag changed), can cut a response after N bytes (an interrupted download), redirects
``/lfs/NAME`` to ``/NAME`` with Hugging Face's ``X-Linked-Etag`` and records each request's headers.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from edgebot.gguf_info import GGML_TYPE_SIZES, read_gguf

BIN = Path(sys.executable).parent
CLI = str(BIN / "edgebot-cli")
REPO = Path(__file__).resolve().parents[1]


class FileServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``files``; ``cut[name] = n`` ends a response after n bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ranges: list[tuple[str, str]] = []
        self.if_ranges: list[str] = []
        self.linked_etag: dict[str, str] = {}  # name -> the sha256 /lfs/NAME states
        self.commits: dict[str, dict[str, bytes]] = {}  # as a Hugging Face repo: commit -> {name: bytes}
        self.main = ""  # the commit the branch `main` points to
        self.ignore_range = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                name = self.path.lstrip("/")
                if name.startswith("lfs/"):  # as huggingface.co/.../resolve/...: a redirect stating the sha256
                    self.send_response(302)
                    self.send_header("Location", "/" + name[4:])
                    self.send_header("X-Linked-Etag", f'"{outer.linked_etag[name[4:]]}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.ranges.append((name, self.headers.get("Range", "")))
                outer.if_ranges.append(self.headers.get("If-Range", ""))
                data = outer.files.get(name)
                commit = ""
                if name.startswith("hf/resolve/"):  # hf/resolve/<main|commit>/<file>, as huggingface.co
                    rev, _, file = name[len("hf/resolve/"):].partition("/")
                    commit = outer.main if rev == "main" else rev
                    data = outer.commits.get(commit, {}).get(file)
                if data is None:
                    self.send_error(404)
                    return
                etag = f'"{hashlib.md5(data).hexdigest()}"'
                start = 0
                rng = self.headers.get("Range", "")
                stale = self.headers.get("If-Range") not in (None, etag)  # changed since: send it whole
                if rng.startswith("bytes=") and not outer.ignore_range and not stale:
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("ETag", etag)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                limit = outer.cut.pop(name, None)
                if limit is not None:
                    self.wfile.write(body[:limit])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)  # the connection breaks mid-file
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.close()


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # 3 MiB: several 1 MiB reads, so progress has steps
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_pull_shows_progress_and_checks_the_checksum(server: FileServer, tmp_path: Path) -> None:
    server.files["m.gguf"] = PAYLOAD
    r = cli("model", "pull", "--url", f"{server.url}/m.gguf", "--sha256", SHA, "--dir", str(tmp_path), "m.gguf")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.gguf").read_bytes() == PAYLOAD
    assert (tmp_path / "m.gguf.sha256").read_text() == f"{SHA}  m.gguf\n"
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("m.gguf:") and "%" in ln]
    assert len(lines) >= 3 and lines[-1].split()[1] == "100%", r.stderr  # not a tty: one line per step
    assert "checking the checksum" in r.stderr
    # a second pull downloads nothing
    again = cli("model", "pull", "--url", f"{server.url}/m.gguf", "--sha256", SHA, "--dir", str(tmp_path), "m.gguf")
    assert again.returncode == 0 and "already present" in again.stdout
    assert len(server.ranges) == 1


def test_interrupted_download_resumes_with_a_range_request(server: FileServer, tmp_path: Path) -> None:
    server.files["m.gguf"] = PAYLOAD
    server.cut["m.gguf"] = 1_500_000
    args = ("model", "pull", "--url", f"{server.url}/m.gguf", "--sha256", SHA, "--dir", str(tmp_path), "m.gguf")
    first = cli(*args)
    assert first.returncode == 1
    assert "run the same command again to resume" in first.stderr
    part = tmp_path / "m.gguf.part"
    assert part.stat().st_size == 1_500_000 and not (tmp_path / "m.gguf").exists()
    second = cli(*args)
    assert second.returncode == 0, second.stderr
    assert "resuming at 1.5 MB" in second.stderr
    assert server.ranges[-1] == ("m.gguf", "bytes=1500000-")
    assert (tmp_path / "m.gguf").read_bytes() == PAYLOAD and not part.exists()


def test_a_file_changed_upstream_is_fetched_whole_not_joined_to_the_old_part(server: FileServer,
                                                                             tmp_path: Path) -> None:
    """No published checksum (as for the Q4_0 model): only If-Range keeps the two halves apart."""
    old, new = PAYLOAD, os.urandom(len(PAYLOAD))
    server.files["m.gguf"] = old
    server.cut["m.gguf"] = 1_500_000
    args = ("model", "pull", "--url", f"{server.url}/m.gguf", "--dir", str(tmp_path), "m.gguf")
    assert cli(*args).returncode == 1
    assert (tmp_path / "m.gguf.part").stat().st_size == 1_500_000
    server.files["m.gguf"] = new  # the upstream file changes before the resume
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert server.if_ranges[-1] == f'"{hashlib.md5(old).hexdigest()}"'  # the first response's ETag
    assert "the file changed on the server since the part was fetched; starting again" in r.stderr
    assert (tmp_path / "m.gguf").read_bytes() == new
    assert (tmp_path / "m.gguf.sha256").read_text().split()[0] == hashlib.sha256(new).hexdigest()
    assert not (tmp_path / "m.gguf.part.validator").exists()


def test_an_unchanged_file_resumes_with_if_range(server: FileServer, tmp_path: Path) -> None:
    server.files["m.gguf"] = PAYLOAD
    server.cut["m.gguf"] = 1_000_000
    args = ("model", "pull", "--url", f"{server.url}/m.gguf", "--dir", str(tmp_path), "m.gguf")
    assert cli(*args).returncode == 1
    r = cli(*args)
    assert r.returncode == 0 and "resuming at 1.0 MB" in r.stderr, r.stderr
    assert server.ranges[-1] == ("m.gguf", "bytes=1000000-") and server.if_ranges[-1]
    assert (tmp_path / "m.gguf").read_bytes() == PAYLOAD


def test_the_sha256_hugging_face_states_is_checked(server: FileServer, tmp_path: Path) -> None:
    """A file without a published checksum is checked against the redirect's X-Linked-Etag (LFS sha256)."""
    corrupt = bytearray(PAYLOAD)
    corrupt[10] ^= 0xFF
    server.files["m.gguf"] = bytes(corrupt)
    server.linked_etag["m.gguf"] = SHA  # what the publisher uploaded
    r = cli("model", "pull", "--url", f"{server.url}/lfs/m.gguf", "--dir", str(tmp_path), "m.gguf")
    assert r.returncode == 1 and f"sha256 mismatch: expected {SHA}" in r.stderr, r.stderr
    assert not (tmp_path / "m.gguf").exists()
    server.files["m.gguf"] = PAYLOAD
    r = cli("model", "pull", "--url", f"{server.url}/lfs/m.gguf", "--dir", str(tmp_path), "m.gguf")
    assert r.returncode == 0 and f"checking against the server's sha256 {SHA}" in r.stderr, r.stderr


def test_hf_endpoint_sends_hugging_face_downloads_to_a_mirror(server: FileServer, tmp_path: Path) -> None:
    path = "bartowski/m-GGUF/resolve/main/m.gguf"
    server.files[path] = PAYLOAD
    r = cli("model", "pull", "--url", f"https://huggingface.co/{path}", "--sha256", SHA, "--dir", str(tmp_path),
            "m.gguf", env={"HF_ENDPOINT": server.url + "/"})
    assert r.returncode == 0, r.stderr
    assert server.ranges == [(path, "")] and (tmp_path / "m.gguf").read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_cleanly(server: FileServer, tmp_path: Path) -> None:
    server.files["m.gguf"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "m.gguf.part").write_bytes(PAYLOAD[:1000])
    r = cli("model", "pull", "--url", f"{server.url}/m.gguf", "--sha256", SHA, "--dir", str(tmp_path), "m.gguf")
    assert r.returncode == 0, r.stderr
    assert "does not resume downloads; starting again" in r.stderr
    assert (tmp_path / "m.gguf").read_bytes() == PAYLOAD


def test_corrupted_download_is_rejected_by_its_checksum(server: FileServer, tmp_path: Path) -> None:
    corrupt = bytearray(PAYLOAD)
    corrupt[2_000_000] ^= 0xFF
    server.files["m.gguf"] = bytes(corrupt)
    r = cli("model", "pull", "--url", f"{server.url}/m.gguf", "--sha256", SHA, "--dir", str(tmp_path), "m.gguf")
    assert r.returncode == 1
    assert f"sha256 mismatch: expected {SHA}, got {hashlib.sha256(corrupt).hexdigest()}" in r.stderr
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.gguf.part").exists()


def test_offline_error_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: connection refused, as when offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = cli("model", "pull", "--url", f"http://127.0.0.1:{port}/m.gguf", "--dir", str(tmp_path), "m.gguf")
    assert r.returncode == 4
    assert f"cannot reach 127.0.0.1:{port}" in r.stderr and "seems to be offline" in r.stderr
    unresolvable = cli("model", "pull", "--url", "http://edgebot-test.invalid/m.gguf", "--dir", str(tmp_path),
                       "m.gguf")
    assert unresolvable.returncode == 4 and "cannot reach edgebot-test.invalid" in unresolvable.stderr


def _zip(top: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{top}/conf/model.conf", "--sample-frequency=16000\n")
        zf.writestr(f"{top}/am/final.mdl", os.urandom(5000))
    return buf.getvalue()


def test_catalogue_pull_via_a_mirror_unpacks_and_fetches_companions(server: FileServer, tmp_path: Path) -> None:
    archive = _zip("vosk-model-small-xx-0.1")
    onnx, onnx_json = os.urandom(4096), b'{"audio": {"sample_rate": 22050}}'
    server.files.update({"vosk-model-small-xx-0.1.zip": archive, "xx-voice.onnx": onnx,
                         "xx-voice.onnx.json": onnx_json})
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps([
        {"name": "vosk-xx", "kind": "stt", "url": "https://example.invalid/vosk-model-small-xx-0.1.zip",
         "filename": "vosk-model-small-xx-0.1.zip", "sha256": hashlib.sha256(archive).hexdigest(),
         "language": "en", "unpack": "zip", "unpacks_to": "vosk-model-small-xx-0.1", "default": True},
        {"name": "voice-xx", "kind": "tts", "url": "https://example.invalid/xx-voice.onnx",
         "filename": "xx-voice.onnx", "size": len(onnx), "md5": hashlib.md5(onnx).hexdigest(),
         "language": "en", "default": True,
         "companions": [{"name": "voice-xx.json", "kind": "tts", "url": "https://example.invalid/xx-voice.onnx.json",
                         "filename": "xx-voice.onnx.json", "md5": hashlib.md5(onnx_json).hexdigest()}]},
    ]))
    dest = tmp_path / "voices"
    env = {"EDGEBOT_MODEL_MIRROR": server.url + "/"}  # the catalogue's hosts are never contacted
    r = cli("model", "pull", "--catalog", str(catalog), "--dir", str(dest), env=env)
    assert r.returncode == 0, r.stderr
    unpacked = dest / "vosk-model-small-xx-0.1"
    assert (unpacked / "conf" / "model.conf").read_text().startswith("--sample-frequency")
    assert not (dest / "vosk-model-small-xx-0.1.zip").exists()
    assert (dest / "xx-voice.onnx").read_bytes() == onnx and (dest / "xx-voice.onnx.json").read_bytes() == onnx_json
    again = cli("model", "pull", "--catalog", str(catalog), "--dir", str(dest), env=env)
    assert again.stdout.count("already") == 3, again.stdout
    listed = json.loads(cli("model", "list", "--catalog", str(catalog), "--dir", str(dest), "--json").stdout)
    assert {row["name"]: row["installed"] for row in listed if row["note"] != "not from the catalogue"} == \
        {"vosk-xx": True, "voice-xx": True}


def test_list_shows_what_the_config_points_to(tmp_path: Path, script_model: Path) -> None:
    cfg = tmp_path / "edgebot.toml"
    cfg.write_text(f'[llm]\nmodel = "{script_model}"\n')
    r = cli("--config", str(cfg), "model", "list", "--dir", str(tmp_path))
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if str(script_model) in ln)
    assert line.startswith("installed") and line.endswith("<- config")
    assert "deepseek-r1-distill-qwen-1.5b-q4_k_m" in r.stdout  # the catalogue, marked missing
    assert next(ln for ln in r.stdout.splitlines() if "q4_k_m" in ln).startswith("missing")


def test_verify_accepts_the_script_model(script_model: Path) -> None:
    r = cli("model", "verify", str(script_model))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "architecture: qwen2, context length: 4096 tokens, chat template: yes" in r.stdout
    assert r.stdout.rstrip().endswith(f"{script_model}: OK")


def test_verify_rejects_truncated_foreign_and_templateless_files(tmp_path: Path, script_model: Path) -> None:
    data = script_model.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-1000])  # header intact, tensor data short
    r = cli("model", "verify", str(cut))
    assert r.returncode == 1 and "truncated: the tensors end at byte" in r.stdout and "1000 missing" in r.stdout
    head_only = tmp_path / "head.gguf"
    head_only.write_bytes(data[:5000])  # cut inside the metadata
    r = cli("model", "verify", str(head_only))
    assert r.returncode == 1 and "truncated header" in r.stdout
    zipfile_ = tmp_path / "model.gguf"
    zipfile_.write_bytes(b"PK\x03\x04not a model")
    r = cli("model", "verify", str(zipfile_))
    assert r.returncode == 1 and "not a GGUF file (starts with b'PK\\x03\\x04'" in r.stdout
    assert "edgebot-cli model pull" in r.stderr

    import gguf  # dev dependency: writes a GGUF without a chat template

    bare = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(str(bare), "llama")
    writer.add_context_length(2048)
    writer.add_token_list(["a", "b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    r = cli("model", "verify", str(bare))
    assert r.returncode == 1 and "no tokenizer.chat_template" in r.stdout


def test_verify_notices_a_file_changed_since_download(server: FileServer, tmp_path: Path, script_model: Path) -> None:
    data = script_model.read_bytes()
    server.files["s.gguf"] = data
    assert cli("model", "pull", "--url", f"{server.url}/s.gguf", "--dir", str(tmp_path), "s.gguf").returncode == 0
    assert "sha256 matches the one recorded" in cli("model", "verify", str(tmp_path / "s.gguf")).stdout
    changed = bytearray(data)
    changed[-10] ^= 1  # a flipped bit in the weights: the header still parses
    (tmp_path / "s.gguf").write_bytes(bytes(changed))
    r = cli("model", "verify", str(tmp_path / "s.gguf"))
    assert r.returncode == 1 and "differs from the" in r.stdout


def test_gguf_type_table_matches_gguf_py() -> None:
    from gguf.constants import GGML_QUANT_SIZES

    for ttype, sizes in GGML_TYPE_SIZES.items():
        assert tuple(GGML_QUANT_SIZES[gguf_type(ttype)]) == sizes


def gguf_type(value: int):  # noqa: ANN201 - gguf's enum
    from gguf.constants import GGMLQuantizationType

    return GGMLQuantizationType(value)


def test_kv_cache_size_of_the_real_shape(script_model: Path) -> None:
    info = read_gguf(script_model)
    # script model: 1 layer, n_embd 64; the arithmetic is the same for the real 28-layer model
    heads, kv_heads = info.arch_value("attention.head_count"), info.arch_value("attention.head_count_kv")
    assert info.kv_bytes_per_token() == 2 * 1 * kv_heads * (64 // heads) * 2


def test_get_model_script_wraps_model_pull(server: FileServer, tmp_path: Path) -> None:
    server.files["g.gguf"] = PAYLOAD
    r = subprocess.run([str(REPO / "deploy" / "get-model.sh"), "--url", f"{server.url}/g.gguf", "--sha256", SHA,
                        "--dir", str(tmp_path), "g.gguf"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "EDGEBOT_CLI": CLI})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g.gguf").read_bytes() == PAYLOAD


COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def test_a_resume_fetches_the_commit_the_first_part_came_from(server: FileServer, tmp_path: Path) -> None:
    """The branch moves between the two halves: the rest comes from the first half's commit, not the new one."""
    old, new = PAYLOAD, os.urandom(len(PAYLOAD))
    server.commits = {COMMIT_A: {"m.gguf": old}, COMMIT_B: {"m.gguf": new}}
    server.main = COMMIT_A
    server.cut["hf/resolve/main/m.gguf"] = 1_500_000
    args = ("model", "pull", "--url", f"{server.url}/hf/resolve/main/m.gguf", "--dir", str(tmp_path), "m.gguf")
    assert cli(*args).returncode == 1
    assert (tmp_path / "m.gguf.part.commit").read_text().strip() == COMMIT_A
    server.main = COMMIT_B  # a new upload on the branch
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"from commit {COMMIT_A[:12]}" in r.stderr and f"(commit {COMMIT_A})" in r.stdout
    assert server.ranges[-1] == (f"hf/resolve/{COMMIT_A}/m.gguf", "bytes=1500000-")
    assert (tmp_path / "m.gguf").read_bytes() == old
    source = json.loads((tmp_path / "m.gguf.source").read_text())
    assert source["commit"] == COMMIT_A and source["sha256"] == SHA
    assert not (tmp_path / "m.gguf.part.commit").exists()


def test_list_shows_the_commit_and_revision_pins_another_board(server: FileServer, tmp_path: Path) -> None:
    """A teacher reads the commit on one board (`model list`) and pulls exactly it on the next."""
    old, new = PAYLOAD, os.urandom(len(PAYLOAD))
    server.commits = {COMMIT_A: {"m.gguf": old}, COMMIT_B: {"m.gguf": new}}
    server.main = COMMIT_A
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps([{"name": "m", "kind": "llm", "url": f"{server.url}/hf/resolve/main/m.gguf",
                                    "filename": "m.gguf", "default": True}]))
    board1, board2 = tmp_path / "board1", tmp_path / "board2"
    assert cli("model", "pull", "--catalog", str(catalog), "--dir", str(board1), "m").returncode == 0
    listed = cli("model", "list", "--catalog", str(catalog), "--dir", str(board1), "--json")
    assert json.loads(listed.stdout)[0]["commit"] == COMMIT_A
    assert f"@{COMMIT_A[:12]}" in cli("model", "list", "--catalog", str(catalog), "--dir", str(board1)).stdout
    server.main = COMMIT_B
    r = cli("model", "pull", "--catalog", str(catalog), "--dir", str(board2), "m", "--revision", COMMIT_A)
    assert r.returncode == 0, r.stderr
    assert (board2 / "m.gguf").read_bytes() == old and server.ranges[-1][0] == f"hf/resolve/{COMMIT_A}/m.gguf"
    # the board that has commit A, asked for B: fetched again, and the file's recorded sha256 is not held against it
    r = cli("model", "pull", "--catalog", str(catalog), "--dir", str(board1), "m", "--revision", COMMIT_B)
    assert r.returncode == 0 and f"came from commit {COMMIT_A}, not {COMMIT_B}" in r.stderr, r.stderr
    assert (board1 / "m.gguf").read_bytes() == new
    bad = cli("model", "pull", "--catalog", str(catalog), "--dir", str(board2), "m", "--revision", "main")
    assert bad.returncode == 2 and "is not a commit id" in bad.stderr
    two = cli("model", "pull", "--revision", COMMIT_A, "--dir", str(board2))
    assert two.returncode == 2 and "needs exactly one NAME" in two.stderr
