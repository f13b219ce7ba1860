"""The bus seen from inside edgebotd, for a front door that lives in the daemon's loop but does not
import the bus package (the classroom panel in ``edgebot/http/``): messages in and out as the
wire's plain ``(type, data)`` pairs, checked by the one codec.

``daemon.py`` builds a :class:`BusTap` on the hub and hands it over; nothing here opens a socket.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable

from edgebot.bus import codec
from edgebot.bus.hub import Hub
from edgebot.bus.messages import Message

log = logging.getLogger(__name__)

Watcher = Callable[[str, dict[str, Any]], None]


class BusTap:
    """Watch what the hub publishes and publish on it, with plain dicts; use on the event loop."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def watch(self, types: Iterable[str], callback: Watcher) -> Callable[[], None]:
        """Call ``callback(type, data)`` for every published message of ``types``; returns the unwatch."""
        wanted = frozenset(types)

        def tap(msg: Message) -> None:
            if msg.TYPE in wanted:
                callback(msg.TYPE, json.loads(codec.encode(msg))["data"])

        self.hub.taps.append(tap)
        return lambda: self.hub.taps.remove(tap) if tap in self.hub.taps else None

    def publish(self, type_name: str, data: dict[str, Any]) -> int:
        """Publish one message to the hub's subscribers; returns how many received it.

        Raises ``ValueError`` (the codec's message) when ``data`` is not a valid ``type_name``.
        """
        try:
            msg = codec.from_dict(type_name, data)
        except codec.ProtocolError as exc:
            raise ValueError(str(exc)) from None
        return self.hub.publish(msg)
