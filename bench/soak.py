"""Soak run of tests/hostile (by hand, not in CI): the same tests with the long counts.

    .venv/bin/python bench/soak.py [--rss-asks 1000] [--fuzz 100000] [--load-rounds 5]

- memory: ``test_resident_memory_stays_flat_across_sequential_asks`` with ``--rss-asks``
  sequential asks after warm-up (CI runs 200);
- fuzzing: the bus-codec and serial-parser property tests with ``--fuzz`` examples each (CI 10,000);
- load: the 50-CLI + 10-raw-client test ``--load-rounds`` times, each on a fresh edgebotd.

Prints every figure the tests print (``rss:``, ``load:``) and a summary; exits non-zero when any
run failed. The figures go into docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--timeout", "7200"]


def run(label: str, args: list[str], env: dict[str, str]) -> tuple[bool, list[str], float]:
    start = time.monotonic()
    proc = subprocess.run(PYTEST + args, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    took = time.monotonic() - start
    figures = [line.strip() for line in proc.stdout.splitlines() if re.match(r"\s*(rss|load):", line)]
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    print(f"{label}: {'ok' if proc.returncode == 0 else 'FAILED'} in {took:.0f} s; {' | '.join(figures + tail)}",
          flush=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    return proc.returncode == 0, figures, took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rss-asks", type=int, default=1000)
    p.add_argument("--fuzz", type=int, default=100_000)
    p.add_argument("--load-rounds", type=int, default=5)
    args = p.parse_args()
    results = []
    results.append(run(f"memory, {args.rss_asks} sequential asks",
                       ["tests/hostile/test_load.py", "-k", "resident_memory"],
                       {"EDGEBOT_HOSTILE_RSS_ASKS": str(args.rss_asks)}))
    results.append(run(f"fuzzing, {args.fuzz} examples each (codec, serial parser)",
                       ["tests/hostile/test_bad_input.py", "-k", "fuzz"], {"EDGEBOT_FUZZ_EXAMPLES": str(args.fuzz)}))
    for i in range(args.load_rounds):
        results.append(run(f"load round {i + 1}", ["tests/hostile/test_load.py", "-k", "50_cli"], {}))
    failed = sum(not ok for ok, _, _ in results)
    print(f"soak: {len(results) - failed}/{len(results)} runs passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
