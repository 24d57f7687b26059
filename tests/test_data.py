"""Data path: manifests, decoding and resampling, the built-in tone set, batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from bridgebench.datamodules import AudioError, AudioTextDataModule, ManifestError, load_audio, read_manifest
from bridgebench.datamodules.fixtures import LEVELS, PITCHES, tones_manifest
from bridgebench.datamodules.contract import DataContract, TextProcessor
from bridgebench.errors import ConfigError


def _tone(path, sr=44_100, seconds=1.0, channels=2, freq=440.0):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, sr)


def test_load_audio_mixes_to_mono_and_resamples(tmp_path):
    path = tmp_path / "stereo.flac"
    _tone(path, sr=44_100, seconds=1.5, channels=2)
    audio = load_audio(str(path), 16_000)
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == 24_000
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16_000 / len(audio) - 440) < 2
    part = load_audio(str(path), 16_000, start=0.5, end=1.0)
    assert len(part) == 8_000


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="missing.wav: file does not exist"):
        load_audio(str(tmp_path / "missing.wav"), 16_000)
    bad = tmp_path / "text.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioError, match="text.wav: cannot decode audio"):
        load_audio(str(bad), 16_000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1], dtype=np.float32), 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: contains NaN or Inf"):
        load_audio(str(nan), 16_000)


def test_manifest_reads_fields_and_reports_line_numbers(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "a", "audio": "a.wav", "caption": "one"}) + "\n\n"
                 + json.dumps({"audio": "/abs/b.wav", "captions": ["x", "y"], "split": "test",
                               "qa": [{"instruction": "q?", "answer": "a"}]}) + "\n")
    clips = read_manifest(str(m))
    assert clips[0].audio == str(tmp_path / "a.wav") and clips[0].captions == ["one"]
    assert clips[1].audio == "/abs/b.wav" and clips[1].split == "test" and clips[1].captions == ["x", "y"]
    m.write_text(json.dumps({"audio": "a.wav"}) + "\n" + json.dumps({"caption": "no audio"}) + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: missing required field 'audio'"):
        read_manifest(str(m))
    m.write_bytes(b'{"audio": "a.wav"}\n{"audio": "\xff\xfe"}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid UTF-8"):
        read_manifest(str(m))


def test_tone_set_captions_are_true_of_the_audio():
    manifest = tones_manifest()
    clips = read_manifest(str(manifest))
    assert len(clips) == 48 and {c.split for c in clips} == {"train", "val", "test"}
    for clip in clips:
        audio, sr = sf.read(clip.audio, dtype="float32")
        freq = np.argmax(np.abs(np.fft.rfft(audio))) * sr / len(audio)
        assert abs(freq - PITCHES[clip.labels["pitch"]]) / PITCHES[clip.labels["pitch"]] < 0.1
        peak = np.abs(audio).max()
        assert abs(peak - LEVELS[clip.labels["level"]]) < 0.01
        crest = peak / np.sqrt(np.mean(audio ** 2))
        assert (crest < 1.1) == (clip.labels["wave"] == "square")
        assert all(clip.labels["pitch"] in c and clip.labels["level"] in c for c in clip.captions)
    assert tones_manifest() == manifest  # cached, and generated deterministically


def _contract(sample_rate=16_000, max_seconds=None):
    def text(instructions, targets=None):
        return {"n": torch.tensor(len(instructions))}

    return DataContract(sample_rate, max_seconds, TextProcessor(text))


def test_batches_resample_crop_pad_and_keep_all_references():
    dm = AudioTextDataModule(manifest="builtin:tones", batch_size=4, num_workers=0, clip_seconds=1.0)
    dm.connect(_contract(sample_rate=24_000))
    train = next(iter(dm.train_dataloader()))
    assert train["audio"].shape == (4, 24_000) and train["audio_mask"].all()
    assert all(t in refs for t, refs in zip(train["target"], train["references"]))
    test = dm.dataset("test")
    first, again = test[0], test[0]
    assert torch.equal(first["audio"], again["audio"])  # evaluation crops deterministically
    assert len(first["references"]) == 2 and first["target"] == first["references"][0]
    assert first["instruction"] == "Generate an objective music description."


def test_random_crops_in_training_differ_by_epoch_and_replay_exactly():
    dm = AudioTextDataModule(manifest="builtin:tones", batch_size=1, num_workers=0, clip_seconds=0.5)
    dm.connect(_contract())
    ds = dm.dataset("train")
    crops = {ds[(0, epoch)]["audio"][:50].sum().item() for epoch in range(6)}
    assert len(crops) > 1  # a new crop every epoch...
    assert torch.equal(ds[(0, 3)]["audio"], ds[(0, 3)]["audio"])  # ...reproducible from (seed, epoch, index)


def test_encoder_window_caps_the_crop_and_qa_gives_one_example_per_pair():
    dm = AudioTextDataModule(manifest="builtin:tones", task="qa", batch_size=2, num_workers=0, clip_seconds=30)
    dm.connect(_contract(max_seconds=1.0))
    ds = dm.dataset("val")
    assert len(ds) == 2 * len([c for c in dm._clips if c.split == "val"])
    item = ds[0]
    assert len(item["audio"]) == 16_000 and item["instruction"].endswith("?")


def test_caption_plus_qa_trains_on_both_and_evaluates_on_captions():
    dm = AudioTextDataModule(manifest="builtin:tones", task="caption+qa", batch_size=2, num_workers=0, clip_seconds=1.0)
    dm.connect(_contract(sample_rate=16_000))
    train, val = dm.dataset("train"), dm.dataset("val")
    clips = [c for c in dm._clips if c.split == "train"]
    assert len(train) == 2 * len(clips) and len(val) == len([c for c in dm._clips if c.split == "val"])
    visits = [(train.examples[i], train[(i, e)]) for i in range(len(train)) for e in range(4)]
    asked = [(ex, item) for ex, item in visits if ex.qa is not None]
    assert len(asked) == len(visits) // 2
    # Each question visit is one of that clip's own instruction/answer pairs, drawn anew per epoch.
    assert all({"instruction": it["instruction"], "answer": it["target"]} in ex.qa for ex, it in asked)
    assert len({it["instruction"] for _, it in asked}) > 1
    assert all(it["target"] in ex.clip.captions for ex, it in visits if ex.qa is None)
    assert all(val[i]["references"] == val.examples[i].clip.captions for i in range(len(val)))


def test_padding_mask_marks_real_samples(tmp_path):
    for name, seconds in (("long.wav", 1.0), ("short.wav", 0.25)):
        _tone(tmp_path / name, sr=16_000, seconds=seconds, channels=1)
    (tmp_path / "m.jsonl").write_text(
        "\n".join(json.dumps({"id": n, "audio": n, "caption": "a tone"}) for n in ("long.wav", "short.wav")))
    dm = AudioTextDataModule(manifest=str(tmp_path / "m.jsonl"), batch_size=2, num_workers=0,
                             splits={"test": "train"})
    dm.connect(_contract())
    batch = next(iter(dm.test_dataloader()))
    assert batch["audio_mask"].sum(1).tolist() == [16_000, 4_000]
    assert batch["audio"][1, 4_000:].abs().sum() == 0


def test_unknown_builtin_and_missing_manifest_are_reported():
    # Both found when the datamodule is built, before any data is read.
    with pytest.raises(ConfigError, match="unknown built-in set 'builtin:nope'"):
        AudioTextDataModule(manifest="builtin:nope", num_workers=0)
    with pytest.raises(ConfigError, match="'data/none.jsonl' does not exist"):
        AudioTextDataModule(manifest="data/none.jsonl", num_workers=0)


def test_train_target_first_always_trains_on_the_first_caption():
    targets = {}
    for mode in ("random", "first"):
        dm = AudioTextDataModule(manifest="builtin:tones", batch_size=8, num_workers=0, clip_seconds=1.0,
                                 train_target=mode)
        dm.connect(_contract(sample_rate=16_000))
        train = dm.dataset("train")
        targets[mode] = [train[i]["target"] == train[i]["references"][0] for i in range(len(train))]
    assert all(targets["first"])
    assert not all(targets["random"])  # the default draws among the captions
    with pytest.raises(ValueError, match="train_target"):
        AudioTextDataModule(manifest="builtin:tones", train_target="last")


BLAP_PHRASES = ["Upbeat", "upbeat", "Upbeat,", "upbeat,", "The low quality recording", "This is a low-quality"]


class _Draws:
    """A generator whose ``random()`` returns scripted draws."""

    def __init__(self, draws):
        self.draws = list(draws)

    def random(self):
        return self.draws.pop(0)


def test_blap_phrase_dropping_matches_its_code_exactly():
    from bridgebench.datamodules.augment import drop_phrases

    # Every draw succeeds: substring matches, no whitespace collapse, a comma left by "Upbeat" (tried
    # before "Upbeat,"), one strip at the end (BLAP2_Pretrain.py:686-699 probed with draws < 0.6).
    always = _Draws([0.0] * 20)
    assert (drop_phrases("The low quality recording features an upbeat song. Upbeat, fun.", BLAP_PHRASES, 0.6,
                         always) == "features an  song. , fun.")
    assert drop_phrases("This is a low-quality recording of an upbeat tune", BLAP_PHRASES, 0.6,
                        always) == "recording of an  tune"
    assert drop_phrases("upbeats", BLAP_PHRASES, 0.6, _Draws([0.0])) == "s"  # no word boundaries
    # The first failed draw stops a phrase: the second "upbeat" stays, and "upbeat," (a later
    # phrase) gives it another chance with the next draw.
    assert drop_phrases("upbeat and upbeat, fun", BLAP_PHRASES, 0.6, _Draws([0.1, 0.7, 0.9])) == "and upbeat, fun"
    assert drop_phrases("upbeat and upbeat, fun", BLAP_PHRASES, 0.6, _Draws([0.1, 0.7, 0.2])) == "and  fun"
    assert drop_phrases("Calm piano", BLAP_PHRASES, 0.6, _Draws([])) == "Calm piano"  # no match, no draw


def test_drop_phrases_changes_training_and_validation_targets_only(tmp_path):
    rows = []
    for split in ("train", "val", "test"):
        for k in range(3):
            name = f"{split}{k}.wav"
            _tone(tmp_path / name, sr=16_000, seconds=0.2, channels=1)
            rows.append({"id": name, "audio": name, "split": split,
                         "captions": ["The low quality recording features an upbeat piano."]})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dm = AudioTextDataModule(manifest=str(tmp_path / "m.jsonl"), batch_size=2, num_workers=0, clip_seconds=1.0,
                             drop_phrases=BLAP_PHRASES, drop_phrase_p=1.0)
    dm.connect(_contract())
    for role in ("train", "val"):
        item = dm.dataset(role)[0]
        assert item["target"] == "features an  piano."  # p = 1: every occurrence goes
        assert item["references"] == ["The low quality recording features an upbeat piano."]
    assert dm.dataset("test")[0]["target"] == "The low quality recording features an upbeat piano."
    half = AudioTextDataModule(manifest=str(tmp_path / "m.jsonl"), num_workers=0, drop_phrases=BLAP_PHRASES)
    half.connect(_contract())
    train = half.dataset("train")
    seen = {train[(i, e)]["target"] for i in range(3) for e in range(8)}
    assert len(seen) > 1 and seen == {train[(i, e)]["target"] for i in range(3) for e in range(8)}  # replayable
    with pytest.raises(ConfigError, match="drop_phrases"):
        AudioTextDataModule(manifest="builtin:tones", drop_phrases=["", "x"])
