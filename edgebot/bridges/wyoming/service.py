"""edgebot-wyoming: edgebot as a Wyoming conversation agent (``handle``) for Home Assistant.

Home Assistant's Wyoming integration connects, sends ``describe`` (answered with ``info`` naming one
``handle`` program), then per turn opens a connection, sends ``transcript {text, language,
context: {conversation_id}}`` and reads until ``handled`` / ``not-handled`` / ``error``. This bridge
turns each transcript into one bus ``ask`` (thinking hidden: only ``answer-delta`` text ever reaches
Home Assistant) in the session ``ha:<conversation_id>``, so follow-ups keep their history.

A thin translator on the shared supervisor: Wyoming's event classes (the ``wyoming`` package) on one
side, bus messages on the other. Events are read here rather than by ``wyoming.server`` so that a
malformed line gets an ``error`` event instead of a silently closed connection.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

import edgebot
from edgebot.bridges.supervisor import Bridge, BusLink, base_parser, bridge_main
from edgebot.bus import messages as m
from edgebot.config import Config, ConfigError

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
"""Longest event header line or data block accepted from a client."""


@dataclass(frozen=True)
class WyomingSettings:
    """``[wyoming]`` (units as in the schema)."""

    host: str
    port: int
    name: str = "edgebot"
    languages: tuple[str, ...] = ()
    think_budget: int = 96
    stream_handled: bool = False
    answer_timeout_s: float = 120.0

    @classmethod
    def from_config(cls, config: Config) -> "WyomingSettings":
        s = config.section("wyoming")
        url = urlsplit(s["uri"])
        try:
            port = url.port
        except ValueError:
            port = None
        if url.scheme != "tcp" or url.hostname is None or port is None:
            raise ConfigError(f"[wyoming] uri {s['uri']!r}: write tcp://HOST:PORT, e.g. tcp://0.0.0.0:10700")
        return cls(host=url.hostname, port=port, name=s["name"], languages=tuple(s["languages"]),
                   think_budget=s["think_budget"], stream_handled=s["stream_handled"],
                   answer_timeout_s=s["answer_timeout_s"])


class BadEvent(Exception):
    """A client line that is not a Wyoming event; the message says what was wrong."""


async def read_event(reader: asyncio.StreamReader) -> Optional[Any]:
    """The next ``wyoming.event.Event``, None at the end of the stream, BadEvent for garbage."""
    from wyoming.event import Event

    try:
        line = await reader.readline()
    except (ValueError, asyncio.LimitOverrunError):
        raise BadEvent(f"an event line is longer than {MAX_LINE_BYTES} bytes") from None
    if not line:
        return None
    try:
        header = json.loads(line)
    except ValueError:
        raise BadEvent("an event line is not JSON: send {\"type\": ..., \"data\": {...}} and a newline") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise BadEvent("an event must be a JSON object with a string \"type\"")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise BadEvent("an event's \"data\" must be an object")
    for key in ("data_length", "payload_length"):
        size = header.get(key) or 0
        if not isinstance(size, int) or not 0 <= size <= MAX_LINE_BYTES:
            raise BadEvent(f"{key} must be an integer from 0 to {MAX_LINE_BYTES}")
    if header.get("data_length"):
        try:
            extra = json.loads(await reader.readexactly(header["data_length"]))
        except ValueError:
            raise BadEvent("the data block is not a JSON object") from None
        if not isinstance(extra, dict):
            raise BadEvent("the data block is not a JSON object")
        data = {**data, **extra}
    payload = await reader.readexactly(header["payload_length"]) if header.get("payload_length") else None
    return Event(type=header["type"], data=data, payload=payload)


class WyomingBridge(Bridge):
    """A Wyoming TCP server <-> the bus."""

    client_name = "edgebot-wyoming"
    role = "bridge"

    def __init__(self, settings: WyomingSettings, speech: Optional[Any] = None) -> None:
        """``speech``: the optional asr/tts services (:class:`edgebot.bridges.wyoming.speech.Speech`)."""
        try:
            import wyoming  # noqa: F401
        except ImportError:
            raise ConfigError("edgebot-wyoming needs the wyoming package: pip install 'edgebot[wyoming]'") from None
        self.s = settings
        self.speech = speech
        self.link: Optional[BusLink] = None
        self.model = ""
        self.waiting: dict[str, asyncio.Queue[m.Message]] = {}
        self._ids = itertools.count(1)
        self.server: Optional[asyncio.AbstractServer] = None

    async def run(self, link: BusLink) -> None:
        self.link = link
        self.server = await asyncio.start_server(self._serve, self.s.host, self.s.port, limit=MAX_LINE_BYTES)
        log.info("Wyoming service on tcp://%s:%d", self.s.host, self.s.port)
        async with self.server:
            await self.server.serve_forever()

    def info(self) -> Any:
        """The ``info`` event: one ``handle`` program with one model."""
        from wyoming.info import Attribution, HandleModel, HandleProgram, Info

        who = Attribution(name="edgebot", url="")
        model = HandleModel(name=self.model or "edgebot", attribution=who, installed=True,
                            description="the board's own language model", version=None,
                            languages=list(self.s.languages))
        program = HandleProgram(name=self.s.name, attribution=who, installed=True,
                                description="edgebot: an offline assistant on this board", version=edgebot.__version__,
                                models=[model], supports_handled_streaming=self.s.stream_handled)
        return Info(handle=[program], **(self.speech.programs() if self.speech is not None else {})).event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from wyoming.asr import Transcript
        from wyoming.error import Error
        from wyoming.event import async_write_event
        from wyoming.info import Describe
        from wyoming.ping import Ping, Pong

        peer = writer.get_extra_info("peername")
        state: dict[str, Any] = {}  # the connection's utterance in progress (asr)
        try:
            while True:
                try:
                    event = await read_event(reader)
                except BadEvent as exc:
                    log.info("wyoming %s: %s", peer, exc)
                    await async_write_event(Error(text=str(exc), code="bad-event").event(), writer)
                    break  # the stream is out of step: nothing after a bad line can be trusted
                if event is None:
                    break
                if Describe.is_type(event.type):
                    await async_write_event(self.info(), writer)
                elif Ping.is_type(event.type):
                    await async_write_event(Pong(text=event.data.get("text")).event(), writer)
                elif Transcript.is_type(event.type):
                    for reply in await self._transcript(event.data):
                        await async_write_event(reply, writer)
                elif self.speech is not None and self.speech.handles(event.type):
                    for reply in await self.speech.handle(event, state):
                        await async_write_event(reply, writer)
                else:
                    await async_write_event(Error(text=f"edgebot-wyoming handles describe, ping and transcript "
                                                       f"(and synthesize/audio with [wyoming] tts/asr), not "
                                                       f"{event.type[:40]}", code="unsupported").event(), writer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("wyoming %s: %s", peer, exc)
        finally:
            writer.close()

    async def _transcript(self, data: dict[str, Any]) -> list[Any]:
        """One turn: the replies to send (``handled`` with the answer, or ``not-handled``/``error``)."""
        from wyoming.error import Error
        from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled

        text, context = data.get("text"), data.get("context")
        if not isinstance(text, str) or not text.strip():
            return [Error(text="transcript needs a non-empty \"text\"", code="bad-field").event()]
        context = context if isinstance(context, dict) else {}
        conversation = context.get("conversation_id")
        session = f"ha:{str(conversation)[:60]}" if conversation else None
        ask_id = f"wyoming:{os.getpid()}.{next(self._ids)}"
        inbox: asyncio.Queue[m.Message] = asyncio.Queue()
        self.waiting[ask_id] = inbox
        try:
            ask = m.Ask(id=ask_id, text=text, session=session, source="wyoming", think="hide",
                        think_budget=self.s.think_budget if self.s.think_budget >= 0 else None)
            if self.link is None or not await self.link.send(ask):
                return [NotHandled(text="edgebot is not reachable right now", context=context).event()]
            parts: list[str] = []
            while True:
                try:
                    msg = await asyncio.wait_for(inbox.get(), self.s.answer_timeout_s)
                except asyncio.TimeoutError:
                    await self.link.send(m.Cancel(id=ask_id))
                    return [NotHandled(text="the answer took too long", context=context).event()]
                if isinstance(msg, m.AnswerDelta):
                    parts.append(msg.text)
                elif isinstance(msg, m.Error):
                    return [NotHandled(text=f"edgebot could not answer: {msg.message}", context=context).event()]
                elif isinstance(msg, m.AnswerEnd):
                    answer = "".join(parts).strip()
                    if msg.reason in ("cancelled", "error") or not answer:
                        why = msg.message or msg.reason
                        return [NotHandled(text=f"edgebot could not answer: {why}", context=context).event()]
                    if self.s.stream_handled:
                        return [HandledStart(context=context).event(),
                                *(HandledChunk(text=p).event() for p in parts if p), HandledStop().event()]
                    return [Handled(text=answer, context=context).event()]
        finally:
            self.waiting.pop(ask_id, None)

    async def on_connected(self, link: BusLink) -> None:
        welcome = link.client.welcome if link.client is not None else None
        self.model = os.path.basename(welcome.model) if welcome is not None else ""

    async def on_message(self, msg: m.Message) -> None:
        inbox = self.waiting.get(getattr(msg, "id", None) or "")
        if inbox is not None:
            inbox.put_nowait(msg)

    async def on_disconnected(self) -> None:
        for inbox in self.waiting.values():
            inbox.put_nowait(m.Error(code="internal", message="edgebotd went away during the answer"))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser("edgebot-wyoming", "Offer edgebot to Home Assistant as a Wyoming conversation agent "
                                            "(docs/integrations.md).",
                         examples="  edgebot-wyoming --uri tcp://127.0.0.1:10700\n"
                                  "  edgebot-wyoming --log-level DEBUG      the [wyoming] uri from the config")
    parser.add_argument("--uri", help="where to listen, tcp://HOST:PORT (default: [wyoming] uri)")

    def build(args: argparse.Namespace, config: Config) -> Bridge:
        from edgebot.bridges.wyoming.speech import load_speech

        return WyomingBridge(WyomingSettings.from_config(config), load_speech(config))

    return bridge_main(parser, build, argv, overrides=lambda a: {"wyoming.uri": a.uri})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
