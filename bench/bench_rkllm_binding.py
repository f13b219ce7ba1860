"""What the RKLLM binding itself costs, measured against the FAKE librkllmrt.so (no NPU here).

The fake streams its scripted tokens with no delay, so everything measured is edgebot's side: the
ctypes callback from the runtime's thread, the queue to the engine thread, UTF-8 decoding and the
think splitter's bookkeeping in the backend. On a board a token takes 60-120 ms on the NPU, so
this is the overhead to compare against. Also measured: how long ``generate`` takes to return
after cancel is set (abort, then ``rkllm_run`` returning), with the fake producing a token every
millisecond.

    .venv/bin/python bench/bench_rkllm_binding.py [--tokens 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rkllm_harness import build_fake, write_fake_model  # noqa: E402

from edgebot.engine.backend import SamplingParams  # noqa: E402
from edgebot.engine.backends.rkllm import RkllmBackend  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_fake(Path(tmp) / "lib", "1.3.0")
        words = ["</think>"] + [f" w{i}" for i in range(99)]
        fast = RkllmBackend(str(write_fake_model(Path(tmp) / "fast.rkllm", words, token_delay_us=0, loop=True)),
                            library=str(lib), n_ctx=args.tokens + 1024)
        paced = RkllmBackend(str(write_fake_model(Path(tmp) / "paced.rkllm", words, token_delay_us=1000, loop=True)),
                             library=str(lib), n_ctx=4096)
        fast.load()
        paced.load()
        per_token, cancel_ms = [], []
        try:
            for _ in range(args.runs):
                t0 = time.perf_counter()
                result = fast.generate(fast.prepare([], "go"), SamplingParams(), args.tokens, threading.Event(),
                                       lambda piece: None)
                per_token.append((time.perf_counter() - t0) / result.completion_tokens * 1e6)
                cancel = threading.Event()
                seen = [0]
                stamp: list[float] = []

                def on_piece(piece: str) -> None:
                    seen[0] += 1
                    if seen[0] == 50:
                        stamp.append(time.perf_counter())
                        cancel.set()

                paced.generate(paced.prepare([], "go"), SamplingParams(), 10_000, cancel, on_piece)
                cancel_ms.append((time.perf_counter() - stamp[0]) * 1000)
        finally:
            fast.close()
            paced.close()
    print(f"binding overhead per token: median {statistics.median(per_token):.1f} µs "
          f"(runs: {', '.join(f'{x:.1f}' for x in per_token)}; {args.tokens} tokens each)")
    print(f"cancel to generate() returning: median {statistics.median(cancel_ms):.2f} ms "
          f"(runs: {', '.join(f'{x:.2f}' for x in cancel_ms)}; a token every 1 ms)")


if __name__ == "__main__":
    main()
