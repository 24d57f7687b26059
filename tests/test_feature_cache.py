"""Frozen-feature cache (same loss as encoding on the fly, never stale) and counted skips of bad audio."""

from __future__ import annotations

import json
import os
import random

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_module

from bridgebench.engine.feature_cache import fill_cache
from bridgebench.errors import ConfigError
from bridgebench.datamodules import AudioError, AudioTextDataModule
from bridgebench.errors import FeatureCacheMiss


def _trainer(tmp_path, **kw):
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=str(tmp_path), **kw)


def _manifest(tmp_path, seconds=(1.0, 0.5, 0.75, 1.25)):
    rows = []
    for i, s in enumerate(seconds):
        name = f"clip{i}.wav"
        t = np.arange(int(16_000 * s)) / 16_000
        sf.write(tmp_path / name, 0.2 * np.sin(2 * np.pi * (200 + 100 * i) * t), 16_000)
        rows.append({"id": f"c{i}", "audio": name, "captions": [f"tone number {i}", "a tone"], "split": "train"})
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _batch(module, dm, mode):
    dm.features, dm.train_crop = mode, "start"
    dm.connect(module.data_contract())
    random.seed(0)
    return next(iter(dm._loader("train", shuffle=False)))


@pytest.mark.parametrize("encoder,bridge,llm", [("clap", "qformer", "seq2seq"), ("mert", "linear_pool", "causal"),
                                                ("data2vec", "linear_pool", "seq2seq")])
def test_cached_features_give_the_on_the_fly_loss(encoder, bridge, llm, tmp_path):
    module = tiny_module(encoder=encoder, bridge=bridge, llm=llm).eval()
    dm = AudioTextDataModule(manifest=str(_manifest(tmp_path)), batch_size=4, num_workers=0,
                             feature_cache=str(tmp_path / "cache"))
    counts = fill_cache(module, dm, roles=("train",))
    assert counts == {"train": 4}
    live, cached = _batch(module, dm, "audio"), _batch(module, dm, "cached")
    assert "audio" in live and "features" in cached and "audio" not in cached
    with torch.no_grad():
        a, b = module.losses(live)["loss"], module.losses(cached)["loss"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # A second pass finds everything cached and writes nothing.
    assert fill_cache(module, dm, roles=("train",)) == {"train": 0}


def test_changed_audio_file_is_never_served_stale(tmp_path):
    module = tiny_module(encoder="mert", bridge="linear_pool", llm="causal").eval()
    manifest = _manifest(tmp_path)
    dm = AudioTextDataModule(manifest=str(manifest), batch_size=4, num_workers=0, feature_cache=str(tmp_path / "c"))
    fill_cache(module, dm, roles=("train",))
    sf.write(tmp_path / "clip2.wav", np.zeros(16_000), 16_000)  # edited after caching
    os.utime(tmp_path / "clip2.wav", ns=(1, 1))
    with pytest.raises(FeatureCacheMiss, match=r"clip2\.wav: no cached features .* python -m bridgebench cache"):
        _batch(module, dm, "cached")


def test_changed_encoder_weights_get_another_cache(tmp_path):
    a = tiny_module(encoder="mert", bridge="linear_pool", llm="causal")
    b = tiny_module(encoder="mert", bridge="linear_pool", llm="causal")
    assert a.encoder_cache_key() == b.encoder_cache_key()
    with torch.no_grad():
        b.encoder.model.feature_projection.projection.weight.add_(1e-3)
    b._encoder_key = None
    assert a.encoder_cache_key() != b.encoder_cache_key()
    c = tiny_module(encoder="data2vec", bridge="linear_pool", llm="causal")
    assert c.encoder_cache_key() != a.encoder_cache_key()


def test_a_training_encoder_cannot_be_cached(tmp_path):
    from conftest import tiny_specs

    from bridgebench.engine.module import BridgeModule

    specs = tiny_specs(encoder="mert", bridge="linear_pool", llm="causal")
    specs["encoder"].mert.layers = "weighted"
    module = BridgeModule(**specs)
    dm = AudioTextDataModule(manifest=str(_manifest(tmp_path)), num_workers=0)
    with pytest.raises(ConfigError, match="only a frozen encoder's features can be cached"):
        fill_cache(module, dm)
    dm = AudioTextDataModule(manifest=str(_manifest(tmp_path)), num_workers=0, features="cached")
    dm.connect(module.data_contract())
    with pytest.raises(ValueError, match="data.features: cached needs a frozen encoder"):
        dm.dataset("train")


def _bad_files(tmp_path):
    good = _manifest(tmp_path, seconds=(1.0, 1.0))
    rows = [json.loads(x) for x in good.read_text().splitlines()]
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "trunc.wav", np.zeros(16_000), 16_000)
    data = (tmp_path / "trunc.wav").read_bytes()
    (tmp_path / "trunc.wav").write_bytes(data[:30])  # header cut short
    (tmp_path / "text.wav").write_text("this is not audio")
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan] * 800, dtype=np.float32), 16_000, subtype="FLOAT")
    for name in ("empty.wav", "trunc.wav", "text.wav", "nan.wav", "missing.wav"):
        rows.append({"id": name, "audio": name, "captions": ["bad"], "split": "train"})
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return good


def test_bad_audio_stops_the_run_naming_the_file(tmp_path):
    module = tiny_module(encoder="mert", bridge="linear_pool", llm="causal")
    dm = AudioTextDataModule(manifest=str(_bad_files(tmp_path)), batch_size=7, num_workers=0)
    dm.connect(module.data_contract())
    with pytest.raises(AudioError, match=r"(empty|trunc|text|nan|missing)\.wav: "):
        next(iter(dm._loader("train", shuffle=False)))


def test_skip_bad_audio_counts_and_lists_every_bad_clip(tmp_path):
    module = tiny_module(encoder="mert", bridge="linear_pool", llm="causal")
    dm = AudioTextDataModule(manifest=str(_bad_files(tmp_path)), batch_size=3, num_workers=0, skip_bad_audio=True,
                             splits={"val": "train"})
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    rows = [json.loads(x) for x in open(tmp_path / "skipped_audio.jsonl")]
    assert sorted(r["id"] for r in rows) == sorted(["empty.wav", "trunc.wav", "text.wav", "nan.wav", "missing.wav"])
    assert all(r["stage"] == "train" and r["reason"].startswith(r["audio_path"]) for r in rows)
    assert trainer.state.finished


def test_a_batch_of_only_bad_clips_computes_nothing(tmp_path):
    module = tiny_module(encoder="mert", bridge="linear_pool", llm="causal")
    batch = {"id": [], "skipped": [{"id": "x", "audio_path": "x.wav", "reason": "x.wav: file does not exist"}]}
    assert module.training_step(batch, 0) is None
    assert module._skipped == {"train": batch["skipped"]}


def test_features_auto_fills_the_cache_once_then_serves_it(tmp_path, caplog, capfd, monkeypatch):
    from bridgebench.engine.lightning_cli import run

    monkeypatch.delenv("BRIDGEBENCH_QUIET", raising=False)

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = ["--config", os.path.join(root, "experiments", "blap_stage2.yaml"),
            "--config", os.path.join(root, "experiments", "tiny.yaml"),
            "--data.features=auto", f"--data.feature_cache={tmp_path / 'cache'}",
            "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
            # The cache pass is a predict loop inside fit: the frozen LLM must train in its training
            # dtype afterwards, not in the evaluation dtype that predicting casts it to.
            "--model.precision.frozen=bfloat16", "--model.precision.frozen_eval=float32"]
    losses = []
    for attempt in range(2):
        caplog.clear()
        with caplog.at_level("INFO"):
            cli = run(["fit", *args, f"--trainer.default_root_dir={tmp_path / f'run{attempt}'}"])
        assert cli.trainer.state.finished and cli.trainer.global_step == 2
        report = [r.getMessage() for r in caplog.records if r.getMessage().startswith("feature cache")]
        assert len(report) == 1
        progress = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("[progress] feature cache ")]
        if attempt == 0:  # every clip of the small set (train, val and test)
            assert "wrote 64 clip(s)" in report[0], report
            # The fill shows its progress (a line per tenth, each with the time left), as the sweep passes on.
            last = {}
            for ln in progress:  # "[progress] feature cache <role> <done>/<total> clips, <elapsed>, ETA <left>"
                role, count = ln.split()[3:5]
                last[role] = tuple(int(n) for n in count.split("/"))
            assert list(last) == ["train", "val", "test"] and all(d == t for d, t in last.values()), progress
            assert sum(t for _, t in last.values()) == 64 and all(", ETA " in ln for ln in progress)
            assert len(progress) >= 10  # a line per tenth of the training clips, at least
        else:
            assert "wrote 0 clip(s)" in report[0], report
            assert not progress  # nothing to fill, nothing shown
        assert cli.datamodule.features == "auto"
        assert next(cli.model.llm.hf.parameters()).dtype == torch.bfloat16
        losses.append(float(cli.trainer.callback_metrics["train/loss"]))
    # Filling the cache first does not move the run's random streams: both runs train alike.
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
