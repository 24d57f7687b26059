"""Bad inputs: every audio variant is decoded correctly or rejected naming the file; bad text and
bad configs fail with one clear line; a non-finite loss stops the run naming the step."""

from __future__ import annotations

import json
import os
import shutil

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_module

from bridgebench.__main__ import main
from bridgebench.datamodules import AudioError, AudioTextDataModule, ManifestError, load_audio, read_manifest
from bridgebench.datamodules.manifest import MAX_TEXT_CHARS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16_000


def _tone(seconds: float, sr: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.4 * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def _peak_hz(audio: np.ndarray, sr: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(audio))) * sr / len(audio))


# --- audio that must decode correctly ---

@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_sample_formats_decode_to_the_same_signal(tmp_path, subtype):
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, _tone(0.5, SR), SR, subtype=subtype)
    audio = load_audio(str(path), SR)
    assert len(audio) == SR // 2 and audio.dtype == np.float32
    tol = 0.02 if subtype == "PCM_U8" else 1e-3
    np.testing.assert_allclose(audio, _tone(0.5, SR), atol=tol)


def test_six_channels_are_mixed_to_mono(tmp_path):
    path = tmp_path / "six.wav"
    sf.write(path, _tone(0.5, SR, channels=6), SR)
    audio = load_audio(str(path), SR)
    assert audio.ndim == 1 and abs(_peak_hz(audio, SR) - 440) < 3


@pytest.mark.parametrize("rate", [8_000, 96_000])
def test_other_rates_are_resampled(tmp_path, rate):
    path = tmp_path / f"{rate}.wav"
    sf.write(path, _tone(1.0, rate, freq=1000.0), rate)
    audio = load_audio(str(path), 24_000)
    assert len(audio) == 24_000 and abs(_peak_hz(audio, 24_000) - 1000) < 3


def test_very_short_silent_and_very_long_clips(tmp_path):
    sf.write(tmp_path / "short.wav", _tone(0.1, SR), SR)
    assert len(load_audio(str(tmp_path / "short.wav"), SR)) == SR // 10
    sf.write(tmp_path / "silence.wav", np.zeros(SR), SR)
    assert not load_audio(str(tmp_path / "silence.wav"), SR).any()  # silence is valid audio
    long = tmp_path / "ten_minutes.flac"
    sf.write(long, _tone(600.0, 8_000, freq=200.0), 8_000)
    crop = load_audio(str(long), SR, window=10.0, choose_offset=lambda spare: spare // 2)
    assert len(crop) == 10 * SR and abs(_peak_hz(crop, SR) - 200) < 2


def test_mp3_named_wav_decodes(tmp_path):
    sf.write(tmp_path / "real.mp3", _tone(1.0, SR), SR)
    shutil.copy(tmp_path / "real.mp3", tmp_path / "disguised.wav")
    audio = load_audio(str(tmp_path / "disguised.wav"), SR)
    assert abs(len(audio) - SR) < SR // 10 and abs(_peak_hz(audio, SR) - 440) < 5


# --- audio that must be rejected, naming the file and the reason ---

def _write_bad(tmp_path, kind: str):
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind in ("truncated_header", "truncated_data"):
        sf.write(path, _tone(1.0, SR), SR, subtype="PCM_16")
        data = path.read_bytes()
        path.write_bytes(data[:30] if kind == "truncated_header" else data[: len(data) // 2])
    elif kind == "text":
        path.write_text("definitely not audio\n")
    elif kind in ("nan", "inf"):
        x = _tone(0.2, SR).astype(np.float32)
        x[100] = np.nan if kind == "nan" else np.inf
        sf.write(path, x, SR, subtype="FLOAT")
    return path


@pytest.mark.parametrize("kind,reason", [
    ("empty", "empty file"), ("truncated_header", "truncated WAV: no data chunk"),
    ("truncated_data", "truncated WAV: the data chunk declares"),
    ("text", "cannot decode"), ("nan", "NaN or Inf"), ("inf", "NaN or Inf"), ("missing", "does not exist"),
])
def test_bad_audio_is_rejected_with_file_and_reason(tmp_path, kind, reason):
    path = _write_bad(tmp_path, kind)
    with pytest.raises(AudioError) as err:
        load_audio(str(path), SR)
    assert str(err.value).startswith(f"{path}: ") and reason in str(err.value)


def test_skipped_clips_are_counted_listed_and_never_substituted(tmp_path):
    kinds = ["empty", "truncated_header", "truncated_data", "text", "nan", "inf", "missing"]
    rows = []
    for kind in kinds:
        rows.append({"id": kind, "audio": _write_bad(tmp_path, kind).name, "caption": "bad", "split": "train"})
    for i in range(3):
        sf.write(tmp_path / f"good{i}.wav", _tone(0.5, SR), SR)
        rows.append({"id": f"good{i}", "audio": f"good{i}.wav", "caption": "a tone", "split": "train"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    module = tiny_module(encoder="mert", bridge="linear_pool", llm="causal")
    seen = []
    original = module.losses

    def spy(batch, encoded=None):
        seen.extend(batch["id"])
        return original(batch, encoded)

    module.losses = spy
    dm = AudioTextDataModule(manifest=str(tmp_path / "m.jsonl"), batch_size=4, num_workers=0, skip_bad_audio=True)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    listed = [json.loads(x) for x in open(tmp_path / "skipped_audio.jsonl")]
    assert sorted(r["id"] for r in listed) == sorted(kinds)
    assert sorted(seen) == ["good0", "good1", "good2"]  # only real clips were trained on


# --- bad text ---

def _manifest(tmp_path, rows, raw: bytes = b""):
    sf.write(tmp_path / "a.wav", _tone(0.3, SR), SR)
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + raw)
    return path


@pytest.mark.parametrize("caption,message", [("", "caption 2 is empty"), ("   \t ", "caption 2 is empty")])
def test_empty_captions_name_the_line(tmp_path, caption, message):
    path = _manifest(tmp_path, [{"audio": "a.wav", "caption": "ok"}, {"audio": "a.wav", "captions": ["fine", caption]}])
    with pytest.raises(ManifestError, match=rf"m.jsonl:2: {message}"):
        read_manifest(str(path))


def test_long_captions_are_truncated_and_counted(tmp_path):
    path = _manifest(tmp_path, [{"audio": "a.wav", "caption": "x" * 10_000}, {"audio": "a.wav", "caption": "ok"}])
    counts = {}
    clips = read_manifest(str(path), counts)
    assert len(clips[0].captions[0]) == MAX_TEXT_CHARS and counts == {"truncated": 1}
    dm = AudioTextDataModule(manifest=str(path), num_workers=0)
    dm.connect(tiny_module(bridge="linear_pool").data_contract())
    with pytest.warns(UserWarning, match="truncated 1 text"):
        dm.setup()


def test_non_utf8_and_missing_fields_name_the_line(tmp_path):
    path = _manifest(tmp_path, [{"audio": "a.wav", "caption": "ok"}], raw=b'{"audio": "a.wav", "caption": "\xff"}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid UTF-8"):
        read_manifest(str(path))
    path = _manifest(tmp_path, [{"audio": "a.wav", "caption": "ok"}, {"caption": "no audio"}])
    with pytest.raises(ManifestError, match=r"m.jsonl:2: missing required field 'audio'"):
        read_manifest(str(path))
    path = _manifest(tmp_path, [{"audio": "a.wav", "qa": [{"instruction": "q?"}]}])
    with pytest.raises(ManifestError, match=r"m.jsonl:1: qa pair 1 needs 'instruction' and 'answer'"):
        read_manifest(str(path))


# --- configs and training ---

def test_bridgenet_without_instructions_is_refused_before_anything_runs(capsys):
    code = main(["fit", "--config", os.path.join(ROOT, "experiments", "mint_stage2.yaml"), "--config",
                 os.path.join(ROOT, "experiments", "tiny.yaml"), "--data.task=caption", "--data.instructions=['']"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: data.instructions: the bridgenet bridge reads the instruction, but every instruction is empty; "
        "give instruction templates, use task: qa, or use the qformer bridge"]


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    module = tiny_module(encoder="mert", bridge="linear_pool", llm="causal")
    original = module.losses

    def poisoned(batch, encoded=None):
        out = original(batch, encoded)
        if module.global_step == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    module.losses = poisoned
    trainer = L.Trainer(max_steps=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=str(tmp_path))
    with pytest.raises(FloatingPointError, match="loss is nan at global step 2"):
        trainer.fit(module, datamodule=AudioTextDataModule(batch_size=2, num_workers=0, clip_seconds=1.0))
    assert torch.isfinite(module.bridge.proj.weight).all()  # the bad step was never applied


def test_check_finite_off_leaves_the_step_free_of_the_nan_check(tmp_path):
    module = tiny_module(encoder="mert", bridge="linear_pool", llm="causal", check_finite=False)
    original = module.losses

    def poisoned(batch, encoded=None):
        out = original(batch, encoded)
        out["loss"] = out["loss"] * float("nan")
        return out

    module.losses = poisoned
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=AudioTextDataModule(batch_size=2, num_workers=0, clip_seconds=1.0))
    assert trainer.global_step == 2  # no stop: the switch really removes the check
