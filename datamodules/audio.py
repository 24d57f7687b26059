"""Audio decoding for the data path: file -> mono float32 at the encoder's rate.

soundfile reads wav/flac/ogg/mp3 (libsndfile ships in its wheel); soxr resamples. torchaudio is
not used: its current wheels are CUDA-only and do not import beside the CPU torch pinned here.
Every failure names the file and the reason; nothing is silently replaced.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """A clip that cannot be used, with the file and the reason in the message."""


def load_audio(path: str, sample_rate: int, start: float = 0.0, end: Optional[float] = None) -> np.ndarray:
    """Decode ``path`` between ``start`` and ``end`` seconds, mix to mono, resample to ``sample_rate``."""
    if not os.path.exists(path):
        raise AudioError(f"{path}: file does not exist")
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            first = int(round(start * sr))
            last = f.frames if end is None else min(f.frames, int(round(end * sr)))
            if first > 0:
                f.seek(min(first, f.frames))
            data = f.read(max(0, last - first), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no audio samples between {start} s and {end if end is not None else 'the end'}")
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: contains NaN or Inf samples")
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)
