"""edgebot-cli: ask, status, say and cancel over the local bus.

Starts fast on a Pi: a blocking socket (``edgebot.bus.blocking``) and the bus framing, no asyncio,
no message classes; the config loader only when the socket path has to be looked up; never
llama_cpp, numpy or a speech library. Exit codes: 0 answered, 1 error from the daemon, 2 usage,
3 daemon unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from edgebot.bus.blocking import BlockingBusClient, BusUnavailable, Interrupted
from edgebot.bus.framing import encode_envelope
from edgebot.cli_args import LOCAL_COMMANDS, build_parser

TYPE_CHECKING = False  # typing itself costs ~2 ms at start-up; the annotations are strings
if TYPE_CHECKING:
    from typing import Any, Optional, Sequence

    from edgebot.bus.blocking import Envelope

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


def read_question(words: Sequence[str]) -> Optional[str]:
    """The question: the words, or stdin when they are ``-`` or absent and stdin is not a terminal.
    None when there is no question to read (no words on a terminal)."""
    if words and list(words) != ["-"]:
        return argv_text(words)
    if sys.stdin is None or sys.stdin.isatty():
        return None
    return sys.stdin.buffer.read().decode("utf-8", "replace")


def _json_line(msg: Envelope) -> None:
    sys.stdout.write(encode_envelope(*msg).decode())
    sys.stdout.flush()


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


LOADING_STATES = ("starting", "loading")  # an ask refused `not-ready` in these states is asked again once loaded


def cmd_ask(client: BlockingBusClient, args: argparse.Namespace) -> int:
    """Ask and stream the answer. An ask refused ``not-ready`` while edgebotd loads its model (the
    ask that socket activation started it for) waits for the model, up to ``--wait-ready`` seconds,
    and is asked again."""
    import signal
    import time

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    interrupted = [False]

    def on_sigint(signum: int, frame: Any) -> None:
        if interrupted[0]:  # a second Ctrl-C: do not wait for the daemon any longer
            sys.stdout.flush()
            os._exit(EXIT_INTERRUPTED)
        interrupted[0] = True

    signal.set_wakeup_fd(wake_w)  # the signal's byte wakes recv's select
    signal.signal(signal.SIGINT, on_sigint)
    deadline = time.monotonic() + args.wait_ready
    while True:
        code = _ask_once(client, args, wake_r, interrupted)
        if code is not None:
            return code
        if time.monotonic() > deadline:
            print(f"edgebot-cli: not-ready: still refused after {args.wait_ready:g} s (--wait-ready)", file=sys.stderr)
            return EXIT_DAEMON_ERROR
        if not _wait_loaded(client, deadline, wake_r, interrupted, args.wait_ready):
            return EXIT_INTERRUPTED if interrupted[0] else EXIT_DAEMON_ERROR


def _ask_once(client: BlockingBusClient, args: argparse.Namespace, wake_r: int,
              interrupted: list[bool]) -> Optional[int]:
    """Send the ask and print its answer as it streams; the exit code, or None when it was refused
    because the model is still loading (nothing printed yet) and ``--wait-ready`` allows waiting."""
    ask_id = f"cli-{os.urandom(4).hex()}"  # what secrets.token_hex does, without importing hashlib/hmac
    session = f"cli:{args.session}" if args.session else None
    client.send("ask", id=ask_id, text=args.question_text, session=session, source="cli",
                think="show" if args.think else "hide", max_tokens=args.max_tokens)
    cancel_sent = False
    wrote_answer = wrote_think = False
    while True:
        try:
            msg = client.recv(wake_fd=wake_r)
        except Interrupted:
            if interrupted[0] and not cancel_sent:
                cancel_sent = True
                client.send("cancel", id=ask_id)
            continue
        if msg is None:
            print("\nedgebot-cli: edgebotd closed the connection before the answer ended", file=sys.stderr)
            return EXIT_UNREACHABLE
        kind, data = msg
        if kind == "action" and data.get("ask") == ask_id:  # an action this question led to
            if args.json:
                _json_line(msg)
            else:
                import json

                text = _text(data, "text")
                print(f"edgebot-cli: action {data.get('name')} {json.dumps(data.get('args'), ensure_ascii=False)}: "
                      f"{data.get('result')}" + (f" ({text})" if text else ""), file=sys.stderr)
            continue
        if data.get("id") != ask_id:
            continue
        if (kind == "error" and data.get("code") == "not-ready" and not cancel_sent and args.wait_ready > 0
                and _daemon_state(client) in LOADING_STATES + ("ready",)):  # ready: loading just finished
            return None
        if args.json:
            _json_line(msg)
        if kind == "answer-delta" and not args.json:
            if wrote_think and not wrote_answer:
                sys.stderr.write("\n")  # end the thinking's line before the answer starts
            sys.stdout.write(_text(data, "text"))
            sys.stdout.flush()
            wrote_answer = True
        elif kind == "think-delta" and not args.json:
            sys.stderr.write(_text(data, "text"))
            sys.stderr.flush()
            wrote_think = True
        elif kind == "error":
            if not args.json:
                print(f"edgebot-cli: {data.get('code')}: {data.get('message')}", file=sys.stderr)
            return EXIT_DAEMON_ERROR
        elif kind == "answer-end":
            if not args.json:
                if wrote_answer:
                    sys.stdout.write("\n")
                if data.get("message"):
                    print(f"edgebot-cli: {data.get('reason')}: {data.get('message')}", file=sys.stderr)
            if cancel_sent or data.get("reason") == "cancelled":
                return EXIT_INTERRUPTED
            return EXIT_OK if data.get("reason") in ("stop", "length") else EXIT_DAEMON_ERROR


def _daemon_state(client: BlockingBusClient) -> str:
    """edgebotd's engine state (``loading``, ``ready``, ``failed``, ...) from a status report."""
    client.send("status")
    msg = reply(client, ("status-report",), quiet=True)
    if msg is None or msg[0] != "status-report":
        return "unreachable"
    return str(msg[1].get("state"))


def _wait_loaded(client: BlockingBusClient, deadline: float, wake_r: int, interrupted: list[bool],
                 budget_s: float) -> bool:
    """Poll edgebotd's state until the model is ready (True) or ``deadline`` (monotonic seconds)
    passes, it fails to load, or Ctrl-C (False, after saying why on stderr)."""
    import select
    import time

    print(f"edgebot-cli: edgebotd is loading its model; the question waits up to {budget_s:g} s (--wait-ready)",
          file=sys.stderr)
    delay = 0.05
    while True:
        state = _daemon_state(client)
        if state == "ready":
            return True
        if state not in LOADING_STATES:
            print(f"edgebot-cli: not-ready: edgebotd is {state}; see its log (journalctl -u edgebot)", file=sys.stderr)
            return False
        if time.monotonic() + delay > deadline:
            print(f"edgebot-cli: not-ready: the model was still {state} after {budget_s:g} s; try again later "
                  f"(edgebot-cli status --wait SECONDS waits for it)", file=sys.stderr)
            return False
        if select.select([wake_r], [], [], delay)[0]:  # the signal's byte: Ctrl-C while waiting
            os.read(wake_r, 512)
            if interrupted[0]:
                return False
        delay = min(delay * 2, 1.0)


def cmd_status(client: BlockingBusClient, args: argparse.Namespace) -> int:
    from edgebot.cli_show import print_status

    client.send("status")
    msg = reply(client, ("status-report",))
    if msg is None or msg[0] == "error":
        return EXIT_DAEMON_ERROR
    if args.json:
        _json_line(msg)
    else:
        print_status(msg[1])
    return EXIT_OK


def cmd_actions(client: BlockingBusClient, args: argparse.Namespace) -> int:
    import json

    from edgebot.cli_show import print_actions

    client.send("status")
    msg = reply(client, ("status-report",))
    if msg is None or msg[0] == "error":
        return EXIT_DAEMON_ERROR
    if args.json:
        print(json.dumps(msg[1].get("actions", {}), ensure_ascii=False))
    else:
        print_actions(msg[1].get("actions", {}))
    return EXIT_OK


def cmd_say(client: BlockingBusClient, args: argparse.Namespace) -> int:
    client.send("say", text=argv_text(args.text))
    msg = reply(client, ("ack",))
    return EXIT_OK if msg is not None and msg[0] == "ack" else EXIT_DAEMON_ERROR


def cmd_cancel(client: BlockingBusClient, args: argparse.Namespace) -> int:
    client.send("cancel", id=args.id)
    client.send("ping", id="cancel-done")
    msg = reply(client, ("pong",))
    return EXIT_OK if msg is not None and msg[0] == "pong" else EXIT_DAEMON_ERROR


def reply(client: BlockingBusClient, wanted: tuple[str, ...], quiet: bool = False) -> Optional[Envelope]:
    """The first message of a wanted type; an error is printed (unless ``quiet``) and returned."""
    while True:
        msg = client.recv()
        if msg is None:
            if not quiet:
                print("edgebot-cli: edgebotd closed the connection", file=sys.stderr)
            return None
        if msg[0] in wanted:
            return msg
        if msg[0] == "error":
            if not quiet:
                print(f"edgebot-cli: {msg[1].get('code')}: {msg[1].get('message')}", file=sys.stderr)
            return msg


COMMANDS: "dict[str, Any]" = {"ask": cmd_ask, "status": cmd_status, "say": cmd_say, "cancel": cmd_cancel,
                            "actions": cmd_actions}
def wait_ready(path: str, seconds: float) -> Optional[str]:
    """Retry until edgebotd answers ``status`` with state ready; returns None or why not."""
    import time

    deadline = time.monotonic() + seconds
    delay, why = 0.05, "not tried"
    while True:
        try:
            client = BlockingBusClient.connect(path, client="edgebot-cli",
                                               timeout=max(0.1, deadline - time.monotonic()))
            try:
                client.send("status")
                msg = reply(client, ("status-report",))
            finally:
                client.close()
            if msg is not None and msg[0] == "status-report":
                state = msg[1].get("state")
                if state == "ready":
                    return None
                if state == "failed":
                    return "the model failed to load; see the daemon's log (journalctl -u edgebot)"
                why = f"edgebotd is {state}"
        except BusUnavailable as exc:
            why = str(exc)
        if time.monotonic() + delay > deadline:
            return f"not ready after {seconds:g} s: {why}"
        time.sleep(delay)  # a retry's backoff
        delay = min(delay * 2, 1.0)


def run(args: argparse.Namespace) -> int:
    try:
        path = resolve_socket(args)
    except Exception as exc:  # noqa: BLE001 - a config error is a usage error here
        print(f"edgebot-cli: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "wait", None):
        problem = wait_ready(path, args.wait)
        if problem:
            print(f"edgebot-cli: {problem}", file=sys.stderr)
            return EXIT_UNREACHABLE
    try:
        client = BlockingBusClient.connect(path, client="edgebot-cli")
    except BusUnavailable as exc:
        print(f"edgebot-cli: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        return int(COMMANDS[args.command](client, args))
    finally:
        client.close()


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
    parser = build_parser()
    try:
        args = parser.parse_args(argv if local is None else argv[:local + 1])
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if local is not None:
        import importlib

        return int(importlib.import_module(LOCAL_COMMANDS[args.command]).run_cli(argv[local + 1:], args))
    try:
        if args.command == "ask":
            args.question_text = read_question(args.question)
            if args.question_text is None:
                print("edgebot-cli ask: give the question as arguments, or '-' and pipe it to stdin "
                      "(see edgebot-cli ask --help)", file=sys.stderr)
                return EXIT_USAGE
            args.question_text = args.question_text.strip()
            if not args.question_text:
                print("edgebot-cli ask: the question is empty", file=sys.stderr)
                return EXIT_USAGE
        return run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
