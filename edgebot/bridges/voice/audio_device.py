"""Audio devices for the voice bridges: choose one by name or index, open it, retry with backoff.

Shared by ``speech_in`` (input) and ``speech_out`` (output). A device is given in the config as
``""`` (the system default), an index (``"3"``) or a case-insensitive substring of its name
(``"USB"``, ``"pulse"``); when none matches, :class:`AudioDeviceError` lists the devices there
are. ``sounddevice`` (PortAudio) is imported lazily so that importing this module stays cheap.

PortAudio scans devices once when it starts; :func:`rescan` restarts it so a device plugged in
later is found. A stream whose callbacks stop (device unplugged, sound server gone) is noticed by
:class:`StreamWatch`; the bridges then close it and reopen with :class:`Backoff`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional

log = logging.getLogger(__name__)

Kind = Literal["input", "output"]


class AudioDeviceError(Exception):
    """A device cannot be found or opened; the message names it and lists what there is."""


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device as a bridge sees it. ``default_rate`` in Hz."""

    index: int
    name: str
    hostapi: str
    channels: int
    default_rate: float

    def describe(self) -> str:
        return f"{self.index}: {self.name!r} ({self.hostapi}, {self.channels} ch, {self.default_rate:g} Hz)"


def sounddevice() -> Any:
    """The ``sounddevice`` module, or AudioDeviceError saying how to install it."""
    try:
        import sounddevice as sd  # noqa: PLC0415 - heavy, optional (the speech-in/speech-out extras)
    except ImportError as exc:
        raise AudioDeviceError(f"sounddevice is not installed ({exc}); install edgebot[speech-in] or edgebot[speech-out]") from None
    except OSError as exc:  # libportaudio2 missing
        raise AudioDeviceError(f"PortAudio cannot be loaded ({exc}); install libportaudio2") from None
    return sd


def print_devices(kind: Kind, prog: str) -> int:
    """``--list-devices`` of a bridge: the ``kind`` devices on stdout; the exit code."""
    import sys

    try:
        print("\n".join(d.describe() for d in list_devices(kind)) or f"no {kind} devices")
        return 0
    except AudioDeviceError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def list_devices(kind: Kind) -> list[DeviceInfo]:
    """Every device with at least one ``kind`` channel."""
    sd = sounddevice()
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    apis = [api["name"] for api in sd.query_hostapis()]
    return [DeviceInfo(d["index"], d["name"], apis[d["hostapi"]], d[key], d["default_samplerate"])
            for d in sd.query_devices() if d[key] > 0]


def describe_devices(kind: Kind) -> str:
    devices = list_devices(kind)
    if not devices:
        return f"no {kind} devices at all (is a sound card or sound server there?)"
    return f"{kind} devices: " + "; ".join(d.describe() for d in devices)


def find_device(spec: str, kind: Kind) -> DeviceInfo:
    """The device ``spec`` names: ``""`` = the default, digits = an index, else a name substring.

    An exact name wins over substrings; among substrings the first (lowest index) wins.
    """
    sd = sounddevice()
    devices = list_devices(kind)
    spec = spec.strip()
    if not spec:
        default = sd.default.device[0 if kind == "input" else 1]
        if default is None or default < 0:
            for d in devices:  # no default: the first device that can do it
                return d
            raise AudioDeviceError(f"there is no default {kind} device; {describe_devices(kind)}")
        spec = str(default)
    if spec.isdigit():
        for d in devices:
            if d.index == int(spec):
                return d
        raise AudioDeviceError(f"no {kind} device with index {spec}; {describe_devices(kind)}")
    exact = [d for d in devices if d.name.lower() == spec.lower()]
    partial = [d for d in devices if spec.lower() in d.name.lower()]
    if exact or partial:
        chosen = (exact or partial)[0]
        if len(partial) > 1 and not exact:
            log.info("%s device %r matches %d devices; using %s", kind, spec, len(partial), chosen.describe())
        return chosen
    raise AudioDeviceError(f"no {kind} device matches {spec!r}; {describe_devices(kind)}")


def rescan() -> None:
    """Restart PortAudio so that devices added or removed since it started are seen."""
    sd = sounddevice()
    try:
        sd._terminate()
        sd._initialize()
    except Exception as exc:  # noqa: BLE001 - PortAudio reports any failure here the same way
        log.debug("PortAudio restart failed: %s", exc)


def pick_rate(device: DeviceInfo, kind: Kind, wanted: float, channels: int, dtype: str) -> float:
    """``wanted`` Hz if the device accepts it, else its default rate (the caller resamples)."""
    sd = sounddevice()
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=device.index, samplerate=wanted, channels=channels, dtype=dtype)
        return wanted
    except Exception:  # noqa: BLE001 - PortAudio raises ValueError or PortAudioError
        return device.default_rate


class Backoff:
    """Delays for retrying a device: ``initial`` doubling up to ``maximum`` seconds, with jitter."""

    def __init__(self, initial: float = 0.5, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempts = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt (never below ``initial`` / 1.25)."""
        delay = min(self.initial * (2 ** self.attempts), self.maximum)
        self.attempts += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.attempts = 0


class StreamWatch:
    """Notices a stream that stopped delivering callbacks (device gone) or finished by itself.

    ``beat()`` is called from the audio callback; ``stalled()`` from the bridge's own thread.
    """

    def __init__(self, stall_s: float = 2.0) -> None:
        self.stall_s = stall_s
        self.last = time.monotonic()
        self.started = False
        self.finished = threading.Event()

    def beat(self) -> None:
        self.last = time.monotonic()
        self.started = True

    def on_finished(self) -> None:
        """``finished_callback`` of the stream: it ended without being asked to."""
        self.finished.set()

    def stalled(self) -> Optional[str]:
        """Why the stream is considered dead, or None while it is alive.

        Before the first callback, a stream gets ``4 * stall_s`` (a sound server can take a
        moment to start a new stream)."""
        if self.finished.is_set():
            return "the audio stream stopped (device removed or sound server gone)"
        quiet = time.monotonic() - self.last
        if quiet > (self.stall_s if self.started else 4 * self.stall_s):
            return f"no audio from the device for {quiet:.1f} s"
        return None


class Resampler:
    """Streaming resampler for mono float32 audio (linear interpolation after a low-pass FIR).

    Good enough for speech recognition and for playing a voice at a device's own rate; state is
    kept across blocks so there are no clicks at block edges. Rates in Hz.
    """

    def __init__(self, src_rate: float, dst_rate: float, taps: int = 31) -> None:
        import numpy as np  # noqa: PLC0415 - numpy is part of the speech-in/speech-out extras

        self.np = np
        self.ratio = src_rate / dst_rate
        self.pos = 0.0  # position of the next output sample, in input samples from ``tail[0]``
        cutoff = min(1.0, dst_rate / src_rate) * 0.9  # fraction of the source Nyquist
        n = np.arange(taps) - (taps - 1) / 2
        fir = np.sinc(cutoff * n) * np.hamming(taps) if cutoff < 1.0 else (n == 0).astype(float)
        self.fir = (fir / fir.sum()).astype(np.float32)
        self.hist = np.zeros(taps - 1, dtype=np.float32)
        self.tail = np.zeros(1, dtype=np.float32)

    def process(self, block: Any) -> Any:
        """Resample one block (1-D float32); returns the output samples it completes."""
        np = self.np
        x = np.concatenate([self.hist, np.asarray(block, dtype=np.float32)])
        self.hist = x[len(x) - len(self.hist):] if len(self.hist) else self.hist
        filtered = np.convolve(x, self.fir, mode="valid").astype(np.float32)
        src = np.concatenate([self.tail, filtered])
        last = len(src) - 1  # interpolate only between samples we have
        n_out = int(np.floor((last - self.pos) / self.ratio)) + 1 if last >= self.pos else 0
        idx = self.pos + self.ratio * np.arange(n_out)
        out = np.interp(idx, np.arange(len(src)), src).astype(np.float32)
        self.pos = self.pos + self.ratio * n_out - last
        self.tail = src[-1:]
        return out
