"""The classroom panel in the Chromium here: page weight, load to interactive, and Enter -> first
streamed character against the same question through edgebot-cli, on one edgebotd.

1. Page weight: what the browser fetched (Resource Timing ``encodedBodySize``, i.e. gzipped as
   sent) for the page to become interactive, and the KaTeX fonts an answer with maths adds.
2. Load to interactive: navigation start -> the page's ``edgebot-interactive`` mark (the
   conversations listed, the input enabled), cold (cache disabled) and warm; median of N loads.
3. Enter -> first character: the page's ``edgebot-ask`` mark (set as Enter submits) -> the
   ``edgebot-first-char`` mark (the first answer delta arrived) and ``edgebot-first-paint`` (it is
   in the DOM); the CLI: ``edgebot-cli ask --json`` started -> its first ``answer-delta`` line (its
   start-up included, as a person typing the command pays it). Each side also minus the engine's
   own ``answer_ms`` for that ask (submit -> first answer character inside edgebotd): what the
   front door itself costs. Runs alternate; each is a new
   conversation / a one-off question, so neither reuses more KV cache than the other.

    .venv/bin/python bench/bench_panel.py [--runs 10] [--loads 10] [--model PATH]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path) -> tuple[subprocess.Popen, str, dict[str, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-panel-"))
    port = free_port()
    (tmp / "e.toml").write_text(f'[llm]\nn_threads = 1\n[http]\nenabled = true\nport = {port}\n'
                                f'conversations_dir = "{tmp}/conversations"\n')
    env = {**os.environ, "EDGEBOT_BOARD": "generic-x86", "EDGEBOT_SOCKET": str(tmp / "bus.sock")}
    proc = subprocess.Popen([str(BIN / "edgebotd"), "--config", str(tmp / "e.toml"), "--model", str(model),
                             "--socket", str(tmp / "bus.sock"), "--log-level", "WARNING"], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base, env
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("edgebotd did not become ready")


def static_weight() -> tuple[int, int]:
    """Bytes of the page's text files as the server sends them (gzip -9), and raw."""
    static = REPO / "edgebot" / "http" / "static"
    files = [p for p in static.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".css", ".svg")]
    return sum(len(gzip.compress(p.read_bytes(), 9)) for p in files), sum(p.stat().st_size for p in files)


def cli_first_char(env: dict[str, str], question: str) -> tuple[float, float]:
    """(ms from starting ``edgebot-cli ask --json`` to its first answer-delta line, the engine's
    ``answer_ms`` for that ask: submit -> first answer character inside edgebotd)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "edgebot-cli"), "ask", "--json", question], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    first = None
    answer_ms = None
    for line in proc.stdout:
        ev = json.loads(line)
        if ev["type"] == "answer-delta" and first is None:
            first = time.perf_counter()
        elif ev["type"] == "answer-end":
            answer_ms = ev["data"]["stats"]["answer_ms"]
    proc.wait(60)
    assert first is not None and answer_ms is not None, "edgebot-cli gave no answer"
    return (first - t0) * 1000, answer_ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="questions each way")
    ap.add_argument("--loads", type=int, default=10, help="page loads, cold and warm each")
    ap.add_argument("--model", help="a GGUF (default: the script test model: transport overhead alone)")
    args = ap.parse_args()
    from edgebot.testing.browser import Browser, missing
    from edgebot.testing.script_model import write_script_model

    if missing():
        print(f"bench_panel: {missing()}", file=sys.stderr)
        return 2
    model = Path(args.model) if args.model else write_script_model(Path(tempfile.mkdtemp()) / "script.gguf")
    proc, base, env = start(model)
    b = Browser(size=(1100, 800))
    try:
        cold, warm = [], []
        for _ in range(args.loads):
            for cache_off, out in ((True, cold), (False, warm)):
                b.driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": cache_off})
                b.driver.get(base + "/")
                b.wait(lambda: b.js("return document.body.dataset.ready === '1'"), 30)
                out.append(b.js("return performance.getEntriesByName('edgebot-interactive')[0].startTime"))
        b.driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        b.driver.get(base + "/")
        b.wait(lambda: b.js("return document.body.dataset.ready === '1'"), 30)
        sizes = b.js("return [performance.getEntriesByType('navigation')[0].encodedBodySize, "
                     "...performance.getEntriesByType('resource').filter(r => !r.name.includes('/api/'))"
                     ".map(r => r.encodedBodySize)]")
        b.driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
        page_gz = sum(sizes)
        panel_ms, paint_ms, cli_ms, panel_engine, cli_engine = [], [], [], [], []
        for i in range(args.runs):
            question = f"Question {i}: what is two plus two?"
            cli, engine = cli_first_char(env, question)
            cli_ms.append(cli)
            cli_engine.append(engine)
            b.driver.find_element("id", "new").click()
            before = int(b.js("return Number(document.body.dataset.answers || 0)"))
            b.driver.find_element("id", "input").send_keys(question + "\n")
            b.wait(lambda: int(b.js("return Number(document.body.dataset.answers || 0)")) > before, 60)  # noqa: B023 - waited on here, in this iteration
            ask, first, paint = b.js("return ['edgebot-ask', 'edgebot-first-char', 'edgebot-first-paint']"
                                     ".map(n => performance.getEntriesByName(n).at(-1).startTime)")
            panel_ms.append(first - ask)
            paint_ms.append(paint - ask)
            with urllib.request.urlopen(base + "/panel/api/conversations", timeout=10) as r:
                newest = json.loads(r.read())["conversations"][0]["id"]
            with urllib.request.urlopen(f"{base}/panel/api/conversations/{newest}", timeout=10) as r:
                panel_engine.append(json.loads(r.read())["exchanges"][-1]["stats"]["answer_ms"])
        fonts = b.js("return performance.getEntriesByType('resource').filter(r => r.name.endsWith('.woff2'))"
                     ".map(r => r.encodedBodySize)")
    finally:
        b.close()
        proc.terminate()
        proc.wait(30)
    text_gz, text_raw = static_weight()
    fonts_dir = REPO / "edgebot" / "http" / "static" / "vendor" / "fonts"
    med = statistics.median
    load = os.getloadavg()[0]
    print(f"\n## The classroom panel ({model.name}, Chromium {b.driver.capabilities.get('browserVersion', '?')}, "
          f"load average {load:.1f})\n")
    print("| what | figure |\n|---|---|")
    print(f"| page weight to interactive, as fetched (gzip) | {page_gz / 1024:.0f} KiB in {len(sizes)} files |")
    print(f"| every page text file, gzip -9 / raw | {text_gz / 1024:.0f} KiB / {text_raw / 1024:.0f} KiB |")
    print(f"| KaTeX fonts (woff2, fetched only when maths are shown) | {sum(p.stat().st_size for p in fonts_dir.glob('*.woff2')) / 1024:.0f} KiB "
          f"for all {len(list(fonts_dir.glob('*.woff2')))}; {sum(fonts) / 1024:.0f} KiB fetched by these answers |")
    print(f"| load to interactive, cold cache (median of {len(cold)}) | {med(cold):.0f} ms |")
    print(f"| load to interactive, warm cache (median of {len(warm)}) | {med(warm):.0f} ms |")
    print(f"| Enter -> first answer character arrives in the page (median of {len(panel_ms)}) | {med(panel_ms):.1f} ms |")
    print(f"| Enter -> first answer character painted into the page | {med(paint_ms):.1f} ms |")
    print(f"| edgebot-cli ask -> first answer line on stdout, its start-up included (median of {len(cli_ms)}) | "
          f"{med(cli_ms):.1f} ms |")
    print(f"| panel - CLI (first character) | **{med(panel_ms) - med(cli_ms):+.1f} ms** |")
    over_p = [p - e for p, e in zip(panel_ms, panel_engine)]
    over_c = [c - e for c, e in zip(cli_ms, cli_engine)]
    print(f"| beyond the engine's own submit -> first answer character: panel / CLI | {med(over_p):.1f} ms / "
          f"{med(over_c):.1f} ms |")
    print("\nraw:", json.dumps({"cold": cold, "warm": warm, "panel": panel_ms, "paint": paint_ms, "cli": cli_ms,
                               "panel_engine_answer_ms": panel_engine, "cli_engine_answer_ms": cli_engine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
