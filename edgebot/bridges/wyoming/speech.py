"""Optional Wyoming ``tts`` and ``asr`` on the board's own piper voice and vosk model, so a Home
Assistant install can use them (``[wyoming] tts`` / ``asr``; off by default: they load the models
into this process).

- ``synthesize {text}`` → ``audio-start`` (the voice's rate, 16-bit mono), ``audio-chunk``s,
  ``audio-stop``: piper through :mod:`edgebot.bridges.voice.tts`.
- ``transcribe`` (optional), ``audio-start``, ``audio-chunk``s, ``audio-stop`` → ``transcript``:
  vosk through :mod:`edgebot.bridges.voice.recognizer`, the audio converted to 16 kHz 16-bit mono
  by the wyoming package's converter. Home Assistant runs its own VAD, so the whole utterance
  between ``audio-start`` and ``audio-stop`` is one transcript.

Synthesis and recognition run in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Optional

from edgebot.config import Config, ConfigError

log = logging.getLogger(__name__)

CHUNK_SAMPLES = 1024
"""Samples per ``audio-chunk`` sent."""
RATE = 16000
"""Hz: what vosk models are trained on; input audio is converted to it."""


class Speech:
    """The loaded voice and/or recognizer model of one edgebot-wyoming."""

    def __init__(self, config: Config) -> None:
        wy = config.section("wyoming")
        self.languages = list(wy["languages"])
        self.voice: Any = None
        self.vosk: Any = None
        if wy["tts"]:
            from edgebot.bridges.voice.tts import VoiceError, load_voice

            try:
                self.voice = load_voice(config.get("speech_out", "voice"), config.get("speech_out", "length_scale"))
            except VoiceError as exc:
                raise ConfigError(f"[wyoming] tts = true, but the voice cannot be loaded: {exc}") from None
        if wy["asr"]:
            from edgebot.bridges.voice.recognizer import ModelError, load_vosk_model, resolve_vosk_model

            try:
                self.vosk_path = resolve_vosk_model(config.get("speech_in", "model"))
                self.vosk = load_vosk_model(self.vosk_path)
            except ModelError as exc:
                raise ConfigError(f"[wyoming] asr = true, but the vosk model cannot be loaded: {exc}") from None

    def programs(self) -> dict[str, list[Any]]:
        """The ``asr``/``tts`` entries of ``info``."""
        from wyoming.info import AsrModel, AsrProgram, Attribution, TtsProgram, TtsVoice

        out: dict[str, list[Any]] = {"asr": [], "tts": []}
        if self.voice is not None:
            piper = Attribution(name="piper", url="")
            voice = TtsVoice(name=self.voice.model.stem, attribution=piper, installed=True, description=None,
                             version=None, languages=[self.voice.info.get("language", {}).get("code", "")])
            out["tts"].append(TtsProgram(name="edgebot-piper", attribution=piper, installed=True,
                                         description="the board's piper voice", version=None, voices=[voice]))
        if self.vosk is not None:
            vosk = Attribution(name="vosk", url="")
            model = AsrModel(name=self.vosk_path.name, attribution=vosk, installed=True, description=None,
                             version=None, languages=self.languages)
            out["asr"].append(AsrProgram(name="edgebot-vosk", attribution=vosk, installed=True,
                                         description="the board's vosk model", version=None, models=[model]))
        return out

    def handles(self, event_type: str) -> bool:
        if self.voice is not None and event_type == "synthesize":
            return True
        return self.vosk is not None and event_type in ("transcribe", "audio-start", "audio-chunk", "audio-stop")

    async def handle(self, event: Any, state: dict[str, Any]) -> list[Any]:
        """The reply events for one event; ``state`` is the connection's (an utterance in progress)."""
        from wyoming.error import Error

        loop = asyncio.get_running_loop()
        if event.type == "synthesize":
            text = event.data.get("text")
            if not isinstance(text, str) or not text.strip():
                return [Error(text="synthesize needs a non-empty \"text\"", code="bad-field").event()]
            return await loop.run_in_executor(None, self._synthesize, text)
        return await loop.run_in_executor(None, self._listen, event, state)

    def _synthesize(self, text: str) -> list[Any]:
        import numpy as np
        from wyoming.audio import AudioChunk, AudioStart, AudioStop

        audio = self.voice.synthesize(text)
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        rate = self.voice.rate
        step = CHUNK_SAMPLES * 2
        return [AudioStart(rate=rate, width=2, channels=1).event(),
                *(AudioChunk(rate=rate, width=2, channels=1, audio=pcm[i:i + step]).event()
                  for i in range(0, len(pcm), step)),
                AudioStop().event()]

    def _listen(self, event: Any, state: dict[str, Any]) -> list[Any]:
        import vosk
        from wyoming.asr import Transcript
        from wyoming.audio import AudioChunk, AudioChunkConverter
        from wyoming.error import Error

        if event.type == "transcribe":
            state["language"] = event.data.get("language")
            return []
        if event.type == "audio-start":
            state["rec"] = vosk.KaldiRecognizer(self.vosk, RATE)
            state["convert"] = AudioChunkConverter(rate=RATE, width=2, channels=1)
            return []
        rec = state.get("rec")
        if rec is None:
            return [Error(text=f"{event.type} before audio-start", code="bad-event").event()]
        if event.type == "audio-chunk":
            try:
                chunk = state["convert"].convert(AudioChunk.from_event(event))
            except (KeyError, TypeError, ValueError) as exc:
                state.pop("rec", None)
                return [Error(text=f"audio-chunk needs rate, width, channels and audio: {exc}", code="bad-event")
                        .event()]
            rec.AcceptWaveform(chunk.audio)
            return []
        text = json.loads(rec.FinalResult()).get("text", "")
        state.pop("rec", None)
        log.info("wyoming asr heard %r", text)
        return [Transcript(text=text, language=state.get("language")).event()]


def load_speech(config: Config) -> Optional[Speech]:
    """The speech services ``[wyoming]`` asks for, or None."""
    wy = config.section("wyoming")
    return Speech(config) if wy["tts"] or wy["asr"] else None
