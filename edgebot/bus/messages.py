"""Typed bus messages: one dataclass per type, named by its ``TYPE`` on the wire.

The envelope is ``{"type": TYPE, "data": {...fields}}`` (see ``codec``). Field types are checked
by the codec from the annotations below, so adding a message is adding a class here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

PROTOCOL_VERSION = 1

ThinkMode = Literal["hide", "show"]
EndReason = Literal["stop", "length", "cancelled", "error"]


@dataclass
class Message:
    """Base class; ``TYPE`` is the wire name."""

    TYPE: ClassVar[str] = ""


@dataclass
class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    client: str
    version: str = ""
    role: str = "client"


@dataclass
class Welcome(Message):
    TYPE: ClassVar[str] = "welcome"
    server_version: str
    model: str
    session_defaults: dict[str, Any] = field(default_factory=dict)
    protocol: int = PROTOCOL_VERSION


@dataclass
class Ask(Message):
    """A question. ``max_tokens`` counts generated tokens, thinking included."""

    TYPE: ClassVar[str] = "ask"
    id: str
    text: str
    session: Optional[str] = None
    source: str = "cli"
    speak: bool = False
    think: ThinkMode = "hide"
    max_tokens: Optional[int] = None
    think_budget: Optional[int] = None
    """Thinking tokens for this ask; None = the ``[llm] think_budget`` of the source's kind."""


@dataclass
class AnswerStart(Message):
    TYPE: ClassVar[str] = "answer-start"
    id: str
    session: str
    source: str = "cli"
    speak: bool = False


@dataclass
class ThinkDelta(Message):
    TYPE: ClassVar[str] = "think-delta"
    id: str
    text: str


@dataclass
class AnswerDelta(Message):
    TYPE: ClassVar[str] = "answer-delta"
    id: str
    text: str


@dataclass
class AnswerEnd(Message):
    """End of an answer. ``stats``: prompt_tokens, cached_tokens, completion_tokens, think_tokens
    (tokens), ttft_ms, answer_ms (milliseconds from the ask), tokens_per_s."""

    TYPE: ClassVar[str] = "answer-end"
    id: str
    reason: EndReason
    stats: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass
class Cancel(Message):
    """Cancel one answer by ``id`` or every answer of a ``session``."""

    TYPE: ClassVar[str] = "cancel"
    id: Optional[str] = None
    session: Optional[str] = None


@dataclass
class Say(Message):
    TYPE: ClassVar[str] = "say"
    text: str
    id: Optional[str] = None


@dataclass
class Heard(Message):
    """What speech-in recognized. A final one also gives the ``id`` it was asked as,
    ``end_of_speech`` (CLOCK_MONOTONIC seconds, comparable between processes of one machine) and
    ``transcript_ms`` (from the end of speech until the transcript was ready)."""

    TYPE: ClassVar[str] = "heard"
    text: str
    final: bool = False
    id: Optional[str] = None
    end_of_speech: Optional[float] = None
    transcript_ms: Optional[float] = None


@dataclass
class Listen(Message):
    """Push-to-talk (e.g. a button on the microcontroller): speech-in takes the next utterance
    starting within ``window_s`` seconds (default ``[speech_in] listen_window_s``) as a question."""

    TYPE: ClassVar[str] = "listen"
    window_s: Optional[float] = None


@dataclass
class AudioDevice(Message):
    """A voice bridge's microphone or speaker: ``ready``, or ``missing`` (cannot be found or opened,
    or it stopped; the bridge retries with backoff and ``message`` says why)."""

    TYPE: ClassVar[str] = "audio-device"
    bridge: str
    state: Literal["ready", "missing"]
    device: str = ""
    message: str = ""


@dataclass
class VoiceLatency(Message):
    """One voice turn's latencies, from speech-out, in milliseconds after the end of speech:
    transcript ready, first answer token, first sentence synthesized, first audio at the speaker."""

    TYPE: ClassVar[str] = "voice-latency"
    id: str
    text: str = ""
    transcript_ms: Optional[float] = None
    first_token_ms: Optional[float] = None
    first_sentence_ms: Optional[float] = None
    first_audio_ms: Optional[float] = None


@dataclass
class Speaking(Message):
    TYPE: ClassVar[str] = "speaking"
    state: Literal["start", "stop"]
    id: Optional[str] = None


@dataclass
class SerialPort(Message):
    """A serial bridge's port: ``state`` is waiting (absent or cannot open), busy (another process
    holds it), open (waiting for the board's HELLO), ready, lost (vanished) or closed."""

    TYPE: ClassVar[str] = "serial-port"
    port: str
    state: Literal["waiting", "busy", "open", "ready", "lost", "closed"]
    firmware: Optional[str] = None
    message: str = ""


@dataclass
class ActionRun(Message):
    """edgebotd -> the bridge serving ``port`` (edgebot-serial, or edgebot-mqtt for ``[mqtt] action_port``):
    run declared action ``name`` with ``args`` (already validated) and reply with ``action-result`` of the
    same ``id``."""

    TYPE: ClassVar[str] = "action-run"
    id: str
    port: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ActionResult(Message):
    """The bridge -> edgebotd: the board's ``R`` (or the MQTT device's result) for ``action-run`` ``id``
    (``ok`` false with ``text`` saying why when it answered ``err``, never answered, or could not be
    reached)."""

    TYPE: ClassVar[str] = "action-result"
    id: str
    ok: bool
    text: str = ""
    timeout: bool = False
    """True when the board never answered ``R`` (after the bridge's resends)."""


@dataclass
class Action(Message):
    """One action call and how it ended, published to subscribers and sent to the asker.
    ``result``: ok, err (the board refused), timeout (no ``R``), refused (undeclared, invalid
    arguments, switched off, rate limit), declined (not confirmed), pending (waiting for yes/no) or
    cancelled (the ask was cancelled while the board's result was awaited);
    ``path``: phrase (fast path), model, or confirm; ``ask`` the ask that led to it."""

    TYPE: ClassVar[str] = "action"
    id: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    result: Literal["ok", "err", "timeout", "refused", "declined", "pending", "cancelled"] = "ok"
    text: str = ""
    path: str = ""
    ask: Optional[str] = None
    source: str = ""


@dataclass
class Subscribe(Message):
    TYPE: ClassVar[str] = "subscribe"
    types: list[str]


@dataclass
class Status(Message):
    TYPE: ClassVar[str] = "status"


@dataclass
class StatusReport(Message):
    TYPE: ClassVar[str] = "status-report"
    server_version: str
    model: str
    state: str
    load_progress: Optional[float] = None
    """While ``state`` is ``loading``: percent of the model file loaded, where the backend tells."""
    queue: dict[str, Any] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    last_tokens_per_s: Optional[float] = None
    memory: dict[str, Any] = field(default_factory=dict)
    temperature_c: Optional[float] = None
    clients: int = 0
    error: str = ""
    """Why the model failed to load or the engine stopped (empty while all is well)."""
    voice_latency: dict[str, Any] = field(default_factory=dict)
    """The last ``voice-latency`` report (empty before the first voice turn; strings cut to 128/256 characters)."""
    speaking: list[dict[str, Any]] = field(default_factory=list)
    """What speech-out is speaking: ``[{id, client, since_s}]``; a start ends after ``[bus] speaking_max_s``."""
    actions: dict[str, Any] = field(default_factory=dict)
    """``{enabled, declared: [{name, description, parameters, port, confirm, rate_limit, ...}]}``."""
    devices: dict[str, Any] = field(default_factory=dict)
    """The bridges' devices as they last reported them: ``{"speech-out": {state, device, message}, ...}``
    from ``audio-device``; the key is the bridge (speech-in, speech-out); only connected bridges."""
    kv: dict[str, Any] = field(default_factory=dict)
    """The llama.cpp KV cache once loaded: ``{layout (shared|per-sequence), cells, used (tokens),
    sequences: [{seq, session, tokens, busy}], evictions, shifted_tokens, saved_sessions, saved_bytes,
    restored}``; empty for other backends."""


@dataclass
class Ping(Message):
    TYPE: ClassVar[str] = "ping"
    id: Optional[str] = None


@dataclass
class Pong(Message):
    TYPE: ClassVar[str] = "pong"
    id: Optional[str] = None


@dataclass
class Ack(Message):
    """The daemon's receipt for ``say``/``subscribe``: ``delivered`` = clients that got it."""

    TYPE: ClassVar[str] = "ack"
    of: str
    delivered: int = 0


@dataclass
class Error(Message):
    """``code`` is one of ERROR_CODES; ``id`` names the ask it concerns, if any."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    id: Optional[str] = None


ERROR_CODES = (
    "bad-json",          # the line is not JSON / not UTF-8
    "bad-envelope",      # not an object with "type" and an object "data"
    "unknown-type",
    "bad-field",         # missing, unknown or wrong-typed field
    "line-too-long",
    "flood",             # the client sent faster than its rate limit
    "busy",              # the engine queue (or the client's in-flight limit) is full
    "duplicate-id",
    "not-found",         # cancel of an unknown id
    "too-long",          # the prompt cannot fit the context window
    "not-ready",         # the model is not loaded
    "forbidden",         # peer credentials not allowed
    "not-allowed",       # a type that only the daemon sends
    "timeout",           # a client that said nothing within [bus] first_message_s of connecting
    "internal",
)

ALL_TYPES: tuple[type[Message], ...] = (
    Hello, Welcome, Ask, AnswerStart, ThinkDelta, AnswerDelta, AnswerEnd, Cancel, Say, Heard,
    Speaking, Subscribe, Status, StatusReport, Ping, Pong, Ack, Error, SerialPort, Listen, AudioDevice,
    VoiceLatency, ActionRun, ActionResult, Action,
)
BY_TYPE: dict[str, type[Message]] = {cls.TYPE: cls for cls in ALL_TYPES}
