"""Audio out for speech-out: one output stream, a queue of sentences, instant drop on cancel.

A device thread keeps one sounddevice output stream open (reopening it with backoff when the
device is missing or the stream dies). The stream's callback takes samples from a queue of
segments, each tagged with the utterance (answer or ``say``) it belongs to; it writes silence
when the queue is empty. ``drop(id)`` removes an utterance's segments, including the one playing,
so the sound stops after at most the stream's own buffer (``latency_s``, 50 ms by default).

The callback reports, through ``on_event``, when an utterance's first sample will reach the
speaker (``"start"``, CLOCK_MONOTONIC seconds from PortAudio's DAC time) and when its last
sample was handed over (``"stop"``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from edgebot.bridges.voice import audio_device as ad

log = logging.getLogger(__name__)

EventSink = Callable[[str, str, float], None]
"""``on_event(kind, utterance_id, t)``: kind is start, stop, ready or missing (then id is the reason)."""


@dataclass
class Segment:
    utt: str
    audio: Any  # float32 mono at the stream's rate; None marks the end of the utterance
    pos: int = 0


class Player:
    """The speaker. ``rate`` (Hz) is decided when the device opens; ``enqueue`` audio at that rate."""

    def __init__(self, device: str, voice_rate: int, on_event: EventSink, latency_s: float = 0.05,
                 retry_s: float = 0.5, retry_max_s: float = 10.0, stall_s: float = 2.0) -> None:
        self.device = device
        self.voice_rate = voice_rate
        self.rate = voice_rate
        self.on_event = on_event
        self.latency_s = latency_s
        self.backoff = ad.Backoff(retry_s, retry_max_s)
        self.stall_s = stall_s
        self.lock = threading.Lock()
        self.queue: collections.deque[Segment] = collections.deque()
        self.playing: Optional[str] = None  # utterance whose samples are being handed over
        self.ready = threading.Event()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._device_loop, name="speech-out-device", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(5.0)

    # -- producer side -------------------------------------------------------------------------

    def enqueue(self, utt: str, audio: Any) -> bool:
        """Queue audio (float32 mono at ``rate``) for ``utt``; False while there is no device."""
        if not self.ready.is_set():
            return False
        with self.lock:
            self.queue.append(Segment(utt, audio))
        return True

    def end(self, utt: str) -> None:
        """No more audio for ``utt``: ``stop`` is reported when its last sample is handed over."""
        with self.lock:
            self.queue.append(Segment(utt, None))

    def drop(self, utt: str) -> bool:
        """Silence ``utt`` now and forget its queued audio; True if it was playing or queued."""
        with self.lock:
            before = len(self.queue)
            self.queue = collections.deque(s for s in self.queue if s.utt != utt)
            was_playing = self.playing == utt
            if was_playing:
                self.playing = None
        if was_playing:
            self.on_event("stop", utt, time.monotonic())
        return was_playing or len(self.queue) != before

    def clear(self) -> None:
        """Forget everything (the device went away)."""
        with self.lock:
            self.queue.clear()
            playing, self.playing = self.playing, None
        if playing:
            self.on_event("stop", playing, time.monotonic())

    # -- the stream ----------------------------------------------------------------------------

    def _callback(self, out: Any, frames: int, time_info: Any, status: Any) -> None:
        self.watch.beat()
        out.fill(0)
        filled = 0
        events: list[tuple[str, str, float]] = []
        try:
            dac_delay = max(0.0, float(time_info.outputBufferDacTime - time_info.currentTime))
        except (AttributeError, TypeError):
            dac_delay = self.latency_s
        now = time.monotonic()
        with self.lock:
            while filled < frames and self.queue:
                seg = self.queue[0]
                if seg.audio is None:  # end marker
                    self.queue.popleft()
                    if self.playing == seg.utt:
                        self.playing = None
                        events.append(("stop", seg.utt, now + dac_delay + filled / self.rate))
                    continue
                if self.playing != seg.utt:
                    self.playing = seg.utt
                    events.append(("start", seg.utt, now + dac_delay + filled / self.rate))
                n = min(frames - filled, len(seg.audio) - seg.pos)
                out[filled:filled + n, 0] = seg.audio[seg.pos:seg.pos + n]
                filled += n
                seg.pos += n
                if seg.pos >= len(seg.audio):
                    self.queue.popleft()
        for ev in events:
            self.on_event(*ev)

    def _device_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._run_stream()
            except ad.AudioDeviceError as exc:
                self.ready.clear()
                self.clear()
                delay = self.backoff.next_delay()
                level = logging.WARNING if self.backoff.attempts in (1,) or self.backoff.attempts % 10 == 0 \
                    else logging.INFO
                log.log(level, "speaker unavailable (attempt %d, retrying in %.1f s): %s",
                        self.backoff.attempts, delay, exc)
                self.on_event("missing", f"{exc} (retrying in {delay:.1f} s)", time.monotonic())
                self.stop_event.wait(delay)
                ad.rescan()
            except Exception as exc:  # noqa: BLE001 - never let a bug silence the robot for good
                log.exception("speech-out device loop failed: %s", exc)
                self.stop_event.wait(self.backoff.next_delay())

    def _run_stream(self) -> None:
        sd = ad.sounddevice()
        dev = ad.find_device(self.device, "output")
        self.rate = int(ad.pick_rate(dev, "output", self.voice_rate, 1, "float32"))
        self.watch = ad.StreamWatch(self.stall_s)
        try:
            stream = sd.OutputStream(device=dev.index, samplerate=self.rate, channels=1, dtype="float32",
                                     latency=self.latency_s, callback=self._callback,
                                     finished_callback=self.watch.on_finished)
            stream.start()
        except Exception as exc:  # noqa: BLE001 - PortAudioError or ValueError
            raise ad.AudioDeviceError(f"cannot open {dev.describe()}: {exc}") from None
        try:
            while not self.stop_event.wait(0.25):
                why = self.watch.stalled()
                if why:
                    raise ad.AudioDeviceError(f"{dev.describe()}: {why}")
                if self.watch.started and not self.ready.is_set():
                    self.backoff.reset()
                    self.ready.set()
                    log.info("speaking on %s at %d Hz (output latency %.0f ms)", dev.describe(), self.rate,
                             stream.latency * 1000)
                    self.on_event("ready", dev.describe(), time.monotonic())
        finally:
            try:
                stream.abort()
                stream.close()
            except Exception as exc:  # noqa: BLE001 - the device may already be gone
                log.debug("closing the output stream: %s", exc)
