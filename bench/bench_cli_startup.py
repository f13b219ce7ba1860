"""edgebot-cli start-up against a bare interpreter: how long `status` and `ask` take, spawn to exit.

Starts a real edgebotd on the generated script model (real llama.cpp; its answer is a few tokens,
so `ask` is dominated by start-up), then runs each command --runs times, interleaved (bare, import,
--help, status, ask, raw client, bare, ...) so background load hits every row alike, and prints
medians, the difference to `python -c pass` and the ratio to it (and the minimum of each row, the
least that the shared machine's load added).

    .venv/bin/python bench/bench_cli_startup.py [--runs 41] [--json] [--compare DIR]

Rows:
- ``bare``: ``python -c pass`` with the same interpreter and venv (site and the venv's path hooks);
  every row runs with its bytecode cached (in a temporary ``PYTHONPYCACHEPREFIX``), as on an
  installed board;
- ``import``: ``import edgebot.cli`` only;
- ``--help``, ``status``, ``ask``: ``edgebot-cli`` as the console script runs it
  (``from edgebot.cli import main``), against the running daemon;
- ``raw ask``: the floor for any Python client: an inline script with ``socket`` and ``json`` that
  says hello, asks and reads to ``answer-end``. ``ask`` minus ``raw ask`` is what the CLI adds.

``--compare DIR`` adds the CLI rows run from another source tree (e.g. ``git archive main | tar -x -C
DIR``), interleaved with the others: a before/after with the same daemon, interpreter and load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLI = "import sys; from edgebot.cli import main; sys.exit(main())"
RAW_ASK = r"""
import json, os, socket
s = socket.socket(socket.AF_UNIX); s.connect(os.environ["EDGEBOT_SOCKET"])
s.sendall(b'{"type":"hello","data":{"client":"raw"}}\n{"type":"ask","data":{"id":"r","text":"hi"}}\n')
buf = b""
while b'"answer-end"' not in buf:
    buf += s.recv(65536)
"""


def _time(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    """Wall time (ms) from spawn to exit; the command must succeed. ``cwd`` is outside any source tree
    (``python -c`` puts the working directory first on sys.path)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL)
    took = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        raise SystemExit(f"{cmd} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-500:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=41, help="runs of each row (interleaved)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--compare", metavar="DIR", help="also run the CLI rows from this source tree, interleaved "
                                                     "(e.g. the tree before a change)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from edgebot.testing.script_model import write_script_model

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        model = write_script_model(Path(tmp) / "script.gguf")
        sock = str(Path(tmp) / "bus.sock")
        # bytecode cached, as pip leaves an installed board (PYTHONDONTWRITEBYTECODE would make every run
        # compile edgebot's sources); kept in the temporary directory, not the tree
        env = {**os.environ, "EDGEBOT_SOCKET": sock, "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache")}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        # one llama.cpp thread: the script model's answer takes a few ms, and does not fight the CLI runs
        # for the cores
        daemon = subprocess.Popen([str(BIN / "edgebotd"), "--model", str(model), "--socket", sock,
                                   "--log-level", "WARNING"], env={**env, "EDGEBOT_LLM_N_THREADS": "1"},
                                  stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            subprocess.run([str(BIN / "edgebot-cli"), "status", "--wait", "60"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            py = sys.executable
            rows = {"bare": ([py, "-c", "pass"], env)}
            trees = [("", env)] + ([(f" [{Path(args.compare).name}]", {**env, "PYTHONPATH": args.compare})]
                                   if args.compare else [])
            for suffix, cli_env in trees:
                rows.update({
                    "import" + suffix: ([py, "-c", "import edgebot.cli"], cli_env),
                    "--help" + suffix: ([py, "-c", CLI, "--help"], cli_env),
                    "status" + suffix: ([py, "-c", CLI, "status"], cli_env),
                    "ask" + suffix: ([py, "-c", CLI, "ask", "hi"], cli_env)})
            rows["raw ask"] = ([py, "-c", RAW_ASK], env)
            for cmd, e in rows.values():  # warm the page cache and the daemon
                _time(cmd, e, tmp)
            times: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(args.runs):
                for name, (cmd, e) in rows.items():
                    times[name].append(_time(cmd, e, tmp))
        finally:
            daemon.terminate()
            daemon.wait(30)
    med = {name: statistics.median(t) for name, t in times.items()}
    low = {name: min(t) for name, t in times.items()}  # the least the machine's load added
    bare = med["bare"]
    result = {name: {"median_ms": round(m, 1), "minus_bare_ms": round(m - bare, 1), "ratio": round(m / bare, 2),
                     "min_ms": round(low[name], 1), "min_minus_bare_ms": round(low[name] - low["bare"], 1)}
              for name, m in med.items()}
    result["ask minus raw ask"] = {"median_ms": round(med["ask"] - med["raw ask"], 1)}
    if args.json:
        print(json.dumps({"runs": args.runs, "tree": str(REPO), "compare": args.compare, "python": sys.version.split()[0],
                          "rows": result}, indent=1))
        return 0
    print(f"edgebot-cli start-up, {args.runs} interleaved runs each, medians (Python {sys.version.split()[0]}, "
          f"tree {REPO}" + (f", compared with {args.compare}" if args.compare else "") + ")")
    print(f"{'row':28} {'median ms':>10} {'- bare ms':>10} {'x bare':>7} {'min ms':>8} {'- bare':>7}")
    for name, r in result.items():
        if "ratio" in r:
            print(f"{name:28} {r['median_ms']:10.1f} {r['minus_bare_ms']:10.1f} {r['ratio']:7.2f} "
                  f"{r['min_ms']:8.1f} {r['min_minus_bare_ms']:7.1f}")
    print(f"{'ask - raw ask':28} {result['ask minus raw ask']['median_ms']:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
