"""Audio decoding for the data path: file -> mono float32 at the encoder's rate.

soundfile reads wav/flac/ogg/mp3 (libsndfile ships in its wheel, and sniffs the real format, so an
MP3 named .wav decodes); soxr resamples. torchaudio is not used: its current wheels are CUDA-only
and do not import beside the CPU torch pinned here. Only the window that is needed is read, so a
10-minute file costs no more than its crop. Every failure names the file and the reason; nothing is
silently replaced.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Optional

import numpy as np
import soundfile as sf
import soxr

from bridgebench.errors import AudioError


def wav_truncation(path: str) -> Optional[str]:
    """Why a RIFF/WAVE file is cut short, or None. libsndfile silently clamps a data chunk that
    promises more bytes than the file holds, so a truncated download would decode as a shorter clip."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                available = size - pos - 8
                if length not in (0, 0xFFFFFFFF) and length > available:
                    return f"truncated WAV: the data chunk declares {length} bytes, the file holds {available}"
                return None
            pos += 8 + length + (length & 1)
    return "truncated WAV: no data chunk"


def load_audio(path: str, sample_rate: int, start: float = 0.0, end: Optional[float] = None,
               window: Optional[float] = None, choose_offset: Optional[Callable[[int], int]] = None) -> np.ndarray:
    """Decode ``path`` between ``start`` and ``end`` seconds, mix to mono, resample to ``sample_rate``.

    ``window`` (seconds) cuts the segment to at most that long; ``choose_offset(spare_frames)``
    picks where (default: at the start). Frames outside the window are never read.
    """
    if not os.path.exists(path):
        raise AudioError(f"{path}: file does not exist")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a folder, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    reason = wav_truncation(path)
    if reason:
        raise AudioError(f"{path}: {reason}")
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            first = int(round(start * sr))
            last = f.frames if end is None else min(f.frames, int(round(end * sr)))
            if window is not None and last - first > int(round(window * sr)):
                span = int(round(window * sr))
                first += choose_offset(last - first - span) if choose_offset else 0
                last = first + span
            if first > 0:
                f.seek(min(first, f.frames))
            data = f.read(max(0, last - first), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no audio samples between {start} s and {end if end is not None else 'the end'}")
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: contains NaN or Inf samples")
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)
