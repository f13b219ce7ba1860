"""edgebot-speech-out: answers become speech while they are still being written.

Follows ``answer-start`` with ``speak: true`` and ``say`` events. Each answer's deltas go through a
``SentenceCutter``; each complete sentence is cleaned (``clean_for_speech``), synthesized with
piper on a synth thread and queued on the ``Player`` at once, so the first sentence plays while
the model is still generating. Thinking never reaches this bridge (edgebotd sends ``think-delta``
only to the asker). Utterances play one after another in the order they arrived.

Publishes ``speaking {state: "start"|"stop", id}`` around each utterance's audio, ``audio-device``
when the speaker is ready or missing, and, for a voice turn (an answer whose id speech-in
announced in ``heard {final: true}``), one ``voice-latency`` event: milliseconds from the end of
speech to transcript, first answer token, first sentence synthesized and first audio at the
speaker (all on CLOCK_MONOTONIC, which both bridges share on one machine).

``cancel`` (by id or session) stops the sound within the output buffer (50 ms) and drops the
queued sentences.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from edgebot.bridges.voice import audio_device as ad
from edgebot.bridges.voice.player import Player
from edgebot.bridges.voice.sentences import SentenceCutter, clean_for_speech
from edgebot.bridges.supervisor import Bridge, BusLink, base_parser, bridge_main
from edgebot.bridges.voice.tts import Voice, VoiceError, load_voice
from edgebot.bus import messages as m
from edgebot.config import Config, ConfigError

log = logging.getLogger(__name__)

HEARD_KEEP = 32
"""How many recent ``heard`` announcements are kept to match answers for latency reports."""


@dataclass
class Utterance:
    """One answer or ``say`` being spoken. Times are CLOCK_MONOTONIC seconds."""

    id: str
    session: Optional[str]
    cutter: SentenceCutter
    heard: Optional[m.Heard] = None
    cancelled: bool = False
    sentences: int = 0
    t_first_token: Optional[float] = None
    t_first_sentence: Optional[float] = None
    t_first_audio: Optional[float] = None
    texts: collections.deque[str] = field(default_factory=collections.deque)
    """Cleaned sentences waiting for the synth thread."""
    ended: bool = False
    """No more text will come (answer-end, or a whole ``say``)."""


class SpeechOut(Bridge):
    """The speech-out bridge; ``cfg`` is the ``[speech_out]`` section."""

    client_name = "edgebot-speech-out"
    role = "speech-out"
    subscriptions = ("answer-start", "answer-delta", "answer-end", "say", "cancel", "heard")

    def __init__(self, cfg: dict[str, Any], voice: Voice) -> None:
        self.cfg = cfg
        self.voice = voice
        self.utts: dict[str, Utterance] = {}  # answers still streaming, by id
        self.active: dict[str, Utterance] = {}  # every utterance not yet finished playing
        self.heard: dict[str, m.Heard] = {}
        self.device_state: Optional[m.AudioDevice] = None  # the last audio-device report
        self.order: collections.deque[Utterance] = collections.deque()  # synthesized in this order
        self.cond = threading.Condition()
        self.say_ids = (f"say-{n}" for n in itertools.count(1))
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.outbox: Optional[asyncio.Queue[m.Message]] = None
        self.player = Player(cfg["device"], voice.rate, self._player_event, latency_s=cfg["latency_s"],
                             retry_s=cfg["device_retry_s"], retry_max_s=cfg["device_retry_max_s"],
                             stall_s=cfg["device_stall_s"])
        self.stop = threading.Event()
        self.synth_thread = threading.Thread(target=self._synth_loop, name="speech-out-synth", daemon=True)

    # -- bus side ------------------------------------------------------------------------------

    async def run(self, link: BusLink) -> None:
        self.loop = asyncio.get_running_loop()
        self.outbox = asyncio.Queue()
        self.player.start()
        self.synth_thread.start()
        while True:
            msg = await self.outbox.get()
            if not await link.send(msg):
                log.debug("bus unavailable: %s not sent", msg.TYPE)

    async def on_connected(self, link: BusLink) -> None:
        if self.device_state is not None:  # said while the bus was away: say it again
            await link.send(self.device_state)

    async def on_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.AnswerStart):
            if msg.speak:
                self._begin(msg.id, msg.session)
        elif isinstance(msg, m.AnswerDelta):
            utt = self.utts.get(msg.id)
            if utt is not None:
                if utt.t_first_token is None:
                    utt.t_first_token = time.monotonic()
                self._queue_sentences(utt, utt.cutter.feed(msg.text))
        elif isinstance(msg, m.AnswerEnd):
            utt = self.utts.pop(msg.id, None)
            if utt is not None and msg.reason == "cancelled":  # e.g. edgebotd stopping: say no more of it
                self._drop(utt)
                log.info("answer %s ended cancelled: speech stopped", utt.id)
            elif utt is not None:
                self._queue_sentences(utt, utt.cutter.flush(), end=True)
        elif isinstance(msg, m.Say):
            utt_id = msg.id or next(self.say_ids)
            if utt_id in self.active:  # never replace an utterance in progress: it would wait forever
                utt_id = f"{utt_id}~{next(self.say_ids)}"
            utt = self._begin(utt_id, None)
            self.utts.pop(utt.id, None)
            self._queue_sentences(utt, utt.cutter.feed(msg.text) + utt.cutter.flush(), end=True)
        elif isinstance(msg, m.Cancel):
            self._cancel(msg)
        elif isinstance(msg, m.Heard):
            if msg.final and msg.id:
                self.heard[msg.id] = msg
                while len(self.heard) > HEARD_KEEP:
                    self.heard.pop(next(iter(self.heard)))

    def _begin(self, utt_id: str, session: Optional[str]) -> Utterance:
        utt = Utterance(utt_id, session, SentenceCutter(self.cfg["max_sentence_chars"]), self.heard.pop(utt_id, None))
        self.utts[utt_id] = utt
        self.active[utt_id] = utt
        with self.cond:
            self.order.append(utt)
        return utt

    def _queue_sentences(self, utt: Utterance, sentences: list[str], end: bool = False) -> None:
        texts = [t for t in map(clean_for_speech, sentences) if t]
        if texts or end:
            with self.cond:
                utt.texts.extend(texts)
                utt.ended = utt.ended or end
                self.cond.notify()

    def _cancel(self, msg: m.Cancel) -> None:
        for utt in list(self.active.values()):
            if (msg.id is not None and utt.id == msg.id) or (msg.session is not None and utt.session == msg.session):
                self._drop(utt)
                log.info("cancelled %s: speech stopped", utt.id)

    def _drop(self, utt: Utterance) -> None:
        """Stop ``utt`` now: its queued sentences, its sound, and its place in the order."""
        with self.cond:
            utt.cancelled = True
            utt.texts.clear()
            self.cond.notify()
        self.utts.pop(utt.id, None)
        self.active.pop(utt.id, None)
        self.player.drop(utt.id)

    async def on_disconnected(self) -> None:
        """The bus went away (edgebotd restarted or died): the answers being streamed will never end
        and ids mean nothing to a new edgebotd. Stop the sound and forget every utterance, so the
        next answer or ``say`` after reconnecting is spoken at once."""
        dropped = list(self.active.values())
        for utt in dropped:
            self._drop(utt)
        self.utts.clear()
        self.heard.clear()
        if dropped:
            log.warning("bus lost: stopped speaking %s", ", ".join(u.id for u in dropped))

    async def close(self) -> None:
        with self.cond:
            self.stop.set()
            self.cond.notify()
        await asyncio.to_thread(self.player.close)

    # -- from the player (audio thread) --------------------------------------------------------

    def _player_event(self, kind: str, ident: str, t: float) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._on_player_event, kind, ident, t)

    def _on_player_event(self, kind: str, ident: str, t: float) -> None:
        assert self.outbox is not None
        if kind in ("ready", "missing"):
            self.device_state = m.AudioDevice(bridge="speech-out", state=kind,  # type: ignore[arg-type]
                                              device=self.cfg["device"],
                                              message=f"speaking on {ident}" if kind == "ready" else ident)
            self.outbox.put_nowait(self.device_state)
        elif kind == "start":
            self.outbox.put_nowait(m.Speaking(state="start", id=ident))
            utt = self.active.get(ident)
            if utt is not None and utt.t_first_audio is None:
                utt.t_first_audio = t
                self._report_latency(utt)
        elif kind == "stop":
            self.outbox.put_nowait(m.Speaking(state="stop", id=ident))
            self.active.pop(ident, None)

    def _report_latency(self, utt: Utterance) -> None:
        heard = utt.heard
        if heard is None or heard.end_of_speech is None:
            return
        eos = heard.end_of_speech

        def ms(t: Optional[float]) -> Optional[float]:
            return None if t is None else round((t - eos) * 1000, 1)

        report = m.VoiceLatency(id=utt.id, text=heard.text, transcript_ms=heard.transcript_ms,
                                first_token_ms=ms(utt.t_first_token), first_sentence_ms=ms(utt.t_first_sentence),
                                first_audio_ms=ms(utt.t_first_audio))
        log.info("voice turn %s: transcript %s ms, first token %s ms, first sentence %s ms, first audio %s ms "
                 "after the end of speech", utt.id, report.transcript_ms, report.first_token_ms,
                 report.first_sentence_ms, report.first_audio_ms)
        assert self.outbox is not None
        self.outbox.put_nowait(report)

    # -- synth thread --------------------------------------------------------------------------

    def _next_text(self) -> Optional[tuple[Utterance, Optional[str]]]:
        """Wait for work: (utterance, sentence), or (utterance, None) at its end; None to stop.

        Utterances are served strictly in order: a ``say`` that arrives while an answer is still
        streaming waits until that answer has ended."""
        with self.cond:
            while not self.stop.is_set():
                while self.order and self.order[0].cancelled:
                    self.order.popleft()
                if self.order:
                    head = self.order[0]
                    if head.texts:
                        return head, head.texts.popleft()
                    if head.ended:
                        self.order.popleft()
                        return head, None
                self.cond.wait()
        return None

    def _synth_loop(self) -> None:
        silence_s = self.cfg["sentence_silence_s"]
        while True:
            work = self._next_text()
            if work is None:
                return
            utt, text = work
            if text is None:
                self.player.end(utt.id)
                if not utt.sentences and self.loop is not None:  # nothing speakable: never started
                    self.loop.call_soon_threadsafe(self.active.pop, utt.id, None)
                continue
            try:
                audio = self.voice.synthesize(text)
            except Exception as exc:  # noqa: BLE001 - one bad sentence must not stop the voice
                log.warning("cannot synthesize %r: %s", text, exc)
                continue
            if utt.cancelled or not len(audio):
                continue
            audio = self._fit(audio, silence_s if utt.sentences else 0.0)
            if utt.t_first_sentence is None:
                utt.t_first_sentence = time.monotonic()
            utt.sentences += 1
            with self.cond:  # a cancel either sees this audio queued (and drops it) or stops it here
                if utt.cancelled:
                    continue
                queued = self.player.enqueue(utt.id, audio)
            if not queued:
                log.warning("no speaker: %r not spoken", text)

    def _fit(self, audio: Any, pause_s: float) -> Any:
        """Resample to the device's rate if it differs from the voice's; prepend a pause."""
        import numpy as np  # noqa: PLC0415

        if self.player.rate != self.voice.rate:
            audio = ad.Resampler(self.voice.rate, self.player.rate).process(audio)
        if pause_s > 0:
            audio = np.concatenate([np.zeros(int(pause_s * self.player.rate), dtype=np.float32), audio])
        return audio


def build(args: argparse.Namespace, config: Config) -> SpeechOut:
    cfg = config.section("speech_out")
    try:
        voice = load_voice(cfg["voice"], cfg["length_scale"])
    except VoiceError as exc:
        raise ConfigError(str(exc)) from None
    return SpeechOut(cfg, voice)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser("edgebot-speech-out", "Speech out: answers and `say` events -> piper -> speaker.",
                         examples="  edgebot-speech-out --list-devices\n"
                                  "  edgebot-speech-out --device USB --voice /var/lib/edgebot/voices/en_US-lessac-medium.onnx")
    parser.add_argument("--device", help="output device: name substring or index ([speech_out] device)")
    parser.add_argument("--voice", help="piper voice .onnx or voice package ([speech_out] voice)")
    parser.add_argument("--list-devices", action="store_true", help="list output devices and exit")
    args = parser.parse_args(argv)
    if args.list_devices:
        return ad.print_devices("output", "edgebot-speech-out")
    return bridge_main(parser, build, argv,
                       overrides=lambda a: {"speech_out.device": a.device, "speech_out.voice": a.voice})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
