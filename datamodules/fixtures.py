"""`builtin:tones`: a small generated set of tones with known pitch, waveform and loudness.

The fixture data of the tiny presets and the tests until the rendered music set exists: every
clip's caption is true of its signal (a test checks pitch and level with plain DSP), so a bridge
that learns has something real to learn. Deterministic; generated on first use into the cache.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import soundfile as sf

from bridgebench.datamodules.manifest import write_manifest
from bridgebench.runtime.paths import build_once, cache_dir

VERSION = 1
SAMPLE_RATE = 16_000
PITCHES = {"low": 220.0, "high": 880.0}
WAVES = ("sine", "square")
LEVELS = {"soft": 0.05, "loud": 0.5}
TEMPLATES = ("a {level} {pitch} pitched {wave} tone", "{level} {wave} wave at a {pitch} pitch")


def _render(pitch: float, wave: str, level: float, seconds: float, phase: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = np.sin(2 * np.pi * pitch * t + phase)
    if wave == "square":
        x = np.sign(x)
    return (level * x).astype(np.float32)


def tones_manifest(clips_per_cell: int = 6, seconds: float = 2.0) -> Path:
    """Manifest of the tone set (8 attribute cells x ``clips_per_cell``), generated if missing."""
    def build(tmp: Path) -> None:
        rng = np.random.default_rng(0)
        rows = []
        cells = list(itertools.product(PITCHES, WAVES, LEVELS))
        for k in range(clips_per_cell):
            for pitch, wave, level in cells:
                n = len(rows)
                split = "train" if k < clips_per_cell - 2 else ("val" if k == clips_per_cell - 2 else "test")
                audio = _render(PITCHES[pitch] * (1 + 0.02 * rng.standard_normal()), wave, LEVELS[level],
                                seconds, float(rng.uniform(0, 2 * np.pi)))
                name = f"tone-{n:04d}.wav"
                sf.write(tmp / name, audio, SAMPLE_RATE, subtype="PCM_16")
                attrs = {"pitch": pitch, "wave": wave, "level": level}
                rows.append({
                    "id": f"tone-{n:04d}", "audio": name, "split": split,
                    "captions": [t.format(**attrs) for t in TEMPLATES],
                    "qa": [{"instruction": "Is the tone loud or soft?", "answer": level},
                           {"instruction": "Is the pitch high or low?", "answer": pitch}],
                    "tags": [pitch, wave, level], "labels": attrs,
                })
        write_manifest(str(tmp / "manifest.jsonl"), rows)

    target = cache_dir() / "data" / f"tones-v{VERSION}-{clips_per_cell}x{seconds:g}s"
    return build_once(target, "manifest.jsonl", build) / "manifest.jsonl"


def _music_synth():
    from bridgebench.datamodules.music_synth import music_synth_manifest

    return music_synth_manifest()


def _music_synth_small():
    # The tiny override's data: the same generator, 64 clips of 4 s (seconds to render).
    from bridgebench.datamodules.music_synth import music_synth_manifest

    return music_synth_manifest(num_clips=64, seconds=4.0)


BUILTINS = {
    "builtin:tones": tones_manifest,
    "builtin:music-synth": _music_synth,
    "builtin:music-synth-small": _music_synth_small,
}
