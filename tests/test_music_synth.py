"""The rendered music set: deterministic, and its labels are audible (checked with plain numpy DSP).

The sets here are small (24 clips of 5 s); the 2,000 x 10 s timing test is marked slow.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import wave
from contextlib import contextmanager

import numpy as np
import pytest

from bridgebench.datamodules import music_synth as ms
from bridgebench.datamodules.manifest import read_manifest

try:
    ms._require()
    HAVE_SYNTH = True
except RuntimeError:
    HAVE_SYNTH = False
needs_synth = pytest.mark.skipif(not HAVE_SYNTH, reason="needs pyfluidsynth + libfluidsynth3 + pretty_midi")

SR = 16_000
N_CLIPS, SECONDS = 24, 5.0


@contextmanager
def cache_at(path):
    old = os.environ.get("BRIDGEBENCH_CACHE")
    os.environ["BRIDGEBENCH_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BRIDGEBENCH_CACHE", None)
        else:
            os.environ["BRIDGEBENCH_CACHE"] = old


def load_wav(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SR)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same set generated twice (2 workers, 1 worker, different cache folders), its first 4 clips
    alone, and 4 clips of another seed."""
    if not HAVE_SYNTH:
        pytest.skip("needs pyfluidsynth + libfluidsynth3 + pretty_midi")
    out = {}
    for name, seed, workers, n in (("a", 0, 2, N_CLIPS), ("b", 0, 1, N_CLIPS), ("seed1", 1, 1, 4), ("first4", 0, 2, 4)):
        with cache_at(tmp_path_factory.mktemp(f"ms-{name}")):
            out[name] = ms.music_synth_manifest(num_clips=n, seconds=SECONDS, sample_rate=SR, seed=seed,
                                                workers=workers)
    return out


@pytest.fixture(scope="module")
def clips(sets):
    rows = read_manifest(str(sets["a"]))
    return rows, [load_wav(c.audio) for c in rows]


# ---------------------------------------------------------------------------------------------- DSP

def stft_power(y: np.ndarray, n: int, hop: int) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(y, (n // 2, n // 2)), n)[::hop]
    return np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)) ** 2


def estimate_bpm(y: np.ndarray, hop: int = 128, lo: float = 50, hi: float = 220) -> float:
    """Autocorrelation of the onset strength (half-wave rectified log-spectral flux)."""
    logmag = np.log1p(1000 * np.sqrt(stft_power(y, 1024, hop)))
    flux = np.maximum(np.diff(logmag, axis=0), 0).sum(1)
    flux = np.maximum(flux - np.convolve(flux, np.ones(16) / 16, mode="same"), 0)
    e = flux - flux.mean()
    ac = np.correlate(e, e, "full")[len(e) - 1:]
    fps = SR / hop
    lmin, lmax = int(fps * 60 / hi), int(fps * 60 / lo) + 1
    k = int(np.argmax(ac[lmin:lmax])) + lmin
    a, b, c = ac[k - 1], ac[k], ac[k + 1]
    offset = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c else 0.0
    return 60 * fps / (k + offset)


def tempo_ok(estimate: float, bpm: int, tol: float = 0.04) -> bool:
    return any(abs(estimate / (bpm * f) - 1) <= tol for f in (1, 2, 0.5))  # octave errors allowed


def rms_db(y: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2)) + 1e-12))


KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(y: np.ndarray) -> tuple[int, str]:
    """Krumhansl-Kessler profiles against an STFT chroma (60 Hz - 1 kHz)."""
    n = 4096
    power = stft_power(y, n, 1024).sum(0)
    f = np.fft.rfftfreq(n, 1 / SR)
    sel = (f > 60) & (f < 1000)
    chroma = np.zeros(12)
    np.add.at(chroma, np.round(69 + 12 * np.log2(f[sel] / 440)).astype(int) % 12, power[sel])
    scores = [(np.corrcoef(np.roll(prof, r), chroma)[0, 1], r, mode)
              for r in range(12) for mode, prof in (("major", KK_MAJOR), ("minor", KK_MINOR))]
    _, root, mode = max(scores)
    return root, mode


BAND_EDGES = np.geomspace(80, 7900, 33)


def timbre(y: np.ndarray) -> np.ndarray:
    """32 log-spaced band levels (dB re. the loudest band, floored at -60) plus spectral flatness."""
    power = stft_power(y, 1024, 256)
    f = np.fft.rfftfreq(1024, 1 / SR)
    p = power.mean(0)
    bands = np.array([p[(f >= a) & (f < b)].sum() for a, b in itertools.pairwise(BAND_EDGES)])
    level = np.maximum(10 * np.log10(bands + 1e-12) - 10 * np.log10(bands.max()), -60)
    flatness = np.exp(np.mean(np.log(power + 1e-10), 1)) / (power.mean(1) + 1e-10)
    return np.concatenate([level / 10, [10 * flatness.mean()]])


def centroid_rolloff(y: np.ndarray) -> tuple[float, float]:
    p = stft_power(y, 1024, 256).sum(0)
    f = np.fft.rfftfreq(1024, 1 / SR)
    cum = np.cumsum(p) / p.sum()
    return float((p * f).sum() / p.sum()), float(f[np.searchsorted(cum, 0.85)])


def nearest_centroid_accuracy(features: dict, groups: list, names: list) -> float:
    """Leave-one-group-out nearest-centroid classification of ``names`` (chance 1/len(names))."""
    hits = []
    for g in groups:
        cents = {n: np.mean([features[(h, n)] for h in groups if h != g], 0) for n in names}
        for n in names:
            hits.append(min(names, key=lambda k: np.sum((features[(g, n)] - cents[k]) ** 2)) == n)
    return float(np.mean(hits))


# ---------------------------------------------------------------------------------------------- tests

@needs_synth
def test_deterministic_across_folders_and_workers_and_seeds(sets):
    a, b = sets["a"], sets["b"]
    assert a != b and a.parent.name == b.parent.name == f"music-synth-v{ms.VERSION}-n24-5s-16000hz-seed0"
    assert a.read_text() == b.read_text()  # same seed, 2 workers vs 1, different cache folders
    names = sorted(os.listdir(a.parent / "audio"))
    assert len(names) == N_CLIPS
    for name in names:
        assert (a.parent / "audio" / name).read_bytes() == (b.parent / "audio" / name).read_bytes(), name
    # clip i depends on (seed, i) only: a 4-clip set is the first 4 clips of the 24-clip set
    first4 = sets["first4"]
    assert first4.read_text().splitlines() == a.read_text().splitlines()[:4]
    for name in sorted(os.listdir(first4.parent / "audio")):
        assert (first4.parent / "audio" / name).read_bytes() == (a.parent / "audio" / name).read_bytes(), name
    # a different seed gives different music and text
    other = sets["seed1"]
    assert other.read_text().splitlines() != a.read_text().splitlines()[:4]
    for name in sorted(os.listdir(other.parent / "audio")):
        assert (other.parent / "audio" / name).read_bytes() != (a.parent / "audio" / name).read_bytes()
    # cached: a second call returns the same manifest without regenerating
    with cache_at(a.parent.parent.parent):
        mtime = a.stat().st_mtime_ns
        assert ms.music_synth_manifest(num_clips=N_CLIPS, seconds=SECONDS, sample_rate=SR, seed=0, workers=2) == a
        assert a.stat().st_mtime_ns == mtime


@needs_synth
def test_manifest_reads_back_and_captions_match_labels(clips):
    rows, audio = clips
    assert len(rows) == N_CLIPS
    assert {c.split for c in rows} == {"train", "val", "test"}
    assert [c.split for c in rows].count("train") == 20  # index % 10: 8 val, 9 test
    for clip, y in zip(rows, audio):
        lab = clip.labels
        assert set(lab) == {"instrument", "genre", "tempo_class", "bpm", "key", "mode", "dynamics"}
        assert lab["instrument"] in ms.INSTRUMENTS and lab["genre"] in ms.GENRES and lab["dynamics"] in ms.DYNAMICS
        assert lab["key"] in ms.KEYS and lab["mode"] in ms.MODES and isinstance(lab["bpm"], int)
        lo, hi = ms.GENRES[lab["genre"]]["bpm"]
        assert lo <= lab["bpm"] <= hi and lab["tempo_class"] == ms.tempo_class(lab["bpm"])
        assert len(y) == int(SECONDS * SR) and clip.end == SECONDS
        # one tag concatenation + 3 template captions, all different
        assert len(clip.captions) == 4 and len(set(clip.captions)) == 4
        assert clip.captions[0] == ", ".join(clip.tags)
        full = {k: lab[k] for k in ("instrument", "genre", "tempo_class", "dynamics", "key", "mode", "bpm")}
        assert ms.caption_attributes(clip.captions[0]) == full
        for caption in clip.captions:
            named = ms.caption_attributes(caption)
            for attr in ("instrument", "genre", "tempo_class"):
                assert named.get(attr) == lab[attr], (caption, attr)
            assert all(named[k] == lab[k] for k in named), caption  # nothing named wrongly
        qa = {p["instruction"]: p["answer"] for p in clip.qa}
        assert qa["What is the lead instrument?"] == lab["instrument"]
        assert qa["What genre is this music?"] == lab["genre"]
        assert qa["Is the tempo slow, medium or fast?"] == lab["tempo_class"]
        assert qa["What key is the music in?"] == f"{lab['key']} {lab['mode']}"
        assert qa["Are the dynamics soft, medium or loud?"] == lab["dynamics"]
    # the templates are drawn per clip: more than one template set in use
    assert len({tuple(c.captions[1:]) for c in rows}) > 1
    assert len({c.labels["genre"] for c in rows}) >= 5 and len({c.labels["instrument"] for c in rows}) >= 6


def test_caption_parser_uses_whole_phrases():
    got = ms.caption_attributes("A medium tempo jazz tune: an electric piano in F# minor with soft dynamics, 120 BPM.")
    assert got == {"tempo_class": "medium", "genre": "jazz", "instrument": "electric piano", "key": "F#",
                   "mode": "minor", "dynamics": "soft", "bpm": 120}
    assert ms.caption_attributes("a minor piano piece") == {}  # lowercase "a minor" is no key; "piano" no label
    assert ms.caption_attributes("rock with medium dynamics") == {"genre": "rock", "dynamics": "medium"}


@needs_synth
def test_tempo_is_audible(clips):
    rows, audio = clips
    hits = [tempo_ok(estimate_bpm(y), c.labels["bpm"]) for c, y in zip(rows, audio)]
    assert np.mean(hits) >= 0.8, hits  # measured 24/24 (octave-tolerant, within 4%)


@needs_synth
def test_dynamics_are_audible_and_nothing_clips(clips):
    rows, audio = clips
    by = {d: [rms_db(y) for c, y in zip(rows, audio) if c.labels["dynamics"] == d] for d in ms.DYNAMICS}
    assert all(by.values()), by
    soft, medium, loud = (np.mean(by[d]) for d in ("soft", "medium", "loud"))
    assert medium - soft > 6 and loud - medium > 4, (soft, medium, loud)  # measured -41.1 / -29.7 / -23.4 dB
    assert max(by["soft"]) < min(by["loud"])
    assert max(float(np.abs(y).max()) for y in audio) < 0.9  # fixed gain, no normalisation, no clipping
    # within a clip: the same score rendered at the three dynamics gets louder, with clear steps
    for index in (0, 3, 7):
        levels = [rms_db(ms.render_midi(ms.compose(0, index, 3.0, dynamics=d)[0], 3.0, SR)) for d in ms.DYNAMICS]
        assert levels[1] - levels[0] > 5 and levels[2] - levels[1] > 3, (index, levels)


@needs_synth
def test_key_is_audible(clips):
    rows, audio = clips
    hits = []
    for c, y in zip(rows, audio):
        root, mode = estimate_key(y)
        true = ms.KEYS.index(c.labels["key"])
        relative = (true + (9 if c.labels["mode"] == "major" else 3)) % 12
        hits.append((root, mode) == (true, c.labels["mode"]) or (root == relative and mode != c.labels["mode"]))
    # exact or relative key; chance 1/12; measured 0.79 here, 0.80 on 300 x 10 s clips
    assert np.mean(hits) >= 0.5, hits


@needs_synth
def test_instruments_differ_in_timbre():
    names = list(ms.INSTRUMENTS)
    groups = [1, 3, 5, 8]  # four different melodies (clip scores), each played by all 12 leads
    lead_only, mix = {}, {}
    for g in groups:
        for name in names:
            pm, labels, _ = ms.compose(0, g, 3.0, instrument=name)
            assert labels["instrument"] == name
            mix[(g, name)] = timbre(ms.render_midi(pm, 3.0, SR))
            pm.instruments = [i for i in pm.instruments if i.name == "lead"]
            lead_only[(g, name)] = timbre(ms.render_midi(pm, 3.0, SR))
        mean = np.mean([mix[(g, n)] for n in names], 0)  # remove what the accompaniment adds
        for n in names:
            mix[(g, n)] = mix[(g, n)] - mean
    # chance is 1/12 = 0.08; measured 0.83 (lead alone) and 0.71 (full mix, clip mean removed)
    assert nearest_centroid_accuracy(lead_only, groups, names) >= 0.6
    assert nearest_centroid_accuracy(mix, groups, names) >= 0.5
    # the same melody with the rest of the band fixed: contrasting leads move the mix's spectrum
    pm, _, _ = ms.compose(0, 3, 3.0)
    lead = next(i for i in pm.instruments if i.name == "lead")
    stats = {}
    for name in ("flute", "trumpet", "distorted guitar"):
        lead.program = ms.INSTRUMENTS[name]
        stats[name] = centroid_rolloff(ms.render_midi(pm, 3.0, SR))
    assert stats["trumpet"][0] > 1.15 * stats["flute"][0] and stats["trumpet"][1] > 1.15 * stats["flute"][1], stats
    assert stats["distorted guitar"][1] > 1.15 * stats["flute"][1], stats


@needs_synth
def test_compose_overrides_keep_the_rest_fixed():
    a, la, _ = ms.compose(0, 5, 4.0)
    b, lb, _ = ms.compose(0, 5, 4.0, instrument="violin" if la["instrument"] != "violin" else "flute")

    def notes(pm, name):
        return [(n.start, n.end, n.pitch % 12) for i in pm.instruments if i.name == name for n in i.notes]

    assert notes(a, "lead") == notes(b, "lead") and notes(a, "drums") == notes(b, "drums")
    assert {k: v for k, v in la.items() if k != "instrument"} == {k: v for k, v in lb.items() if k != "instrument"}
    with pytest.raises(ValueError, match="unknown overrides"):
        ms.compose(0, 5, 4.0, colour="blue")


@needs_synth
def test_rendering_prints_a_progress_line_per_tenth_unless_quiet(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("BRIDGEBENCH_QUIET", raising=False)
    with cache_at(tmp_path / "a"):
        ms.music_synth_manifest(num_clips=20, seconds=1.0, workers=1)
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("[progress] render music-synth ")]
    assert [ln.split()[3] for ln in lines] == [f"{2 * i}/20" for i in range(1, 11)], lines
    assert all(", ETA " in ln for ln in lines)
    monkeypatch.setenv("BRIDGEBENCH_QUIET", "1")  # the sweep's --quiet
    with cache_at(tmp_path / "b"):
        ms.music_synth_manifest(num_clips=20, seconds=1.0, workers=1)
    assert "[progress]" not in capfd.readouterr().err


def test_missing_fluidsynth_gives_install_commands(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "fluidsynth", None)  # import fluidsynth -> ImportError
    monkeypatch.setenv("BRIDGEBENCH_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"apt-get install libfluidsynth3.*pip install pyfluidsynth pretty_midi"):
        ms.music_synth_manifest(num_clips=2, seconds=1.0)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


@needs_synth
@pytest.mark.slow
def test_unguarded_script_fails_clearly_instead_of_hanging(tmp_path):
    # ~10 s: the script and its spawned workers each import bridgebench.datamodules (lightning)
    script = tmp_path / "unguarded.py"
    script.write_text("from bridgebench.datamodules.music_synth import music_synth_manifest\n"
                      "music_synth_manifest(num_clips=4, seconds=1.0, workers=2)\n")
    env = dict(os.environ, BRIDGEBENCH_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode != 0 and 'if __name__ == "__main__":' in done.stderr, done.stderr[-2000:]
    guarded = tmp_path / "guarded.py"
    guarded.write_text("from bridgebench.datamodules.music_synth import music_synth_manifest\n"
                       "if __name__ == '__main__':\n"
                       "    print(music_synth_manifest(num_clips=4, seconds=1.0, workers=2))\n")
    done = subprocess.run([sys.executable, str(guarded)], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith("manifest.jsonl"), done.stderr[-2000:]


@needs_synth
@pytest.mark.slow
def test_full_set_renders_in_under_three_minutes(tmp_path):
    with cache_at(tmp_path):
        began = time.perf_counter()
        manifest = ms.music_synth_manifest(num_clips=2000, seconds=10.0, sample_rate=SR, seed=0)
        took = time.perf_counter() - began
    rows = read_manifest(str(manifest))
    size = sum(os.path.getsize(c.audio) for c in rows)
    print(f"music-synth 2000 x 10 s: {took:.1f} s ({1000 * took / 2000:.0f} ms/clip wall), {size / 1e6:.0f} MB")
    assert len(rows) == 2000 and took < 180
    assert size == 2000 * (44 + 2 * 10 * SR)


def test_sweep_chance_levels_are_what_a_deaf_model_reaches():
    # The chance line of a table is what a model that ignores the audio reaches on the 200 test clips of
    # builtin:music-synth (2,000 clips of 10 s, seed 0): the higher of uniform guessing and always
    # answering the training split's most frequent label (the mean over tied labels: genre has hip hop and
    # rock at 207 training clips each, 13.5 and 9% of the test clips). Labels come from the composition alone.
    import collections

    import yaml

    from bridgebench.evaluation.answers import answer_correct

    rows = [ms.clip_row(0, i, 10.0) for i in range(2000)]
    train = [r["labels"] for r in rows if r["split"] == "train"]
    test = [r["labels"] for r in rows if r["split"] == "test"]
    assert len(test) == 200

    def label(labels, kind):
        return f"{labels['key']} {labels['mode']}" if kind == "key" else labels[kind]

    def deaf(kind):
        if kind == "bpm":
            best = max(range(40, 220), key=lambda b: sum(answer_correct("bpm", f"{b} bpm", f"{x['bpm']} bpm") for x in train))
            return 100 * sum(answer_correct("bpm", f"{best} bpm", f"{x['bpm']} bpm") for x in test) / len(test)
        counts = collections.Counter(label(x, kind) for x in train)
        top = [c for c, n in counts.items() if n == max(counts.values())]  # a tie: no one answer is the prior's
        uniform = 100 / len(counts)
        constant = sum(100 * sum(label(x, kind) == c for x in test) / len(test) for c in top) / len(top)
        return max(uniform, constant)

    checked = 0
    for name in ("demo", "demo_bridges", "loss_ablation", "demo_instruct"):
        spec = yaml.safe_load(open(os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                                "experiments", "sweeps", f"{name}.yaml")))
        for metric, value in spec["chance"].items():
            kind = next((k for k in ("instrument", "genre", "tempo_class", "bpm", "key", "mode", "dynamics")
                         if f"/{k}/" in metric or metric.endswith(f"acc_{k}") or f"classify_{k}_" in metric), None)
            if kind is None:
                continue  # retrieval: 1 in 200
            assert value == pytest.approx(deaf(kind), abs=0.05), (name, metric)
            checked += 1
    assert checked >= 20
