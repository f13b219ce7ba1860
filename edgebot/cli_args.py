"""edgebot-cli's arguments: the parser, its help text (examples, environment, exit codes) and the
local commands, which ``edgebot.completion`` also reads to generate the bash completion."""

from __future__ import annotations

import argparse

from edgebot import __version__

EPILOG = """\
examples:
  edgebot-cli ask "What is 2+2?"            stream the answer to stdout
  edgebot-cli ask --think "Why is the sky blue?"   thinking on stderr, answer on stdout
  echo "Summarise this" | edgebot-cli ask   the question from stdin (also: ask -)
  edgebot-cli ask --session maths "And times 3?"   a conversation that keeps its history
  edgebot-cli status --wait 60              wait until the model is loaded (for scripts)
  edgebot-cli doctor                        check the installation
  source <(edgebot-cli completion bash)     tab completion in this shell

environment:
  EDGEBOT_SOCKET   the bus socket (default: the config's [bus] socket, /run/edgebot/bus.sock as a service)
  EDGEBOT_CONFIG   the config file that names the socket (default /etc/edgebot/edgebot.toml)

exit codes:
  0 answered / done, 1 error from edgebotd, 2 usage, 3 edgebotd unreachable, 130 interrupted (Ctrl-C
  cancels the answer on edgebotd)
"""


# Subcommands that do not talk to the bus first: module (with run_cli(argv, args)) and help text.
LOCAL_COMMANDS = {"model": "edgebot.models", "doctor": "edgebot.doctor", "completion": "edgebot.completion"}
LOCAL_COMMANDS_HELP = {"model": "download, list and verify models (see: edgebot-cli model --help)",
                       "doctor": "check config, model, llama.cpp build, memory, bus, audio, serial, units, temperature",
                       "completion": "print a shell completion script: source <(edgebot-cli completion bash)"}



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgebot-cli", description="Talk to edgebotd over the local bus.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"edgebot-cli {__version__}")
    p.add_argument("--socket", help="bus socket (default: $EDGEBOT_SOCKET or the config's [bus] socket)")
    p.add_argument("--config", help="config file to read the socket path from (default: $EDGEBOT_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ask = sub.add_parser("ask", help="ask a question and stream the answer",
                         description="Ask a question and stream the answer to stdout.", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ask.add_argument("--session", help="keep a conversation under this name (default: a one-off question)")
    ask.add_argument("--think", action="store_true", help="stream the model's thinking to stderr")
    ask.add_argument("--json", action="store_true", help="print one JSON bus event per line")
    ask.add_argument("--max-tokens", type=int, help="limit on generated tokens, thinking included")
    ask.add_argument("--wait-ready", type=float, default=300.0, metavar="SECONDS",
                     help="while edgebotd loads its model (just started, e.g. by socket activation), wait up to "
                          "SECONDS for it and then ask (default 300; 0: fail at once with not-ready)")
    ask.add_argument("question", nargs="*",
                     help="the question; '-' or none reads it from stdin when stdin is not a terminal")
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
