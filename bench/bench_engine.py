"""Issue 14's figures: many askers and long conversations, against raw llama.cpp and llama-server.

Every sub-command measures its baselines in the same run (same model, threads, batch, sampling:
top-k 40, top-p 0.95, temperature 0.6) and prints medians and ratios. The model is the same-shape
stand-in on the real tokenizer (bench/shape_model.py) unless --model says otherwise.

    B=".venv/bin/python bench/bench_engine.py"
    $B raw                     # raw llama.cpp: 1, 2, 4 sequences per llama_decode; KV bytes per sequence
    $B askers [--raw-first]    # N concurrent bus askers against edgebotd vs raw batched decode at N
    $B single                  # single stream, edgebotd vs raw create_completion, both load orders (bench_core.py)
    $B voice                   # voice TTFT while a 400-token answer runs vs idle
    $B session                 # a 30-turn session at n_ctx 2048: evaluated tokens and TTFT per turn
    $B memory                  # RSS with 8 live sessions; KV bytes per session
    $B saved --turns 10        # a session back after losing its sequence: put back from RAM vs read again
    $B askers --target llama-server ; $B session --target llama-server   # the same against llama-server
                               # (bench/build_llama_server.sh builds it; --parallel 4, context shift on)

OMP_WAIT_POLICY is PASSIVE for every side unless --omp-wait says otherwise: on a machine whose cores
are shared with other work, llama.cpp's OpenMP threads spinning at barriers made 2-thread decode up
to 18x slower than 1 thread (docs/benchmarks.md).
--daemon-config adds TOML to edgebotd's bench config (e.g. '[engine]\\nparallel = 4'); the bench sets
[llm] n_ctx, n_threads, n_batch and seed itself.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from engine_clients import (AskResult, ContextFull, Edgebotd, LlamaServer, aggregate, bus_ask,  # noqa: E402
                            bus_cancel, bus_status, http_chat)

med = statistics.median
TOPICS = ["why the sky looks blue during the day and red at sunset", "how a bicycle stays upright when it moves",
          "what makes bread rise in a warm oven", "why the moon shows phases over a month",
          "how a rainbow forms after a summer storm", "why ice floats on a cold lake",
          "how bees find their way back to the hive", "what a volcano does before it erupts",
          "why leaves change colour in the autumn", "how a magnet can pick up a paper clip"]


def question(n: int) -> str:
    """A question of ~35 real tokens, different for every n (so no asker reuses another's cache)."""
    return (f"Question {n}: a classroom robot is asked to explain, in two short sentences, "
            f"{TOPICS[n % len(TOPICS)]}. What should it say?")


def script_model() -> Path:
    """The looping scripted model on the real tokenizer: real token counts at almost no cost per token."""
    from dataclasses import replace

    from shape_model import CACHE

    from edgebot.testing.qwen2_vocab import find_vocab
    from edgebot.testing.script_model import REAL_VOCAB_SCRIPT, write_script_model

    out = CACHE / "real-vocab-script-loop.gguf"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        write_script_model(out, replace(REAL_VOCAB_SCRIPT, loop=True), vocab=find_vocab())
    return out


def daemon_config(args: argparse.Namespace, n_ctx: int) -> str:
    return (f"[llm]\nn_ctx = {n_ctx}\nn_threads = {args.threads}\nn_batch = {args.batch}\nseed = 1\n"
            + args.daemon_config.replace("\\n", "\n") + "\n")


def server_args(args: argparse.Namespace, n_ctx: int) -> list[str]:
    """llama-server with --parallel 4 slots of ``n_ctx`` each, context shift on, edgebotd's threads/batch."""
    return ["-c", str(4 * n_ctx), "--parallel", "4", "--context-shift", "-t", str(args.threads), "-tb",
            str(args.threads), "-b", str(args.batch), "-ub", str(args.batch), "-fa", "off", *args.server_args.split()]


def server_binary() -> str:
    out = subprocess.run([str(HERE / "build_llama_server.sh")], check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


def load_raw(args: argparse.Namespace):
    from raw_batched import RawModel

    return RawModel.load(args.model, n_ctx=4096 if args.raw_kv == "shared" else 4 * 4096, threads=args.threads,
                         n_batch=args.batch, n_seq_max=4, unified=args.raw_kv == "shared")


def prompt_text(q: str) -> str:
    from edgebot.engine.chat_template import ASSISTANT_TEXT, BOS_TEXT, THINK_OPEN, USER_TEXT

    return f"{BOS_TEXT}{USER_TEXT}{q}{ASSISTANT_TEXT}{THINK_OPEN}\n"


def cmd_raw(args: argparse.Namespace) -> None:
    from raw_batched import batched_decode

    rm = load_raw(args)
    rates: dict[int, list[float]] = {1: [], 2: [], 4: []}
    for r in range(args.runs):
        for n in rates:
            prompts = [rm.tokenize(prompt_text(question(100 * r + 10 * n + i))) for i in range(n)]
            rate, _ = batched_decode(rm, prompts, args.tokens, args.batch)
            rates[n].append(rate)
            print(f"run {r}: {n} sequence(s) per llama_decode: {rate:.2f} tokens/s", flush=True)
    kv = rm.seq_state_bytes(0) / (len(prompts[0]) + args.tokens)
    rm.close()
    print("\n| sequences per llama_decode | aggregate decode, tokens/s | vs 1 sequence |\n|---|---|---|")
    for n, xs in rates.items():
        print(f"| {n} | {med(xs):.2f} | {med(xs) / med(rates[1]):.2f}x |")
    print(f"\nKV state of one sequence: {kv / 1024:.1f} KiB per token ({kv * 2048 / 2**20:.0f} MiB for 2048 tokens)")


async def _askers(sock: str, n: int, base: int, tokens: int) -> list[AskResult]:
    go = asyncio.Event()
    connected = [asyncio.Event() for _ in range(n)]
    tasks = [asyncio.create_task(bus_ask(sock, f"a{base + i}", question(base + i), max_tokens=tokens,
                                         think_budget=100000, connected=c, after=go)) for i, c in enumerate(connected)]
    await asyncio.gather(*(c.wait() for c in connected))  # every asker has said hello: all asks leave together
    go.set()
    return list(await asyncio.gather(*tasks))


def _server_askers(port: int, n: int, base: int, tokens: int) -> list[AskResult]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        futs = [pool.submit(http_chat, port, [{"role": "user", "content": question(base + i)}], max_tokens=tokens,
                            think_budget=-1, seed=base + i) for i in range(n)]
        return [f.result() for f in futs]


def cmd_askers(args: argparse.Namespace) -> None:
    from raw_batched import batched_decode

    rm = load_raw(args) if args.raw_first else None
    target = LlamaServer(server_binary(), args.model, server_args(args, 4096)) if args.target == "llama-server" \
        else Edgebotd(args.model, daemon_config(args, 4096))
    rm = rm or load_raw(args)
    ns = (1, 2, 4)
    raw: dict[int, list[float]] = {n: [] for n in ns}
    prefill_s: dict[int, list[float]] = {n: [] for n in ns}
    got: dict[int, list[tuple[float, float, list[float]]]] = {n: [] for n in ns}
    try:
        for r in range(args.runs + 1):  # run 0 warms up and is not counted
            for n in ns:
                base = 1000 * (r + 1) + 10 * n
                rate, pre = batched_decode(rm, [rm.tokenize(prompt_text(question(base + 500 + i))) for i in range(n)],
                                           args.tokens, args.batch)
                if isinstance(target, Edgebotd):
                    res = asyncio.run(_askers(target.sock, n, base, args.tokens))
                else:
                    res = _server_askers(target.port, n, base, args.tokens)
                overall, window = aggregate(res)
                ttfts = [x.ttft for x in res]
                print(f"run {r}: n={n} raw {rate:.2f} tok/s | {args.target} overall {overall:.2f} tok/s, all-streaming "
                      f"{window:.2f} tok/s, TTFT " + " ".join(f"{t * 1000:.0f}" for t in ttfts) + " ms"
                      + ("  (warm-up)" if not r else ""), flush=True)
                if r:
                    raw[n].append(rate)
                    prefill_s[n].append(med(pre))
                    got[n].append((overall, window, ttfts))
    finally:
        target.stop()
        rm.close()
    step1 = 1 / med(raw[1])
    print(f"\n{args.target}, {args.threads} threads, {args.tokens} tokens an answer, {args.runs} runs (medians), "
          f"{'raw loaded first' if args.raw_first else f'{args.target} loaded first'}, raw KV {args.raw_kv}")
    print(f"| askers | raw llama.cpp, N seqs per llama_decode | {args.target} overall | ratio | all streaming | "
          f"ratio | vs 1 asker | TTFT median / max | raw prompt + 4 steps |\n|---|---|---|---|---|---|---|---|---|")
    one = med(g[0] for g in got[1])
    for n in ns:
        o = med(g[0] for g in got[n])
        w = [g[1] for g in got[n] if not math.isnan(g[1])]
        wm = med(w) if w else float("nan")
        t_all = [t for g in got[n] for t in g[2]]
        bound = med(prefill_s[n]) + 4 * n / med(raw[n])
        ws = f"{wm:.2f} | {wm / med(raw[n]):.3f}x" if w else "— (answers never overlapped) | —"
        print(f"| {n} | {med(raw[n]):.2f} | {o:.2f} | {o / med(raw[n]):.3f}x | {ws} | "
              f"{o / one:.2f}x | {med(t_all) * 1000:.0f} / {max(t_all) * 1000:.0f} ms | {bound * 1000:.0f} ms |")
    print(f"(one raw decode step at 1 sequence: {step1 * 1000:.0f} ms)")


def cmd_single(args: argparse.Namespace) -> None:
    ratios = []
    for extra in ([], ["--raw-first"]):
        out = subprocess.run([sys.executable, str(HERE / "bench_core.py"), "--runs", str(args.runs), "--tokens",
                              str(args.tokens), "--threads", str(args.threads), "--batch", str(args.batch),
                              "--model", args.model, *extra], check=True, stdout=subprocess.PIPE, text=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("| decode tokens/s"))
        ttft = next(x for x in out.splitlines() if x.startswith("| time to first token"))
        ratios.append(float(re.search(r"\| ([\d.]+)x \|", line).group(1)))
        print(f"{'raw first' if extra else 'edgebotd first'}: {line}\n  {ttft}", flush=True)
    print(f"\nsingle-stream decode, edgebotd / raw create_completion: {ratios[0]:.3f}x (edgebotd first), "
          f"{ratios[1]:.3f}x (raw first), geometric mean {math.sqrt(ratios[0] * ratios[1]):.3f}x")


async def _voice(sock: str, runs: int, long_tokens: int) -> tuple[list[float], list[float]]:
    idle, busy = [], []
    for r in range(runs):
        v = await bus_ask(sock, f"vi{r}", question(300 + r), source="voice", max_tokens=8)
        idle.append(v.ttft)
        seen = asyncio.Event()
        long = asyncio.create_task(bus_ask(sock, f"long{r}", question(400 + r), max_tokens=long_tokens,
                                           think_budget=100000, pieces_seen=seen, pieces=10))
        await seen.wait()
        v = await bus_ask(sock, f"vb{r}", question(500 + r), source="voice", max_tokens=8)
        busy.append(v.ttft)
        await bus_cancel(sock, f"long{r}")
        res = await long
        print(f"run {r}: voice TTFT idle {idle[-1] * 1000:.0f} ms, during a {long_tokens}-token answer "
              f"{busy[-1] * 1000:.0f} ms (that answer ended {res.reason} after {res.completion_tokens} tokens)",
              flush=True)
    return idle, busy


def cmd_voice(args: argparse.Namespace) -> None:
    d = Edgebotd(args.model, daemon_config(args, 4096))
    try:
        asyncio.run(bus_ask(d.sock, "warm", question(1), max_tokens=4))
        idle, busy = asyncio.run(_voice(d.sock, args.runs, args.long_tokens))
    finally:
        d.stop()
    print(f"\n| voice TTFT | idle engine | during a {args.long_tokens}-token answer | ratio |\n|---|---|---|---|")
    print(f"| median of {args.runs} | {med(idle) * 1000:.0f} ms | {med(busy) * 1000:.0f} ms | "
          f"{med(busy) / med(idle):.2f}x |")


def cmd_session(args: argparse.Namespace) -> None:
    turns: list[AskResult] = []
    if args.target == "llama-server":
        srv = LlamaServer(server_binary(), args.model, server_args(args, args.n_ctx))
        history: list[dict[str, str]] = []
        try:
            for t in range(args.turns):
                history.append({"role": "user", "content": question(t)})
                while True:
                    try:
                        res = http_chat(srv.port, history, max_tokens=args.tokens, think_budget=args.think, seed=t)
                        break
                    except ContextFull:  # what a chat client does: drop the oldest exchange and resend
                        del history[:2]
                history.append({"role": "assistant", "content": res.text})
                turns.append(res)
                _turn_line(t, res)
        finally:
            srv.stop()
    else:
        d = Edgebotd(args.model, daemon_config(args, args.n_ctx))
        try:
            for t in range(args.turns):
                res = asyncio.run(bus_ask(d.sock, f"t{t}", question(t), session="bench", max_tokens=args.tokens,
                                          think_budget=args.think))
                turns.append(res)
                _turn_line(t, res)
        finally:
            d.stop()
    ev = [r.evaluated_tokens for r in turns]
    print(f"\n{args.target}, {args.turns} turns at n_ctx {args.n_ctx}, {args.tokens} tokens an answer "
          f"(think budget {args.think})")
    print(f"| | turn 3 | turn 10 | turn 20 | turn {args.turns} | median 2-{args.turns} | max 2-{args.turns} |\n|---|---|---|---|---|---|---|")
    pick = [turns[i] for i in (2, 9, 19, args.turns - 1)]
    print("| evaluated prompt tokens | " + " | ".join(str(r.evaluated_tokens) for r in pick)
          + f" | {med(ev[1:]):.0f} | {max(ev[1:])} |")
    print("| prompt tokens | " + " | ".join(str(r.prompt_tokens) for r in pick) + " | | |")
    tt = [r.ttft * 1000 for r in turns]
    print("| TTFT, ms | " + " | ".join(f"{r.ttft * 1000:.0f}" for r in pick) + f" | {med(tt[1:]):.0f} | {max(tt[1:]):.0f} |")
    print(f"turn {args.turns} TTFT / turn 3 TTFT: {turns[-1].ttft / turns[2].ttft:.2f}x")


def _turn_line(t: int, r: AskResult) -> None:
    print(f"turn {t + 1}: prompt {r.prompt_tokens} tokens, evaluated {r.evaluated_tokens}, TTFT {r.ttft * 1000:.0f} ms, "
          f"{r.completion_tokens} generated ({r.reason})", flush=True)


async def _memory(sock: str, sessions: int, turns: int) -> tuple[float, float, list]:
    before = (await bus_status(sock))["memory"]["rss_mb"]
    for t in range(turns):
        for s in range(sessions):
            await bus_ask(sock, f"m{s}-{t}", question(10 * s + t), session=f"live{s}", max_tokens=24, think_budget=8)
    st = await bus_status(sock)
    return before, st["memory"]["rss_mb"], st["sessions"]


def cmd_memory(args: argparse.Namespace) -> None:
    d = Edgebotd(args.model, daemon_config(args, 4096))
    try:
        before, after, sess = asyncio.run(_memory(d.sock, 8, 2))
    finally:
        d.stop()
    print(f"\nedgebotd RSS: {before:.0f} MiB after loading, {after:.0f} MiB with {len(sess)} live sessions of "
          f"{', '.join(str(s['turns']) for s in sess)} turns ({after - before:+.0f} MiB)")


async def _returning(sock: str, turns: int, tokens: int, run: int) -> AskResult:
    """Session A builds a history of ``turns`` turns, B and C take both sequences, then A asks again."""
    a = f"A{run}"
    for t in range(turns):
        await bus_ask(sock, f"{a}-{t}", question(700 + t), session=a, max_tokens=tokens, think_budget=8)
    for name in ("B", "C"):
        await bus_ask(sock, f"{name}{run}", question(800 + run), session=f"{name}{run}", max_tokens=8, think_budget=4)
    return await bus_ask(sock, f"{a}-back", question(900 + run), session=a, max_tokens=8, think_budget=4)


def cmd_saved(args: argparse.Namespace) -> None:
    """A session that lost its sequence (three sessions, two sequences) comes back: put back from RAM
    (``[engine] saved_sessions_mib``) against read again."""
    rows = []
    for mib in (0, 256):
        extra = f"[engine]\nsequences = 1\nparallel = 1\nkv_tokens = 8192\nsaved_sessions_mib = {mib}"
        d = Edgebotd(args.model, daemon_config(argparse.Namespace(**{**vars(args), "daemon_config": extra}), 4096))
        try:
            got = [asyncio.run(_returning(d.sock, args.turns, args.tokens, r)) for r in range(args.runs)]
        finally:
            d.stop()
        rows.append((mib, got))
        for r in got:
            print(f"saved_sessions_mib {mib}: prompt {r.prompt_tokens} tokens, evaluated {r.evaluated_tokens}, "
                  f"TTFT {r.ttft * 1000:.0f} ms", flush=True)
    print(f"\n| the returning session ({args.turns} turns of history) | prompt tokens | evaluated | TTFT |\n|---|---|---|---|")
    for mib, got in rows:
        print(f"| {'read again' if not mib else 'put back from RAM'} | {got[-1].prompt_tokens} | "
              f"{med([r.evaluated_tokens for r in got]):.0f} | {med([r.ttft for r in got]) * 1000:.0f} ms |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["raw", "askers", "single", "voice", "session", "memory", "saved"])
    ap.add_argument("--model", help="GGUF (default: the same-shape stand-in on the real tokenizer, made once; "
                                    "'script': the looping scripted model on the real tokenizer)")
    ap.add_argument("--target", choices=["edgebotd", "llama-server"], default="edgebotd")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=None,
                    help="tokens generated per answer (default 48; session: per turn, default 96, think budget included)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512, help="n_batch / n_ubatch (generic-x86's 512)")
    ap.add_argument("--raw-first", action="store_true", help="askers: load the raw baseline before the target")
    ap.add_argument("--long-tokens", type=int, default=400, help="voice: length of the answer running meanwhile")
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--n-ctx", type=int, default=2048, help="session: context per session (tokens)")
    ap.add_argument("--think", type=int, default=16, help="session: think budget per turn (tokens)")
    ap.add_argument("--omp-wait", choices=["passive", "active", "default"], default="passive",
                    help="OMP_WAIT_POLICY for every side (raw, edgebotd, llama-server); see docs/benchmarks.md")
    ap.add_argument("--daemon-config", default="", help="extra TOML for edgebotd, e.g. '[engine]\\nparallel = 4'")
    ap.add_argument("--raw-kv", choices=("per-sequence", "shared"), default="per-sequence",
                    help="raw llama.cpp's KV layout: split between the sequences (kv_unified false, as llama-server; "
                         "the faster here) or one shared cache (as edgebotd without [engine] kv_per_sequence)")
    ap.add_argument("--server-args", default="", help="extra llama-server arguments, e.g. '--cache-reuse 256'")
    args = ap.parse_args()
    if args.omp_wait != "default":  # before llama.cpp (and its OpenMP runtime) is loaded; children inherit it
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait.upper()
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load average "
          f"{os.getloadavg()[0]:.1f} at the start", flush=True)
    if args.tokens is None:
        args.tokens = 96 if args.what == "session" else 48
    if args.model == "script":
        args.model = str(script_model())
    elif not args.model:
        from shape_model import ensure_shape_model

        args.model = str(ensure_shape_model())
    {"raw": cmd_raw, "askers": cmd_askers, "single": cmd_single, "voice": cmd_voice, "session": cmd_session,
     "memory": cmd_memory, "saved": cmd_saved}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
