"""An asyncio bus client: connect, hello/welcome, send typed messages, receive typed messages.

Used by the bridges' shared supervisor; edgebot-cli uses the blocking client (``blocking``), which
shares its errors.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Optional

import edgebot
from edgebot.bus import codec
from edgebot.bus.blocking import BusUnavailable, unavailable
from edgebot.bus.messages import Error, Hello, Message, Welcome
from edgebot.bus.sockdir import UnsafeSocketDir, check_socket_dir


class BusRefused(BusUnavailable):
    """edgebotd answered the connection with an error instead of ``welcome`` (it cannot start, or
    this user is not allowed): retrying at once cannot help."""


class BusClient:
    """One connection to edgebotd."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
        self.reader = reader
        self.writer = writer
        self.path = path
        self.welcome: Optional[Welcome] = None

    @classmethod
    async def connect(cls, path: str, client: str, role: str = "client", timeout: float = 5.0) -> "BusClient":
        """Connect and exchange hello/welcome within ``timeout`` seconds. A socket in a directory
        another user controls is never connected to (:func:`sockdir.check_socket_dir`)."""
        try:
            check_socket_dir(path)
        except UnsafeSocketDir as exc:
            raise BusUnavailable(str(exc)) from None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=codec.MAX_LINE_BYTES + 1), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise unavailable(path, exc) from None
        self = cls(reader, writer, path)
        await self.send(Hello(client=client, version=edgebot.__version__, role=role))
        try:
            while True:
                msg = await asyncio.wait_for(self.recv(), timeout)
                if msg is None:
                    raise BusUnavailable(f"edgebotd at {path} closed the connection during hello")
                if isinstance(msg, Welcome):
                    self.welcome = msg
                    return self
                if isinstance(msg, Error):
                    await self.close()
                    raise BusRefused(f"edgebotd refused the connection: {msg.message}")
        except asyncio.TimeoutError:
            await self.close()
            raise BusUnavailable(f"edgebotd at {path} did not answer hello within {timeout:g} s") from None

    async def send(self, msg: Message) -> None:
        self.writer.write(codec.encode(msg))
        await self.writer.drain()

    async def recv(self) -> Optional[Message]:
        """The next message, or None when the daemon closed the connection.

        A line the codec rejects is returned as an ``Error`` rather than raised.
        """
        try:
            line = await self.reader.readline()
        except (ConnectionError, OSError):
            return None
        except (asyncio.LimitOverrunError, ValueError):
            return Error("line-too-long", f"edgebotd sent a line over {codec.MAX_LINE_BYTES} bytes; it was skipped")
        if not line:
            return None
        try:
            return codec.decode(line)
        except codec.ProtocolError as exc:
            return Error(exc.code, f"from edgebotd: {exc.message}")

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            msg = await self.recv()
            if msg is None:
                return
            yield msg

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
