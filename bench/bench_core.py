"""edgebotd + edgebot-cli against raw llama-cpp-python, same model, threads, prompt and sampling.

Runs are interleaved (raw, daemon, raw, daemon, ...) so background load hits both alike; the
report gives medians and ratios. Each run starts its prompt with a fresh number, so neither side
reuses more of its KV cache than the BOS and the first template token.

    .venv/bin/python bench/bench_core.py [--runs 5] [--tokens 64] [--model PATH]

Measured:
- decode tokens/s: (tokens - 1) / (time of last token - time of first token), seen by the client
  (the CLI's --json lines as they arrive; raw: the streamed chunks);
- TTFT: raw = from the create_completion call to the first token; edgebotd = from spawning
  ``edgebot-cli ask`` to its first streamed token (so the CLI's own start-up is included);
- CLI start-up: spawn-to-exit of ``edgebot-cli status`` against the running daemon;
- RSS: the daemon's resident memory (status-report) and the raw process's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket as socketlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
BIN = Path(sys.executable).parent
QUESTION = ("Question {n}: a classroom robot is asked to explain, in two short sentences, why the sky "
            "looks blue during the day and red at sunset. What should it say?")


def _die_with_parent() -> None:
    """In the child: SIGTERM it when the bench process dies, even by a crash (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")


def raw_run(llm, n: int, tokens: int) -> tuple[float, float]:
    """One raw llama-cpp-python streaming completion: (ttft seconds, decode tokens/s)."""
    from edgebot.engine.prompt import render_segments

    prompt = "".join(s.text for s in render_segments(llm.metadata.get("tokenizer.chat_template"), [],
                                                      QUESTION.format(n=n)))  # create_completion adds the BOS
    t0 = time.perf_counter()
    stamps = []
    for chunk in llm.create_completion(prompt, max_tokens=tokens, temperature=0.6, top_p=0.95, top_k=40, stream=True):
        if chunk["choices"][0]["text"]:  # the closing chunk carries no token
            stamps.append(time.perf_counter())
    return stamps[0] - t0, rate(stamps)


def daemon_run(sock: str, n: int, tokens: int) -> tuple[float, float, int]:
    """One ``edgebot-cli ask --json``: (ttft seconds incl. CLI start-up, decode tokens/s, tokens)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "edgebot-cli"), "--socket", sock, "ask", "--json", "--think",
                             "--max-tokens", str(tokens), QUESTION.format(n=n)], stdout=subprocess.PIPE, text=True)
    stamps = []
    end = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        ev = json.loads(line)
        if ev["type"] in ("answer-delta", "think-delta"):
            stamps.append(time.perf_counter())
        elif ev["type"] == "answer-end":
            end = ev["data"]
    proc.wait()
    # deltas may merge when the reader is behind; count tokens from the daemon's stats
    n_tok = end.get("stats", {}).get("completion_tokens", len(stamps))
    decode = (n_tok - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return stamps[0] - t0, decode, n_tok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per run")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--model", help="GGUF (default: the same-shape Q4_K_M stand-in, made once)")
    ap.add_argument("--raw-first", action="store_true",
                    help="load the raw baseline before starting edgebotd (load order changes llama.cpp's speed)")
    args = ap.parse_args()
    import llama_cpp
    from shape_model import ensure_shape_model

    model = args.model or str(ensure_shape_model())
    tmp = Path(tempfile.mkdtemp(prefix="edgebot-bench-"))
    sock = str(tmp / "bus.sock")
    notify = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    config = tmp / "bench.toml"
    config.write_text(f"[llm]\nn_ctx = 4096\nn_threads = {args.threads}\nn_batch = {args.batch}\n"
                      f"think_budget = {{cli = 100000}}\nseed = 1\n")
    base_rss = rss_mb()
    llm = None
    if args.raw_first:
        llm = llama_cpp.Llama(model, n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads,
                              n_batch=args.batch, seed=1, verbose=False)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock")}
    daemon = subprocess.Popen([str(BIN / "edgebotd"), "--config", str(config), "--model", model, "--socket", sock,
                               "--board", "generic-x86", "--log-level", "WARNING"], env=env,
                              preexec_fn=_die_with_parent)
    notify.settimeout(300)
    while b"READY=1" not in notify.recv(4096):
        pass
    if llm is None:
        llm = llama_cpp.Llama(model, n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads,
                              n_batch=args.batch, seed=1, verbose=False)
    raw_rss = rss_mb() - base_rss
    raw, via = [], []
    try:
        for i in range(args.runs + 1):  # run 0 warms both up and is not counted
            r = raw_run(llm, 1000 + i, args.tokens)
            d = daemon_run(sock, 2000 + i, args.tokens)
            if i:
                raw.append(r)
                via.append(d)
            print(f"run {i}: raw ttft {r[0] * 1000:.0f} ms {r[1]:.2f} tok/s | edgebotd ttft {d[0] * 1000:.0f} ms "
                  f"{d[1]:.2f} tok/s ({d[2]} tokens){'  (warm-up)' if not i else ''}", flush=True)
        startup = []
        for _ in range(10):
            t0 = time.perf_counter()
            subprocess.run([str(BIN / "edgebot-cli"), "--socket", sock, "status", "--json"], check=True,
                           stdout=subprocess.PIPE)
            startup.append(time.perf_counter() - t0)
        status = json.loads(subprocess.run([str(BIN / "edgebot-cli"), "--socket", sock, "status", "--json"],
                                           check=True, stdout=subprocess.PIPE, text=True).stdout)["data"]
    finally:
        daemon.terminate()
        daemon.wait()
    med = statistics.median
    raw_ttft, raw_dec = med(x[0] for x in raw) * 1000, med(x[1] for x in raw)
    d_ttft, d_dec = med(x[0] for x in via) * 1000, med(x[1] for x in via)
    print(f"\nmodel {Path(model).name}, {args.threads} threads, batch {args.batch}, {args.tokens} tokens, "
          f"{args.runs} runs (medians)")
    print("| measure | raw llama-cpp-python | edgebotd + edgebot-cli | ratio / difference | target |")
    print("|---|---|---|---|---|")
    print(f"| decode tokens/s | {raw_dec:.2f} | {d_dec:.2f} | {d_dec / raw_dec:.3f}x | >= 0.98x |")
    print(f"| time to first token | {raw_ttft:.0f} ms | {d_ttft:.0f} ms | {d_ttft - raw_ttft:+.0f} ms | <= +50 ms |")
    print(f"| CLI start-up (status, spawn to exit) | | {med(startup) * 1000:.0f} ms | | <= 100 ms |")
    print(f"| resident memory | {raw_rss:.0f} MiB (model in a bare process) | {status['memory']['rss_mb']:.0f} MiB "
          f"(whole daemon) | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
