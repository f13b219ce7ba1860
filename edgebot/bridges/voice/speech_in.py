"""edgebot-speech-in: the microphone becomes questions on the bus.

A capture thread reads the configured input device (any rate, resampled to 16 kHz mono), runs
Silero VAD + vosk (``recognizer.Endpointer``) and hands events to the asyncio side, which
publishes ``heard {final: false}`` partials, then ``heard {final: true, id, end_of_speech,
transcript_ms}`` and ``ask {id, source: "voice", speak: true, session: "voice"}`` for each question.

Modes (``[speech_in] mode``): ``always`` (every utterance is a question), ``wake`` (an utterance
containing ``wake_phrase``, spotted with a vosk grammar, opens the next utterance for
``wake_window_s``), ``push`` (a ``listen`` bus event opens the next utterance). While speech-out
is speaking (``speaking`` start..stop) the microphone is ignored, unless ``barge_in = true``: then
speech during an answer sends ``cancel`` for it and becomes the next question.

A device that is missing or fails is reported as ``audio-device {state: "missing"}`` on the bus
and in the log, and retried with backoff (0.5 s doubling to ``device_retry_max_s``); a stream
that stops delivering audio is closed and reopened the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import queue
import secrets
import sys
import threading
import time
from typing import Any, Optional, Sequence

from edgebot.bridges.voice import audio_device as ad
from edgebot.bridges.voice.recognizer import (CHUNK_S, RATE, ChunkBuffer, Dropped, EndpointConfig, Endpointer, Final,
                                        ModelError, Partial, SpeechStarted, load_vosk_model, resolve_vosk_model,
                                        wake_grammar, wake_spotted)
from edgebot.bridges.supervisor import Bridge, BusLink, base_parser, bridge_main
from edgebot.bus import messages as m
from edgebot.config import Config, ConfigError

log = logging.getLogger(__name__)

SESSION = "voice"
SOURCE = "voice"


class SpeechIn(Bridge):
    """The speech-in bridge; ``cfg`` is the ``[speech_in]`` section."""

    client_name = "edgebot-speech-in"
    role = "speech-in"
    subscriptions = ("speaking", "listen")

    def __init__(self, cfg: dict[str, Any], model: Any) -> None:
        self.cfg = cfg
        self.mode: str = cfg["mode"]
        self.barge_in: bool = cfg["barge_in"]
        grammar = wake_grammar(model, cfg["wake_phrase"], cfg["wake_fillers"]) if self.mode == "wake" else None
        self.endpointer = Endpointer(model, EndpointConfig(
            silence_s=cfg["silence_s"], vad_threshold=cfg["vad_threshold"], min_speech_s=cfg["min_speech_s"],
            max_utterance_s=cfg["max_utterance_s"]), grammar)
        self._warm_up()
        self.speaking: dict[str, float] = {}  # id -> when its speaking started (monotonic s)
        self.armed_until = 0.0  # wake/push: the next utterance is a question until then (monotonic s)
        self.rearm = 0.0
        self.device_state: Optional[m.AudioDevice] = None  # the last audio-device report
        self.barging = False
        self.stop = threading.Event()
        self.outbox: Optional[asyncio.Queue[m.Message]] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        # unguessable, so another client cannot take a question's id first (duplicate-id)
        self.ids = (f"voice-{os.getpid()}-{n}-{secrets.token_hex(4)}" for n in itertools.count(1))
        self.thread: Optional[threading.Thread] = None

    def _warm_up(self) -> None:
        """vosk's first decode allocates for ~0.5 s; do it now, not on the first question."""
        for rec in (self.endpointer.free, self.endpointer.wake):
            if rec is not None:
                rec.AcceptWaveform(bytes(RATE))
                rec.FinalResult()
                rec.Reset()

    # -- bus side ------------------------------------------------------------------------------

    async def run(self, link: BusLink) -> None:
        self.loop = asyncio.get_running_loop()
        self.outbox = asyncio.Queue()
        self.thread = threading.Thread(target=self._capture_loop, name="speech-in-capture", daemon=True)
        self.thread.start()
        while True:
            msg = await self.outbox.get()
            if not await link.send(msg):
                log.warning("bus unavailable: %s not sent", msg.TYPE)

    async def on_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Speaking):
            key = msg.id or ""
            if msg.state == "start":
                self.speaking[key] = time.monotonic()
            else:
                self.speaking.pop(key, None)
        elif isinstance(msg, m.Listen):
            if self.mode == "push" or self.mode == "wake":
                window = msg.window_s if msg.window_s and msg.window_s > 0 else self.cfg["listen_window_s"]
                self.armed_until = time.monotonic() + window
                log.info("listening for a question (%.1f s)", window)
        elif isinstance(msg, m.Error):
            log.warning("edgebotd: %s: %s", msg.code, msg.message)

    async def on_connected(self, link: BusLink) -> None:
        if self.device_state is not None:  # said while the bus was away: say it again
            await link.send(self.device_state)

    async def on_disconnected(self) -> None:
        self.speaking.clear()  # no speech-out news while away: do not stay muted

    async def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, 5.0)

    def _post(self, msg: m.Message) -> None:
        """From the capture thread: queue a message for the bus."""
        if isinstance(msg, m.AudioDevice):
            self.device_state = msg
        if self.loop is not None and self.outbox is not None:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, msg)

    # -- capture thread ------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        backoff = ad.Backoff(self.cfg["device_retry_s"], self.cfg["device_retry_max_s"])
        while not self.stop.is_set():
            try:
                self._capture(backoff)
            except ad.AudioDeviceError as exc:
                delay = backoff.next_delay()
                self._report_missing(str(exc), delay, backoff.attempts)
                self.stop.wait(delay)
                ad.rescan()
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the microphone for good
                log.exception("speech-in capture failed: %s", exc)
                self.stop.wait(backoff.next_delay())

    def _report_missing(self, why: str, retry_in: float, attempt: int) -> None:
        level = logging.WARNING if attempt == 1 or attempt % 10 == 0 else logging.INFO
        log.log(level, "microphone unavailable (attempt %d, retrying in %.1f s): %s", attempt, retry_in, why)
        self._post(m.AudioDevice(bridge="speech-in", state="missing", device=self.cfg["device"],
                                 message=f"{why} (retrying in {retry_in:.1f} s)"))

    def _capture(self, backoff: ad.Backoff) -> None:
        """Open the device and process its audio until it fails (raises) or we stop."""
        sd = ad.sounddevice()
        dev = ad.find_device(self.cfg["device"], "input")
        wanted = self.cfg["sample_rate"] or RATE
        rate = ad.pick_rate(dev, "input", wanted, 1, "float32")
        blocks: queue.Queue[tuple[Any, float]] = queue.Queue()
        watch = ad.StreamWatch(self.cfg["device_stall_s"])

        def callback(indata: Any, frames: int, _time: Any, status: Any) -> None:
            watch.beat()
            if status:
                log.debug("microphone: %s", status)  # e.g. input overflow: we fell behind
            blocks.put((indata.copy(), time.monotonic()))

        stream: Any = None
        error: Optional[Exception] = None
        for channels in dict.fromkeys((1, min(dev.channels, 2))):  # mono, else stereo mixed down here
            candidate = None
            try:
                candidate = sd.InputStream(device=dev.index, samplerate=rate, channels=channels, dtype="float32",
                                           blocksize=int(rate * CHUNK_S), latency="low", callback=callback,
                                           finished_callback=watch.on_finished)
                candidate.start()
                stream = candidate
                break
            except Exception as exc:  # noqa: BLE001 - PortAudioError or ValueError
                error = exc
                if candidate is not None:
                    candidate.close(ignore_errors=True)
        if stream is None:
            raise ad.AudioDeviceError(f"cannot open {dev.describe()}: {error}")
        resampler = ad.Resampler(rate, RATE) if rate != RATE else None
        log.info("opening microphone %s at %g Hz%s", dev.describe(), rate,
                 f" (resampled to {RATE} Hz)" if resampler else "")
        try:
            self._process(blocks, watch, resampler, dev, backoff)
        finally:
            try:
                stream.abort()
                stream.close()
            except Exception as exc:  # noqa: BLE001 - the device may already be gone
                log.debug("closing the input stream: %s", exc)

    def _process(self, blocks: queue.Queue, watch: ad.StreamWatch, resampler: Optional[ad.Resampler],
                 dev: ad.DeviceInfo, backoff: ad.Backoff) -> None:
        import numpy as np  # noqa: PLC0415

        buf = ChunkBuffer()
        ready = False
        muted = False
        while not self.stop.is_set():
            try:
                block, t = blocks.get(timeout=0.25)
            except queue.Empty:
                why = watch.stalled()
                if why:
                    raise ad.AudioDeviceError(f"{dev.describe()}: {why}") from None
                continue
            if not ready:
                ready = True
                backoff.reset()
                log.info("listening on %s (mode %s%s)", dev.name, self.mode,
                         ", barge-in" if self.barge_in else "")
                self._post(m.AudioDevice(bridge="speech-in", state="ready", device=self.cfg["device"],
                                         message=f"listening on {dev.describe()}"))
            mono = block.mean(axis=1) if block.ndim > 1 else block
            if resampler is not None:
                mono = resampler.process(mono)
            pcm = (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2").tobytes()
            chunks = buf.add(pcm)
            for i, chunk in enumerate(chunks):
                now_muted = bool(self.speaking) and not self.barge_in
                if now_muted:
                    if not muted:
                        self.endpointer.reset()
                    muted = True
                    continue
                muted = False
                t_chunk = t - (len(chunks) - 1 - i) * CHUNK_S
                listen = self._listen_for(time.monotonic())
                for ev in self.endpointer.process(chunk, t_chunk, listen):
                    self._on_event(ev)

    def _listen_for(self, now: float) -> Optional[str]:
        """Which recognizer the next utterance gets (decided when it starts)."""
        if self.speaking:
            return "free" if self.barge_in else None
        if self.mode == "always" or now < self.armed_until:
            return "free"
        return "wake" if self.mode == "wake" else None

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, SpeechStarted):
            self.rearm = self.armed_until
            if self.endpointer.use == "free" and self.armed_until:
                self.armed_until = 0.0  # the window is used by this utterance (given back if it was noise)
            if self.speaking and self.barge_in:
                self.barging = True
                for spoken_id in list(self.speaking):
                    log.info("barge-in: cancelling %s", spoken_id or "the current answer")
                    self._post(m.Cancel(id=spoken_id) if spoken_id else m.Cancel(session=SESSION))
        elif isinstance(ev, Partial):
            self._post(m.Heard(text=ev.text, final=False))
        elif isinstance(ev, Final) and ev.wake:
            if wake_spotted(ev.words, self.cfg["wake_phrase"], self.cfg["wake_confidence"]):
                self.armed_until = time.monotonic() + self.cfg["wake_window_s"]
                log.info("wake phrase heard; listening for a question (%.1f s)", self.cfg["wake_window_s"])
            else:
                log.debug("no wake phrase in %r (word confidences %s)", ev.text, ev.words)
        elif isinstance(ev, Final):
            self.barging = False
            ask_id = next(self.ids)
            transcript_ms = round((ev.t_transcript - ev.end_of_speech) * 1000, 1)
            log.info("heard %r (%.2f s of speech, transcript %.0f ms after its end) -> %s",
                     ev.text, ev.speech_s, transcript_ms, ask_id)
            self._post(m.Heard(text=ev.text, final=True, id=ask_id, end_of_speech=ev.end_of_speech,
                               transcript_ms=transcript_ms))
            self._post(m.Ask(id=ask_id, text=ev.text, session=SESSION, source=SOURCE, speak=True))
        elif isinstance(ev, Dropped):
            self.barging = False
            self.armed_until = max(self.armed_until, self.rearm)
            log.debug("utterance dropped: %s", ev.reason)


def build(args: argparse.Namespace, config: Config) -> SpeechIn:
    cfg = config.section("speech_in")
    try:
        path = resolve_vosk_model(cfg["model"])
        t0 = time.monotonic()
        model = load_vosk_model(path)
        log.info("vosk model %s loaded in %.1f s", path, time.monotonic() - t0)
        return SpeechIn(cfg, model)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser("edgebot-speech-in", "Speech in: microphone -> vosk -> questions on the edgebot bus.",
                         examples="  edgebot-speech-in --list-devices\n"
                                  "  edgebot-speech-in --device USB --mode wake")
    parser.add_argument("--device", help="input device: name substring or index ([speech_in] device)")
    parser.add_argument("--mode", choices=("always", "wake", "push"), help="[speech_in] mode")
    parser.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    args = parser.parse_args(argv)
    if args.list_devices:
        return ad.print_devices("input", "edgebot-speech-in")
    return bridge_main(parser, build, argv,
                       overrides=lambda a: {"speech_in.device": a.device, "speech_in.mode": a.mode})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
