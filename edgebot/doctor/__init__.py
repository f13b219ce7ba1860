"""``edgebot-cli doctor``: one line per check, PASS/WARN/FAIL/SKIP, and a fix for every failure.

Checks: config valid; model present and verified; with ``[llm] backend = "rkllm"`` the NPU driver and
the RKLLM runtime; llama.cpp build features; free memory vs model
plus context; bus reachable; audio devices; serial ports present and permitted; systemd units
installed and active; SoC temperature and throttling. Exit 0 when nothing FAILs, else 1.
Imported only by that subcommand. It never imports llama_cpp or the engine: llama.cpp's build and
the NPU runtime are asked in a child interpreter (``probe``); the bus through the blocking client.
Checks of the software are in ``software``, of the machine in ``system``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Callable, Optional

from edgebot.doctor.base import FAIL, PASS, SKIP, WARN, Check, Context
from edgebot.doctor.software import (check_config, check_llama, check_model, check_npu_driver, check_npu_runtime,
                                     parse_system_info)
from edgebot.doctor.system import (check_audio, check_bus, check_memory, check_serial, check_temperature,
                                   check_units)

__all__ = ["PASS", "WARN", "FAIL", "SKIP", "Check", "Context", "CHECKS", "run_checks", "run_cli", "build_parser",
           "parse_system_info"]


CHECKS: tuple[Callable[[Context], Optional[Check]], ...] = (
    check_config, check_model, check_npu_driver, check_npu_runtime, check_llama, check_bus, check_memory,
    check_audio, check_serial, check_units, check_temperature)


def run_checks(args: argparse.Namespace) -> list[Check]:
    ctx = Context(args)
    results = []
    for check in CHECKS:
        try:
            result = check(ctx)
            if result is not None:  # None: the check does not apply to this configuration
                results.append(result)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            results.append(Check(check.__name__.removeprefix("check_"), FAIL, f"the check itself failed: {exc}"))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgebot-cli doctor", description=__doc__.splitlines()[0],
                                     epilog="exit codes: 0 nothing failed, 1 a check failed, 2 usage")
    parser.add_argument("--json", action="store_true", help="print the results as a JSON list")
    parser.add_argument("--board", help="board profile to check against (default: the config's)")
    parser.add_argument("--config", help="config file (default: $EDGEBOT_CONFIG or /etc/edgebot/edgebot.toml)")
    parser.add_argument("--socket", help="bus socket (default: $EDGEBOT_SOCKET or [bus] socket)")
    return parser


def run_cli(argv: list[str], global_args: Optional[argparse.Namespace] = None) -> int:
    """``edgebot-cli doctor [--json] [--board NAME]``."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    for name in ("config", "socket"):
        if getattr(args, name) is None and global_args is not None:
            setattr(args, name, getattr(global_args, name, None))
    results = run_checks(args)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1, ensure_ascii=False))
    else:
        for r in results:
            print(f"{r.status:4}  {r.name:12} {r.detail}")
            if r.fix and r.status in (FAIL, WARN):
                print(f"      {'':12} fix: {r.fix}")
        failed = [r.name for r in results if r.status == FAIL]
        print(f"doctor: {len(failed)} check(s) failed" + (f": {', '.join(failed)}" if failed else ", all good"),
              file=sys.stderr)
    return 1 if any(r.status == FAIL for r in results) else 0
