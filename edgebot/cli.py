"""edgebot-cli: ask, status, say and cancel over the local bus.

Starts fast on a Pi: imports only the bus codec, the client and the config loader (never
llama_cpp, numpy or a speech library). Exit codes: 0 answered, 1 error from the daemon,
2 usage, 3 daemon unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
from typing import Any, Optional, Sequence

from edgebot.bus import codec
from edgebot.bus import messages as m
from edgebot.bus.client import BusClient, BusUnavailable

EXIT_OK, EXIT_DAEMON_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def resolve_socket(args: argparse.Namespace) -> str:
    """``--socket``, else ``$EDGEBOT_SOCKET``, else the config's ``[bus] socket``."""
    if args.socket:
        return str(args.socket)
    if os.environ.get("EDGEBOT_SOCKET"):
        return os.environ["EDGEBOT_SOCKET"]
    from edgebot.config import load_config

    return load_config(args.config, board="").socket_path


def argv_text(words: Sequence[str]) -> str:
    """Arguments joined into text; bytes that are not UTF-8 (Python keeps them as lone surrogates,
    which cannot be sent) become U+FFFD."""
    return " ".join(words).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _json_line(msg: m.Message) -> None:
    sys.stdout.write(codec.encode(msg).decode())
    sys.stdout.flush()


LOADING_STATES = ("starting", "loading")  # an ask refused `not-ready` in these states is asked again once loaded


async def cmd_ask(client: BusClient, args: argparse.Namespace) -> int:
    question = argv_text(args.question).strip()
    if not question:
        print("edgebot-cli ask: the question is empty", file=sys.stderr)
        return EXIT_USAGE
    session = f"cli:{args.session}" if args.session else None
    interrupted = asyncio.Event()

    def on_sigint() -> None:
        if interrupted.is_set():  # a second Ctrl-C: do not wait for the daemon any longer
            sys.stdout.flush()
            os._exit(EXIT_INTERRUPTED)
        interrupted.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    deadline = loop.time() + args.wait_ready
    while True:
        ask_id = f"cli-{secrets.token_hex(4)}"
        await client.send(m.Ask(id=ask_id, text=question, session=session, source="cli",
                                think="show" if args.think else "hide", max_tokens=args.max_tokens))
        code = await _follow_answer(client, args, ask_id, interrupted)
        if code is not None:
            return code
        # refused `not-ready` while the model loads (the ask that socket activation started edgebotd for):
        # wait for the model, bounded by --wait-ready, and ask again
        if loop.time() > deadline:
            print(f"edgebot-cli: not-ready: still refused after {args.wait_ready:g} s (--wait-ready)", file=sys.stderr)
            return EXIT_DAEMON_ERROR
        if not await _wait_loaded(client, deadline, interrupted, args.wait_ready):
            return EXIT_INTERRUPTED if interrupted.is_set() else EXIT_DAEMON_ERROR


async def _follow_answer(client: BusClient, args: argparse.Namespace, ask_id: str,
                         interrupted: asyncio.Event) -> Optional[int]:
    """Print the answer to ``ask_id`` as it streams; the exit code, or None when it was refused
    because the model is still loading (nothing printed yet)."""
    cancel_sent = False
    wrote_answer = wrote_think = False
    while True:
        recv = asyncio.ensure_future(client.recv())
        stop = asyncio.ensure_future(interrupted.wait())
        await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done() and not cancel_sent:
            cancel_sent = True
            await client.send(m.Cancel(id=ask_id))
        stop.cancel()
        msg = await recv
        if msg is None:
            print("\nedgebot-cli: edgebotd closed the connection before the answer ended", file=sys.stderr)
            return EXIT_UNREACHABLE
        if isinstance(msg, m.Action) and msg.ask == ask_id:  # an action this question led to
            if args.json:
                _json_line(msg)
            else:
                print(f"edgebot-cli: action {msg.name} {json.dumps(msg.args, ensure_ascii=False)}: {msg.result}"
                      + (f" ({msg.text})" if msg.text else ""), file=sys.stderr)
            continue
        if getattr(msg, "id", None) != ask_id:
            continue
        if (isinstance(msg, m.Error) and msg.code == "not-ready" and not cancel_sent and args.wait_ready > 0
                and await _daemon_state(client) in LOADING_STATES + ("ready",)):  # ready: it just finished
            return None
        if args.json:
            _json_line(msg)
        if isinstance(msg, m.AnswerDelta) and not args.json:
            if wrote_think and not wrote_answer:
                sys.stderr.write("\n")  # end the thinking's line before the answer starts
            sys.stdout.write(msg.text)
            sys.stdout.flush()
            wrote_answer = True
        elif isinstance(msg, m.ThinkDelta) and not args.json:
            sys.stderr.write(msg.text)
            sys.stderr.flush()
            wrote_think = True
        elif isinstance(msg, m.Error):
            if not args.json:
                print(f"edgebot-cli: {msg.code}: {msg.message}", file=sys.stderr)
            return EXIT_DAEMON_ERROR
        elif isinstance(msg, m.AnswerEnd):
            if not args.json:
                if wrote_answer:
                    sys.stdout.write("\n")
                if msg.message:
                    print(f"edgebot-cli: {msg.reason}: {msg.message}", file=sys.stderr)
            if cancel_sent or msg.reason == "cancelled":
                return EXIT_INTERRUPTED
            return EXIT_OK if msg.reason in ("stop", "length") else EXIT_DAEMON_ERROR


async def _daemon_state(client: BusClient) -> str:
    """edgebotd's engine state (``loading``, ``ready``, ``failed``, ...) from a status report."""
    await client.send(m.Status())
    async for msg in client.messages():
        if isinstance(msg, m.StatusReport):
            return msg.state
    return "unreachable"


async def _wait_loaded(client: BusClient, deadline: float, interrupted: asyncio.Event, budget_s: float) -> bool:
    """Poll edgebotd's state until the model is ready (True) or ``deadline`` (loop time) passes,
    it fails to load, or Ctrl-C (False, after saying why on stderr)."""
    loop = asyncio.get_running_loop()
    print(f"edgebot-cli: edgebotd is loading its model; the question waits up to {budget_s:g} s (--wait-ready)",
          file=sys.stderr)
    delay = 0.05
    while True:
        state = await _daemon_state(client)
        if state == "ready":
            return True
        if state not in LOADING_STATES:
            print(f"edgebot-cli: not-ready: edgebotd is {state}; see its log (journalctl -u edgebot)", file=sys.stderr)
            return False
        if loop.time() + delay > deadline:
            print(f"edgebot-cli: not-ready: the model was still {state} after {budget_s:g} s; try again later "
                  f"(edgebot-cli status --wait SECONDS waits for it)", file=sys.stderr)
            return False
        try:
            await asyncio.wait_for(interrupted.wait(), delay)
            return False
        except asyncio.TimeoutError:
            delay = min(delay * 2, 1.0)


def _print_status(report: m.StatusReport) -> None:
    q = report.queue
    lines = [f"edgebotd {report.server_version}: {report.state}",
             f"model:    {report.model}",
             f"queue:    {q.get('waiting', 0)} waiting (max {q.get('max')}), running: {q.get('running') or 'nothing'}",
             f"clients:  {report.clients}",
             f"speed:    {report.last_tokens_per_s or '-'} tokens/s (last answer)",
             f"memory:   {report.memory.get('rss_mb')} MiB resident"]
    if report.temperature_c is not None:
        lines.append(f"temp:     {report.temperature_c:.1f} °C")
    for s in report.sessions:
        lines.append(f"session:  {s['name']}: {s['turns']} turns, idle {s['idle_s']} s")
    for bridge, dev in report.devices.items():
        what = {"speech-in": "microphone", "speech-out": "speaker"}.get(bridge, bridge)
        lines.append(f"{what + ':':9} {dev.get('state')} ({bridge}){': ' + dev['message'] if dev.get('message') else ''}")
    print("\n".join(lines))


async def cmd_status(client: BusClient, args: argparse.Namespace) -> int:
    await client.send(m.Status())
    msg = await _reply(client, (m.StatusReport,))
    if isinstance(msg, m.StatusReport):
        if args.json:
            _json_line(msg)
        else:
            _print_status(msg)
        return EXIT_OK
    return EXIT_DAEMON_ERROR


def _print_actions(actions: dict[str, Any]) -> None:
    declared = actions.get("declared", [])
    if not declared:
        print("no actions declared ([[actions]] in the configuration)")
        return
    print(f"actions: {'on' if actions.get('enabled') else 'OFF ([robot] actions = false)'}"
          f"{'' if actions.get('model_actions', True) else ', phrases only (model_actions = false)'}")
    for a in declared:
        params = a.get("parameters", {}).get("properties", {})
        flags = [f"port {a.get('port')}"]
        if a.get("confirm"):
            flags.append("confirm")
        if a.get("rate_limit"):
            flags.append(f"at most {a['rate_limit']} per {a.get('rate_window_s', 0):g} s")
        print(f"{a['name']}({', '.join(params)}): {a.get('description', '')} [{', '.join(flags)}]")
        for name, spec in params.items():
            print(f"    {name}: {json.dumps(spec, ensure_ascii=False)}")
        for phrase in a.get("phrases", []):
            print(f"    says: {phrase!r}")


async def cmd_actions(client: BusClient, args: argparse.Namespace) -> int:
    await client.send(m.Status())
    msg = await _reply(client, (m.StatusReport,))
    if not isinstance(msg, m.StatusReport):
        return EXIT_DAEMON_ERROR
    if args.json:
        print(json.dumps(msg.actions, ensure_ascii=False))
    else:
        _print_actions(msg.actions)
    return EXIT_OK


async def cmd_say(client: BusClient, args: argparse.Namespace) -> int:
    await client.send(m.Say(text=argv_text(args.text)))
    msg = await _reply(client, (m.Ack,))
    return EXIT_OK if isinstance(msg, m.Ack) else EXIT_DAEMON_ERROR


async def cmd_cancel(client: BusClient, args: argparse.Namespace) -> int:
    await client.send(m.Cancel(id=args.id))
    await client.send(m.Ping(id="cancel-done"))
    msg = await _reply(client, (m.Pong,))
    return EXIT_OK if isinstance(msg, m.Pong) else EXIT_DAEMON_ERROR


async def _reply(client: BusClient, wanted: tuple[type, ...]) -> Optional[m.Message]:
    """The first message of a wanted type; an Error is printed and returned."""
    async for msg in client.messages():
        if isinstance(msg, wanted):
            return msg
        if isinstance(msg, m.Error):
            print(f"edgebot-cli: {msg.code}: {msg.message}", file=sys.stderr)
            return msg
    print("edgebot-cli: edgebotd closed the connection", file=sys.stderr)
    return None


COMMANDS: dict[str, Any] = {"ask": cmd_ask, "status": cmd_status, "say": cmd_say, "cancel": cmd_cancel,
                            "actions": cmd_actions}
# Subcommands that do not talk to the bus first: module (with run_cli(argv, args)) and help text.
LOCAL_COMMANDS = {"model": "edgebot.models", "doctor": "edgebot.doctor"}
LOCAL_COMMANDS_HELP = {"model": "download, list and verify models (see: edgebot-cli model --help)",
                       "doctor": "check config, model, llama.cpp build, memory, bus, audio, serial, units, temperature"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgebot-cli", description="Talk to edgebotd over the local bus.")
    p.add_argument("--socket", help="bus socket (default: $EDGEBOT_SOCKET or the config's [bus] socket)")
    p.add_argument("--config", help="config file to read the socket path from")
    sub = p.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="ask a question and stream the answer")
    ask.add_argument("--session", help="keep a conversation under this name (default: a one-off question)")
    ask.add_argument("--think", action="store_true", help="stream the model's thinking to stderr")
    ask.add_argument("--json", action="store_true", help="print one JSON bus event per line")
    ask.add_argument("--max-tokens", type=int, help="limit on generated tokens, thinking included")
    ask.add_argument("--wait-ready", type=float, default=300.0, metavar="SECONDS",
                     help="while edgebotd loads its model (just started, e.g. by socket activation), wait up to "
                          "SECONDS for it and then ask (default 300; 0: fail at once with not-ready)")
    ask.add_argument("question", nargs="+", help="the question")
    status = sub.add_parser("status", help="show the daemon's state")
    status.add_argument("--json", action="store_true", help="print the status-report event as JSON")
    status.add_argument("--wait", type=float, metavar="SECONDS",
                        help="wait up to SECONDS for edgebotd to be up with its model loaded")
    say = sub.add_parser("say", help="speak text through edgebot-speech-out")
    say.add_argument("text", nargs="+")
    cancel = sub.add_parser("cancel", help="cancel an answer by id")
    cancel.add_argument("id")
    actions = sub.add_parser("actions", help="list the robot actions edgebotd may run")
    actions.add_argument("--json", action="store_true", help="print them as JSON")
    for name, text in LOCAL_COMMANDS_HELP.items():  # parsed by their own modules, imported only when run
        sub.add_parser(name, help=text, add_help=False)
    return p


async def wait_ready(path: str, seconds: float) -> Optional[str]:
    """Retry until edgebotd answers ``status`` with state ready; returns None or why not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay, why = 0.05, "not tried"
    while True:
        try:
            client = await BusClient.connect(path, client="edgebot-cli", timeout=max(0.1, deadline - loop.time()))
            try:
                await client.send(m.Status())
                msg = await _reply(client, (m.StatusReport,))
            finally:
                await client.close()
            if isinstance(msg, m.StatusReport):
                if msg.state == "ready":
                    return None
                if msg.state == "failed":
                    return "the model failed to load; see the daemon's log (journalctl -u edgebot)"
                why = f"edgebotd is {msg.state}"
        except BusUnavailable as exc:
            why = str(exc)
        if loop.time() + delay > deadline:
            return f"not ready after {seconds:g} s: {why}"
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def run(args: argparse.Namespace) -> int:
    try:
        path = resolve_socket(args)
    except Exception as exc:  # noqa: BLE001 - a config error is a usage error here
        print(f"edgebot-cli: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "wait", None):
        problem = await wait_ready(path, args.wait)
        if problem:
            print(f"edgebot-cli: {problem}", file=sys.stderr)
            return EXIT_UNREACHABLE
    try:
        client = await BusClient.connect(path, client="edgebot-cli")
    except BusUnavailable as exc:
        print(f"edgebot-cli: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        return int(await COMMANDS[args.command](client, args))
    finally:
        await client.close()


def _local_command_at(argv: Sequence[str]) -> Optional[int]:
    """Index of a LOCAL_COMMANDS word in ``argv`` (after the global options), else None."""
    i = 0
    while i < len(argv):
        if argv[i] in ("--socket", "--config"):
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return i if argv[i] in LOCAL_COMMANDS else None
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    local = _local_command_at(argv)
    try:
        args = build_parser().parse_args(argv if local is None else argv[:local + 1])
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if local is not None:
        import importlib

        return int(importlib.import_module(LOCAL_COMMANDS[args.command]).run_cli(argv[local + 1:], args))
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
