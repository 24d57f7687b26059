"""`music-synth`: rendered band music whose captions are true by construction.

Each clip is a short piece composed from a seed and rendered with a General MIDI soundfont, so every
attribute named in its captions is ground truth, not an annotation:

- lead instrument: one of 12 GM programs playing the melody (``INSTRUMENTS``);
- genre / groove: 8 drum + bass + chord patterns (``GENRES``), each with its own meter, swing and BPM
  range; the ballad is a soft groove (brushed kick, side stick, ride) but still has drums and bass;
- tempo: integer BPM drawn from the genre's range, plus a class (``TEMPO_CLASSES``: slow < 90 <=
  medium < 120 <= fast);
- key and mode: 12 roots x major/minor; a diatonic chord progression starting on the tonic (minor
  keys take the harmonic-minor dominant) and a melody of chord tones on the beats, scale steps between;
- dynamics (``DYNAMICS``): the note velocities of every part; the mix has a fixed gain and is **not
  peak-normalised**, so soft clips really are quieter (peaks stay far below full scale).

Per row of ``manifest.jsonl``: ``labels`` {instrument, genre, tempo_class, bpm, key, mode, dynamics},
``tags`` (an LP-MusicCaps-style tag list), ``captions`` (the tag concatenation plus three captions
from paraphrase templates drawn with the clip's RNG, in the style of LP-MusicCaps' tag-concatenation
and template baselines), ``qa`` (short MusicInstruct-style question/answer pairs), ``split``
(index % 10: 8 -> val, 9 -> test, else train: 80/10/10) and ``score`` (the GM programs and chord
progression used). Vocabulary phrases are canonical and synonym-free: a caption names an attribute
only through ``phrase(attribute, label)``, so ``caption_attributes`` recovers the labels from a caption
by plain string matching (use it to score generated captions). Note that the word "medium" occurs in
two phrases ("medium tempo", "medium dynamics"): match the phrases, not single words.

Assumptions: ``pretty_midi`` (which ships the TimGM6mb soundfont, GPL-2) and ``pyfluidsynth`` with
the system library ``libfluidsynth.so.3`` (Debian/Ubuntu: ``apt-get install libfluidsynth3``). The
set is generated on first use into ``cache_dir()/data/music-synth-v<VERSION>-...`` (cached by its
parameters; a file lock and an atomic rename make concurrent first uses safe), mono PCM16 WAV at
``sample_rate``. Clip ``i`` depends only on (seed, i, seconds, sample_rate): its RNG is seeded with
``(seed, i)`` and it is rendered on a fresh ``fluidsynth.Synth``, because a reused synth carries
voice state (amplitude ramps, reverb tails) from one clip into the next and would make the audio
depend on which clips a worker rendered before. The soundfont's samples stay cached in each worker by
one long-lived synth, so a fresh synth costs ~10 ms. Output is identical for any number of workers.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import re
import time
import wave
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from bridgebench.datamodules.manifest import write_manifest
from bridgebench.runtime.paths import build_once, cache_dir
from bridgebench.runtime.progress import Tenths

log = logging.getLogger(__name__)

VERSION = 2  # 2: qa pairs carry their type
INSTALL_HINT = (
    "the music-synth set needs FluidSynth and pretty_midi: run `apt-get install libfluidsynth3` "
    "(the system library libfluidsynth.so.3; on macOS `brew install fluid-synth`) and "
    "`pip install pyfluidsynth pretty_midi` (tested: pyfluidsynth==1.4.0, pretty_midi==0.2.11.post0)"
)

# ------------------------------------------------------------------------------------------------
# Vocabulary: label -> parameters. Labels are the canonical caption words.

INSTRUMENTS = {  # lead instrument -> GM program (0-based)
    "acoustic piano": 0, "electric piano": 4, "vibraphone": 11, "organ": 16,
    "acoustic guitar": 24, "electric guitar": 27, "distorted guitar": 29, "violin": 40,
    "trumpet": 56, "saxophone": 65, "flute": 73, "synth lead": 80,
}
LEAD_OCTAVE = {"flute": 12}  # the melody is written in 60..81; these leads play it an octave up

GENRES = {  # groove -> meter (beats per bar), BPM range (inclusive), swing, bass and chord programs
    "rock": {"beats": 4, "bpm": (100, 150), "swing": None, "bass": 34, "chords": (30, 18, 48)},
    "funk": {"beats": 4, "bpm": (88, 118), "swing": None, "bass": 36, "chords": (28, 5, 61)},
    "jazz": {"beats": 4, "bpm": (110, 180), "swing": 8, "bass": 32, "chords": (0, 26, 48)},
    "bossa nova": {"beats": 4, "bpm": (110, 145), "swing": None, "bass": 32, "chords": (24, 0, 48)},
    "waltz": {"beats": 3, "bpm": (90, 160), "swing": None, "bass": 32, "chords": (0, 48, 24)},
    "electronic": {"beats": 4, "bpm": (118, 135), "swing": None, "bass": 38, "chords": (89, 90, 48)},
    "hip hop": {"beats": 4, "bpm": (80, 100), "swing": 16, "bass": 33, "chords": (5, 48, 26)},
    "ballad": {"beats": 4, "bpm": (60, 80), "swing": None, "bass": 32, "chords": (48, 0, 89)},
}
TEMPO_CLASSES = {"slow": (0, 90), "medium": (90, 120), "fast": (120, 10_000)}  # [lo, hi) BPM
DYNAMICS = {"soft": 40, "medium": 75, "loud": 112}  # base note velocity
KEYS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")  # one spelling per pitch class
MODES = ("major", "minor")
VOCABULARY = {"instrument": tuple(INSTRUMENTS), "genre": tuple(GENRES), "tempo_class": tuple(TEMPO_CLASSES),
              "dynamics": tuple(DYNAMICS), "key": KEYS, "mode": MODES}

SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
PROGRESSIONS = {  # scale degrees (0 = tonic), one chord per bar, all start on the tonic
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 5, 4)),
}
ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII")
GAIN = 0.5  # fluidsynth master gain: loud band clips peak below ~0.5 (measured), far from full scale
MELODY_RANGE = (60, 81)

SPLITS = {8: "val", 9: "test"}  # index % 10; the rest is train


def tempo_class(bpm: float) -> str:
    return next(name for name, (lo, hi) in TEMPO_CLASSES.items() if lo <= bpm < hi)


def phrase(attribute: str, label: str) -> str:
    """The one way a caption names an attribute's label."""
    if attribute == "tempo_class":
        return f"{label} tempo"
    if attribute == "dynamics":
        return f"{label} dynamics"
    return label


_PHRASES = sorted(  # (attribute, label, pattern), longest phrase first
    ((attr, label, re.compile(r"(?<![a-z])" + re.escape(phrase(attr, label)) + r"(?![a-z])"))
     for attr in ("instrument", "genre", "tempo_class", "dynamics") for label in VOCABULARY[attr]),
    key=lambda x: -len(x[2].pattern))
_KEY_RE = re.compile(r"(?<![A-Za-z#])([A-G][#b]?) (major|minor)\b")
_BPM_RE = re.compile(r"\b(\d{2,3}) ?bpm\b", re.IGNORECASE)


def caption_attributes(text: str) -> dict:
    """Labels named in a caption by vocabulary match: {attribute: label} for each one found.

    Matches whole phrases (case-insensitive), longest first, so "electric piano" is never read as
    anything else; an attribute named with two different labels is reported as a list.
    """
    low = f" {text.lower()} "
    found: dict = {}
    for attr, label, pat in _PHRASES:
        if pat.search(low):
            low = pat.sub(" ", low)
            found.setdefault(attr, []).append(label)
    out = {a: (v[0] if len(v) == 1 else v) for a, v in found.items()}
    if m := _KEY_RE.search(text):
        out["key"], out["mode"] = m.group(1), m.group(2)
    if m := _BPM_RE.search(text):
        out["bpm"] = int(m.group(1))
    return out


# ------------------------------------------------------------------------------------------------
# Optional dependencies

def _require():
    """Import pretty_midi and pyfluidsynth, or raise a RuntimeError with the install commands."""
    try:
        import pretty_midi
    except ImportError as err:
        raise RuntimeError(f"{INSTALL_HINT} (import pretty_midi failed: {err})") from None
    try:
        import fluidsynth
    except (ImportError, OSError) as err:
        raise RuntimeError(f"{INSTALL_HINT} (import fluidsynth failed: {err})") from None
    if not hasattr(fluidsynth, "Synth") or not hasattr(fluidsynth, "_fl"):
        raise RuntimeError(f"{INSTALL_HINT} (the installed 'fluidsynth' module is not pyfluidsynth)")
    return pretty_midi, fluidsynth


def soundfont_path() -> str:
    pretty_midi, _ = _require()
    path = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: reinstall pretty_midi (it ships the TimGM6mb soundfont)")
    return path


# ------------------------------------------------------------------------------------------------
# Composition

def _attributes(rng: np.random.Generator) -> dict:
    genre = str(rng.choice(list(GENRES)))
    instrument = str(rng.choice(list(INSTRUMENTS)))
    lo, hi = GENRES[genre]["bpm"]
    bpm = int(rng.integers(lo, hi + 1))
    key = str(rng.choice(KEYS))
    mode = str(rng.choice(MODES))
    dynamics = str(rng.choice(list(DYNAMICS)))
    return {"instrument": instrument, "genre": genre, "tempo_class": tempo_class(bpm), "bpm": bpm,
            "key": key, "mode": mode, "dynamics": dynamics}


def _chord(root_pc: int, mode: str, degree: int) -> list[int]:
    """Pitch classes (relative to C) of the diatonic triad on ``degree``; minor's V is major."""
    scale = SCALES[mode]
    pcs = [(root_pc + scale[(degree + k) % 7]) % 12 for k in (0, 2, 4)]
    if mode == "minor" and degree == 4:
        pcs[1] = (pcs[1] + 1) % 12  # harmonic minor: raised leading tone
    return pcs


def _voice(pcs: list[int], lo: int, hi: int) -> list[int]:
    """Each pitch class at its lowest pitch >= lo, then folded under hi."""
    out = []
    for pc in pcs:
        p = lo + (pc - lo) % 12
        while p > hi:
            p -= 12
        out.append(p)
    return sorted(out)


def _nearest(pitch: int, pcs, lo: int, hi: int, rng: np.random.Generator) -> int:
    cands = [p for p in range(lo, hi + 1) if p % 12 in pcs]
    cands.sort(key=lambda p: (abs(p - pitch), p))
    return cands[int(rng.integers(0, min(2, len(cands))))]


RHYTHMS = {  # melody rhythm cells per bar: (duration in beats, rest?)
    4: (((1, 0), (1, 0), (1, 0), (1, 0)), ((0.5, 0), (0.5, 0), (1, 0), (2, 0)), ((1.5, 0), (0.5, 0), (1, 0), (1, 0)),
        ((2, 0), (1, 0), (1, 0)), ((1, 0), (0.5, 0), (0.5, 0), (1, 0), (1, 1)),
        ((0.5, 0), (0.5, 0), (0.5, 0), (0.5, 0), (2, 0)), ((1, 0), (1, 0), (2, 0)), ((3, 0), (1, 1))),
    3: (((1, 0), (1, 0), (1, 0)), ((2, 0), (1, 0)), ((1, 0), (0.5, 0), (0.5, 0), (1, 0)),
        ((1.5, 0), (0.5, 0), (1, 0)), ((3, 0),), ((2, 0), (1, 1))),
}

# drum hits per bar: (beat position, GM drum note, velocity scale); bossa alternates two bars
DRUMS = {
    "rock": [[(0, 36, 1.0), (2, 36, 0.9), (2.5, 36, 0.8), (1, 38, 1.0), (3, 38, 1.0)]
             + [(k * 0.5, 42, 0.7 if k % 2 else 0.85) for k in range(8)]],
    "funk": [[(0, 36, 1.0), (0.75, 36, 0.8), (2.5, 36, 0.9), (1, 38, 1.0), (3, 38, 1.0), (1.75, 38, 0.35),
              (2.25, 38, 0.35), (3.75, 38, 0.4), (3.5, 46, 0.7)]
             + [(k * 0.25, 42, 0.8 if k % 2 == 0 else 0.5) for k in range(16) if k != 14]],
    "jazz": [[(0, 51, 0.8), (1, 51, 0.9), (1.5, 51, 0.6), (2, 51, 0.8), (3, 51, 0.9), (3.5, 51, 0.6),
              (1, 44, 0.7), (3, 44, 0.7), (0, 36, 0.35), (2, 36, 0.35), (2.5, 38, 0.3)]],
    "bossa nova": [[(0, 37, 0.7), (0.75, 37, 0.6), (1.5, 37, 0.7), (2.5, 37, 0.6), (3.25, 37, 0.6),
                    (0, 36, 0.9), (1.5, 36, 0.5), (2, 36, 0.9), (3.5, 36, 0.5)]
                   + [(k * 0.5, 42, 0.8 if k % 2 == 0 else 0.35) for k in range(8)],
                   [(0.5, 37, 0.6), (1.5, 37, 0.7), (2.25, 37, 0.6), (3, 37, 0.6),
                    (0, 36, 0.9), (1.5, 36, 0.5), (2, 36, 0.9), (3.5, 36, 0.5)]
                   + [(k * 0.5, 42, 0.8 if k % 2 == 0 else 0.35) for k in range(8)]],
    "waltz": [[(0, 36, 1.0), (1, 38, 0.6), (2, 38, 0.6), (0, 42, 0.6), (1, 42, 0.7), (2, 42, 0.7)]],
    "electronic": [[(k, 36, 1.0) for k in range(4)] + [(1, 39, 0.9), (3, 39, 0.9)]
                   + [(k + 0.5, 46, 0.7) for k in range(4)] + [(k * 0.5, 42, 0.45) for k in range(0, 8, 2)]],
    "hip hop": [[(0, 36, 1.0), (1.75, 36, 0.8), (2.5, 36, 0.9), (1, 38, 1.0), (3, 38, 1.0)]
                + [(k * 0.5, 42, 0.7 if k % 2 == 0 else 0.5) for k in range(8)]],
    "ballad": [[(0, 36, 0.7), (2.5, 36, 0.5), (1, 37, 0.6), (3, 37, 0.6)] + [(k, 51, 0.5) for k in range(4)]],
}


def _swing(pos: float, swing: int | None) -> float:
    """Delay the off-beat 8ths (swing=8) or 16ths (swing=16) to a 2:1 triplet feel."""
    if not swing:
        return pos
    unit = 1.0 if swing == 8 else 0.5
    beat, frac = divmod(pos, unit)
    if abs(frac - unit / 2) < 1e-9:
        frac = unit * 2 / 3
    return beat * unit + frac


def _bass_line(genre: str, root: int, fifth: int, bar: int, next_root: int, beats: int, rng) -> list:
    """(position, duration, pitch, velocity scale) for one bar."""
    octave = root + 12
    if genre == "rock":
        return [(k * 0.5, 0.45, root, 0.9) for k in range(8)]
    if genre == "funk":
        cells = [(0, 0.4, root), (0.75, 0.2, octave), (1.5, 0.2, root), (2, 0.4, fifth), (2.5, 0.2, root),
                 (3.25, 0.2, octave), (3.5, 0.4, root + 10)]
        return [(p, d, n, 1.0 if p == 0 else 0.8) for p, d, n in cells]
    if genre == "jazz":
        approach = next_root + (1 if rng.random() < 0.5 else -1)
        third = root + (4 if rng.random() < 0.5 else 3)
        return [(0, 0.9, root, 0.95), (1, 0.9, third, 0.8), (2, 0.9, fifth, 0.85), (3, 0.9, approach, 0.8)]
    if genre == "bossa nova":
        return [(0, 1.4, root, 1.0), (1.5, 0.45, fifth, 0.8), (2, 1.4, root, 0.95), (3.5, 0.45, fifth, 0.8)]
    if genre == "waltz":
        return [(0, 0.9, root if bar % 2 == 0 else fifth, 1.0)]
    if genre == "electronic":
        return [(k + 0.5, 0.4, root if k % 2 == 0 else octave, 0.9) for k in range(4)]
    if genre == "hip hop":
        return [(0, 1.4, root, 1.0), (1.75, 0.5, root, 0.8), (2.5, 1.0, root, 0.9), (3.5, 0.45, fifth, 0.8)]
    # ballad
    return [(0, 1.9, root, 0.9), (2, 1.9, fifth if bar % 2 else root, 0.8)]


def _comp_rhythm(genre: str, beats: int) -> list:
    """(position, duration) chord hits for one bar."""
    return {
        "rock": [(0, 1.9), (2, 1.4), (3.5, 0.45)],
        "funk": [(0.5, 0.2), (1.75, 0.2), (2.5, 0.2), (3.75, 0.2)],
        "jazz": [(0, 0.6), (1.5, 0.9), (3, 0.4)],
        "bossa nova": [(0, 0.6), (0.75, 0.6), (1.5, 0.9), (2.5, 0.6), (3.25, 0.6)],
        "waltz": [(1, 0.8), (2, 0.8)],
        "electronic": [(0, 3.9)],
        "hip hop": [(0, 1.8), (2, 1.8)],
        "ballad": [(0, 3.9)],
    }[genre]


def compose(seed: int, index: int, seconds: float, **overrides):
    """The score of clip ``index``: (pretty_midi.PrettyMIDI, labels, score info).

    ``overrides`` replace drawn attributes (instrument, genre, bpm, key, mode, dynamics) without
    changing any other draw: the melody, rhythm and accompaniment stay the same (when the genre and
    meter stay the same), so a test can vary one attribute and keep the rest fixed.
    """
    pretty_midi, _ = _require()
    ss = np.random.SeedSequence([int(seed), int(index)])
    attr_rng, music_rng, _ = (np.random.default_rng(s) for s in ss.spawn(3))
    labels = _attributes(attr_rng)
    unknown = set(overrides) - {"instrument", "genre", "bpm", "key", "mode", "dynamics"}
    if unknown:
        raise ValueError(f"compose: unknown overrides {sorted(unknown)}")
    labels.update(overrides)
    labels["bpm"] = int(labels["bpm"])
    labels["tempo_class"] = tempo_class(labels["bpm"])
    g = GENRES[labels["genre"]]
    beats, swing, bpm = g["beats"], g["swing"], labels["bpm"]
    spb = 60.0 / bpm
    root_pc = KEYS.index(labels["key"])
    mode = labels["mode"]
    scale_pcs = [(root_pc + s) % 12 for s in SCALES[mode]]
    base_vel = DYNAMICS[labels["dynamics"]]
    lead_program = INSTRUMENTS[labels["instrument"]]
    chord_program = next(p for p in g["chords"] if p // 8 != lead_program // 8)

    # draws from music_rng come in a fixed order, independent of the labels' values where possible
    prog_choice = int(music_rng.integers(0, 4))
    degrees = PROGRESSIONS[mode][prog_choice]
    n_bars = int(np.ceil(seconds / (spb * beats))) + 1
    u = music_rng

    def vel(scale: float) -> int:
        return int(np.clip(round(base_vel * scale) + int(u.integers(-4, 5)), 1, 127))

    def t(bar: int, pos: float) -> float:
        return (bar * beats + _swing(pos, swing)) * spb

    pm = pretty_midi.PrettyMIDI(initial_tempo=float(bpm))
    pm.time_signature_changes.append(pretty_midi.TimeSignature(beats, 4, 0.0))
    pm.key_signature_changes.append(pretty_midi.KeySignature(root_pc + (12 if mode == "minor" else 0), 0.0))
    lead = pretty_midi.Instrument(program=lead_program, name="lead")
    chords = pretty_midi.Instrument(program=chord_program, name="chords")
    bass = pretty_midi.Instrument(program=g["bass"], name="bass")
    drums = pretty_midi.Instrument(program=0, is_drum=True, name="drums")
    octave = LEAD_OCTAVE.get(labels["instrument"], 0)
    lo, hi = MELODY_RANGE
    pitch = _nearest(72, [root_pc], lo, hi, u)
    rhythms = RHYTHMS[beats]
    for bar in range(n_bars):
        degree = degrees[bar % len(degrees)]
        next_degree = degrees[(bar + 1) % len(degrees)]
        chord_pcs = _chord(root_pc, mode, degree)
        root_bass = 28 + (chord_pcs[0] - 28) % 12
        fifth_bass = root_bass + 7
        next_root = 28 + (_chord(root_pc, mode, next_degree)[0] - 28) % 12
        # melody
        step_pcs = list(scale_pcs)
        if mode == "minor" and degree == 4:
            step_pcs[6] = (step_pcs[6] + 1) % 12
        pos = 0.0
        cell = rhythms[int(u.integers(0, len(rhythms)))]
        for dur, rest in cell:
            if not rest:
                if abs(pos - round(pos)) < 1e-9:  # on a beat: a chord tone near the last pitch
                    pitch = _nearest(pitch + u.integers(-2, 3), chord_pcs, lo, hi, u)
                else:  # between beats: a scale step
                    cands = sorted((p for p in range(lo, hi + 1) if p % 12 in step_pcs), key=lambda p: abs(p - pitch))
                    up = u.random() < (0.5 if lo + 4 < pitch < hi - 4 else (0.9 if pitch <= lo + 4 else 0.1))
                    step = [p for p in cands if (p > pitch if up else p < pitch)]
                    pitch = step[0] if step else cands[0]
                start, end = t(bar, pos), t(bar, pos) + dur * spb * 0.92
                accent = 1.1 if abs(pos - round(pos)) < 1e-9 else 1.0
                lead.notes.append(pretty_midi.Note(vel(accent), pitch + octave, start, end))
            pos += dur
        # chords
        voicing = _voice(chord_pcs, 55 if chord_program // 8 == 3 else 52, 71)
        if labels["genre"] == "rock":  # power chord on a distorted guitar or organ
            r = 40 + (chord_pcs[0] - 40) % 12
            voicing = [r, r + 7, r + 12]
        if labels["genre"] == "jazz":  # seventh chords
            seventh = (root_pc + SCALES[mode][(degree + 6) % 7]) % 12  # the diatonic seventh
            voicing = sorted(voicing + [_voice([seventh], 52, 71)[0]])
        for cpos, cdur in _comp_rhythm(labels["genre"], beats):
            for p in voicing:
                chords.notes.append(pretty_midi.Note(vel(0.72), p, t(bar, cpos), t(bar, cpos) + cdur * spb))
        # bass
        for bpos, bdur, p, sc in _bass_line(labels["genre"], root_bass, fifth_bass, bar, next_root, beats, u):
            bass.notes.append(pretty_midi.Note(vel(sc * 0.95), int(p), t(bar, bpos), t(bar, bpos) + bdur * spb))
        # drums
        pattern = DRUMS[labels["genre"]][bar % len(DRUMS[labels["genre"]])]
        hits = list(pattern)
        if bar % 4 == 0 and labels["genre"] in ("rock", "funk", "electronic", "hip hop"):
            hits.append((0, 49, 0.8))
        for dpos, note, sc in hits:
            start = t(bar, dpos)
            drums.notes.append(pretty_midi.Note(vel(sc * 0.9), note, start, start + 0.08))
    pm.instruments.extend([lead, chords, bass, drums])
    score = {"lead_program": lead_program, "chord_program": chord_program, "bass_program": g["bass"],
             "meter": f"{beats}/4", "progression": "-".join(_roman(d, mode) for d in degrees)}
    return pm, labels, score


def _roman(degree: int, mode: str) -> str:
    pcs = _chord(0, mode, degree)
    major = (pcs[1] - pcs[0]) % 12 == 4
    return ROMAN[degree] if major else ROMAN[degree].lower()


# ------------------------------------------------------------------------------------------------
# Rendering

_ANCHOR: dict = {}  # per process: sample_rate -> a synth that keeps the soundfont's samples cached
BLOCK = 64  # fluidsynth renders in blocks of 64 frames; events are applied on block boundaries


def _write_float():
    _, fluidsynth = _require()
    fn = fluidsynth._fl.fluid_synth_write_float
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                   ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _new_synth(sample_rate: int):
    _, fluidsynth = _require()
    sf2 = soundfont_path()
    if sample_rate not in _ANCHOR:
        anchor = fluidsynth.Synth(gain=GAIN, samplerate=float(sample_rate), channels=16)
        if anchor.sfload(sf2) < 0:
            raise RuntimeError(f"fluidsynth could not load the soundfont {sf2}")
        _ANCHOR[sample_rate] = anchor
    synth = fluidsynth.Synth(gain=GAIN, samplerate=float(sample_rate), channels=16)
    sfid = synth.sfload(sf2)  # fluidsynth's sample cache shares the anchor's samples: ~10 ms
    if sfid < 0:
        raise RuntimeError(f"fluidsynth could not load the soundfont {sf2}")
    return synth, sfid


def render_midi(pm, seconds: float, sample_rate: int = 16_000) -> np.ndarray:
    """Render a PrettyMIDI score to mono float32 at ``sample_rate``: exactly ``seconds`` long.

    Instruments go to their own MIDI channels (drums on 10) of one fresh synth, so the whole band
    is rendered in one pass with a fixed gain and no normalisation. A 10 ms fade-out ends the clip.
    """
    write = _write_float()
    n = round(seconds * sample_rate)
    total = -(-n // BLOCK) * BLOCK
    synth, sfid = _new_synth(sample_rate)
    try:
        events = []
        melodic = iter(c for c in range(16) if c != 9)
        for inst in pm.instruments:
            ch = 9 if inst.is_drum else next(melodic)
            if inst.is_drum:
                if synth.program_select(ch, sfid, 128, inst.program) == -1:
                    synth.program_select(ch, sfid, 128, 0)
            else:
                synth.program_select(ch, sfid, 0, inst.program)
            for note in inst.notes:
                on = round(note.start * sample_rate / BLOCK) * BLOCK
                off = max(on + BLOCK, round(note.end * sample_rate / BLOCK) * BLOCK)
                if on < total:
                    events.append((on, 1, ch, note.pitch, note.velocity))
                    events.append((off, 0, ch, note.pitch, 0))
        events.sort()  # by time, note-offs before note-ons at the same time
        out = np.zeros((total, 2), np.float32)
        pos = 0
        for at, kind, ch, pitch, velocity in events:
            if at >= total:
                break
            if at > pos:
                view = out[pos:at]
                write(synth.synth, at - pos, view.ctypes.data, 0, 2, view.ctypes.data, 1, 2)
                pos = at
            if kind:
                synth.noteon(ch, pitch, velocity)
            else:
                synth.noteoff(ch, pitch)
        if pos < total:
            view = out[pos:]
            write(synth.synth, total - pos, view.ctypes.data, 0, 2, view.ctypes.data, 1, 2)
    finally:
        synth.delete()
    y = out[:n].mean(axis=1)
    fade = min(n, int(0.01 * sample_rate))
    if fade:
        y[n - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return y


def _write_wav(path: Path, y: np.ndarray, sample_rate: int) -> None:
    pcm = np.clip(np.round(y * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


# ------------------------------------------------------------------------------------------------
# Text

TEMPLATES = (
    ("This {genre} track features {a_instrument} as the lead instrument, accompanied by bass and drums. "
     "It is in {key} {mode}, played with {dynamics} at {bpm} bpm ({tempo})."),
    "The music is characterized by {genre}, {instrument}, bass, drums, {tempo} and {dynamics}.",
    ("An instrumental {genre} piece in {key} {mode} where {a_instrument} plays the melody over bass and drums, "
     "at a {tempo} with {dynamics}."),
    "{A_instrument} melody over a {genre} groove of bass and drums, {tempo}, {bpm} bpm, {key} {mode}.",
    ("A {tempo} {genre} song with {dynamics}: {a_instrument} carries the melody, with bass and drums behind it, "
     "in {key} {mode}."),
    ("You can hear {a_instrument} playing a tune in {key} {mode} on top of a {genre} beat with bass and drums. "
     "The {tempo} is about {bpm} bpm and the performance has {dynamics}."),
)
QUESTIONS = (
    ("What is the lead instrument?", "instrument"),
    ("What genre is this music?", "genre"),
    ("Is the tempo slow, medium or fast?", "tempo_class"),
    ("What is the tempo in beats per minute?", "bpm"),
    ("What key is the music in?", "key"),
    ("Is it in a major or a minor key?", "mode"),
    ("Are the dynamics soft, medium or loud?", "dynamics"),
)


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _text(labels: dict, rng: np.random.Generator) -> tuple[list[str], list[str], list[dict]]:
    inst = labels["instrument"]
    tempo, dyn = phrase("tempo_class", labels["tempo_class"]), phrase("dynamics", labels["dynamics"])
    tags = [labels["genre"], inst, "bass", "drums", tempo, f"{labels['bpm']} bpm",
            f"{labels['key']} {labels['mode']}", dyn]
    fields = {"genre": labels["genre"], "instrument": inst, "a_instrument": _article(inst),
              "A_instrument": _article(inst).capitalize(), "tempo": tempo, "dynamics": dyn, "bpm": labels["bpm"],
              "key": labels["key"], "mode": labels["mode"]}
    picks = rng.choice(len(TEMPLATES), size=3, replace=False)
    captions = [", ".join(tags)] + [TEMPLATES[int(k)].format(**fields) for k in picks]
    answers = dict(labels, bpm=f"{labels['bpm']} bpm", key=f"{labels['key']} {labels['mode']}")
    qa = [{"instruction": q, "answer": str(answers[a]), "type": a} for q, a in QUESTIONS]
    return tags, captions, qa


def clip_row(seed: int, index: int, seconds: float, composed=None) -> dict:
    """The manifest row of clip ``index`` (without rendering it)."""
    _, labels, score = composed or compose(seed, index, seconds)
    text_rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]).spawn(3)[2])
    tags, captions, qa = _text(labels, text_rng)
    cid = f"ms-{index:05d}"
    return {"id": cid, "audio": f"audio/{cid}.wav", "start": 0.0, "end": float(seconds),
            "split": SPLITS.get(index % 10, "train"), "captions": captions, "qa": qa, "tags": tags,
            "labels": labels, "score": score}


def _render_clip(args) -> dict:
    seed, index, seconds, sample_rate, folder = args
    composed = compose(seed, index, seconds)
    row = clip_row(seed, index, seconds, composed)
    y = render_midi(composed[0], seconds, sample_rate)
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak > 0.99:  # never seen (loud band peaks ~0.5), but a clipped clip would be a lie
        y *= 0.99 / peak
        row["score"]["limited"] = True
    _write_wav(Path(folder) / row["audio"], y, sample_rate)
    return row


# Worker processes are spawned, never forked: forking a process that has other threads (torch's,
# the executor's own) can deadlock the child, and did here once in a test run. Importing this module
# the normal way in each spawned worker would run bridgebench.datamodules/__init__.py, which imports
# lightning and torch (~4 s and ~300 MB per worker) for nothing: the workers need numpy, pretty_midi
# and fluidsynth only. So the initializer, a stdlib function (exec) that needs no import to unpickle,
# first registers a bare package object for bridgebench.datamodules (unless the worker already has
# the real one), then imports this module from the package folder. As with any spawned process, the
# worker first re-imports the caller's main script: a script must call music_synth_manifest under
# ``if __name__ == "__main__":``; otherwise the worker fails with that advice (BrokenProcessPool
# in the caller, turned into a RuntimeError); nothing hangs.
_WORKER_BOOT = """
import importlib, sys, types
if 'bridgebench.datamodules' not in sys.modules:
    import bridgebench
    _pkg = types.ModuleType('bridgebench.datamodules')
    _pkg.__path__ = [{path!r}]
    _pkg.__package__ = 'bridgebench.datamodules'
    sys.modules['bridgebench.datamodules'] = _pkg
    bridgebench.datamodules = _pkg
importlib.import_module('bridgebench.datamodules.music_synth')._require()
"""
MAIN_GUARD_HINT = ("call music_synth_manifest() under `if __name__ == \"__main__\":` in a script: its worker "
                   "processes are spawned, and each one first re-imports the main script")


def _executor(workers: int) -> ProcessPoolExecutor:
    boot = _WORKER_BOOT.format(path=os.path.dirname(os.path.abspath(__file__)))
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=exec, initargs=(boot, {}))


def music_synth_manifest(num_clips: int = 2000, seconds: float = 10.0, sample_rate: int = 16000, seed: int = 0,
                         workers: int | None = None) -> Path:
    """Manifest of the rendered music set, generated into the cache on first use.

    Cached by (num_clips, seconds, sample_rate, seed); ``workers`` (default: all cores) only changes
    the speed, never the output. 2,000 x 10 s clips take about a minute on 2 cores, ~640 MB at 16 kHz.
    """
    if num_clips < 1 or seconds <= 0 or sample_rate < 8000:
        raise ValueError("music_synth_manifest: need num_clips >= 1, seconds > 0, sample_rate >= 8000")
    if getattr(mp.current_process(), "_inheriting", False):  # a spawned process re-running an unguarded script
        raise RuntimeError(f"music_synth_manifest() was called while a new process imported the main module: "
                           f"{MAIN_GUARD_HINT}")
    _require()
    def build(tmp: Path) -> None:
        nonlocal workers
        (tmp / "audio").mkdir()
        jobs = [(seed, i, seconds, sample_rate, str(tmp)) for i in range(num_clips)]
        if not workers:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if mp.current_process().daemon:
            workers = 1  # a daemonic process (e.g. a DataLoader worker) cannot start children
        workers = max(1, min(workers, num_clips))
        began = time.perf_counter()
        # About a minute for the full set on 2 cores: a line per tenth shows it is moving (and the sweep
        # shows it as its status line when a run renders the set on first use).
        lines = Tenths("render music-synth", num_clips, "clips")
        rows: list[dict] = []
        if workers == 1:
            for job in jobs:
                rows.append(_render_clip(job))
                lines.update(len(rows))
        else:
            chunk = max(1, min(16, num_clips // (4 * workers)))
            try:
                with _executor(workers) as pool:
                    for row in pool.map(_render_clip, jobs, chunksize=chunk):  # in order, as they finish
                        rows.append(row)
                        lines.update(len(rows))
            except BrokenProcessPool as err:
                raise RuntimeError(f"a music-synth worker process died ({err}); if this ran from a script, "
                                   f"{MAIN_GUARD_HINT}") from err
        log.info("music-synth: rendered %d clips in %.1f s with %d workers", num_clips,
                 time.perf_counter() - began, workers)
        write_manifest(str(tmp / "manifest.jsonl"), rows)

    target = cache_dir() / "data" / f"music-synth-v{VERSION}-n{num_clips}-{seconds:g}s-{sample_rate}hz-seed{seed}"
    return build_once(target, "manifest.jsonl", build) / "manifest.jsonl"
