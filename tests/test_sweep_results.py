"""Test runs write metrics.json + predictions.jsonl; results tables aggregate runs; sweeps resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from bridgebench.__main__ import main
from bridgebench.engine.lightning_cli import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.yaml")


def _fit_test(preset, run_dir, *extra):
    common = ["--config", os.path.join(ROOT, "experiments", f"{preset}.yaml"), "--config", TINY,
              f"--trainer.default_root_dir={run_dir}", "--trainer.max_steps=2", *extra]
    run(["fit", *common])
    run(["test", *common, f"--ckpt_path={run_dir}/checkpoints/last.ckpt"])


def test_test_run_writes_metrics_and_predictions_and_results_aggregates(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _fit_test("musilingo_stage2", a, "--model.evaluation.metric_modes=[standard, musilingo]",
              "--model.evaluation.classify=[{label: dynamics, instruction: 'Is it played soft, medium or loud?'}]")
    _fit_test("blap_stage2", b)
    metrics = json.loads((a / "metrics.json").read_text())
    for key in ("test/loss", "test/bleu_4", "test/rouge_l", "test/cider_d", "test/musilingo/rouge_l_recall",
                "test/classify_dynamics_accuracy_sum", "test/classify_dynamics_accuracy_mean"):
        assert isinstance(metrics[key], float), key
    assert metrics["test/spice"].startswith("unavailable: ")
    assert metrics["run"]["bridge"] == "linear_pool"
    rows = [json.loads(x) for x in (a / "predictions.jsonl").read_text().splitlines()]
    assert rows and {"id", "prediction", "references"} <= set(rows[0])
    capsys.readouterr()
    assert main(["results", str(a), str(b), "--out", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| a |" in table and "| b |" in table and "test/bleu_4" in table
    assert (tmp_path / "table.csv").exists()


def test_sweep_runs_cells_and_skips_finished_ones(tmp_path):
    cmd = [sys.executable, "-m", "bridgebench", "sweep", "experiments/sweeps/loss_ablation.yaml", "--tiny",
           "--seeds", "0", "--cells", "ATC", "ATC+ATG", "--runs", str(tmp_path / "runs"),
           "--results", str(tmp_path / "results"), "--", "--trainer.max_steps=2"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    # The encoder, two stage-1 runs (one per loss set) and two stage-2 cells.
    assert first.stdout.count("fit + test in") == 5
    table = (tmp_path / "results" / "loss_ablation-tiny.md").read_text()
    assert "| ATC | 1 |" in table and "| ATC+ATG | 1 |" in table
    assert (tmp_path / "results" / "loss_ablation-tiny.png").stat().st_size > 1000
    assert (tmp_path / "results" / "loss_ablation-tiny.csv").exists()
    # Each tiny cell really loaded its own stage-1 run (the hand-off is explicit, tiny.yaml cannot null it).
    for cell, need in (("ATC", "stage1_ATC"), ("ATC+ATG", "stage1_ATC+ATG")):
        run_dir = tmp_path / "runs" / "loss_ablation-tiny" / cell / "seed0"
        config = yaml.safe_load((run_dir / "logs" / "01-fit" / "config.yaml").read_text())
        expected = tmp_path / "runs" / "_needs" / f"{need}-tiny" / "seed0" / "checkpoints" / "last.ckpt"
        assert config["model"]["stage1_checkpoint"] == str(expected)
        assert f"stage1_checkpoint {expected}: loaded" in (run_dir / "sweep.log").read_text()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0
    assert second.stdout.count("done earlier") == 5 and "fit + test in" not in second.stdout
    assert "the previous table differs" not in second.stdout  # same runs, same table: nothing kept
    # A narrower sweep writes another table; the one it replaces is kept beside it, not lost.
    before = (tmp_path / "results" / "loss_ablation-tiny.md").read_text()
    third = subprocess.run(cmd[: cmd.index("ATC+ATG")] + cmd[cmd.index("ATC+ATG") + 1:], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and "the previous table differs: kept as" in third.stdout
    kept = [p for p in (tmp_path / "results").iterdir() if p.name.startswith("loss_ablation-tiny.2")]
    assert sorted(p.suffix for p in kept) == [".csv", ".md", ".png"]
    assert next(p for p in kept if p.suffix == ".md").read_text() == before
    assert "ATC+ATG" not in (tmp_path / "results" / "loss_ablation-tiny.md").read_text()


@pytest.mark.slow
def test_make_sweep_loss_ablation_tiny(tmp_path):
    out = subprocess.run(["make", "--no-print-directory", "sweep", "NAME=loss_ablation", "TINY=1",
                          f"PY={sys.executable}", "VENV=" + os.path.dirname(os.path.dirname(sys.executable))],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:]


def test_caption_command_on_wav_and_mp3_from_a_trained_run(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    run_dir = tmp_path / "run"
    _fit_test("musilingo_stage2", run_dir)
    t = np.arange(24_000) / 16_000
    sf.write(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16_000)
    sf.write(tmp_path / "tone.mp3", 0.3 * np.sin(2 * np.pi * 880 * t), 16_000)
    capsys.readouterr()
    files = [str(tmp_path / "tone.wav"), str(tmp_path / "tone.mp3")]
    assert main(["caption", *files, "--ckpt", str(run_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == files and all(len(line.split("\t")) == 2 for line in lines)
    assert main(["caption", files[0], "--ckpt", str(run_dir), "--instruction", "Is the tone loud or soft?"]) == 0
    assert capsys.readouterr().out.startswith(files[0] + "\t")
    assert main(["caption", files[0], "--ckpt", str(tmp_path / "nowhere")]) == 2
    assert "--ckpt: '" in capsys.readouterr().err


@pytest.mark.slow  # ~3 min on 2 cores; the protocol's logic is covered fast by test_sweep_protocol.py
def test_sweep_tunes_each_cell_on_validation_then_runs_the_seeds_and_reports_stage1(tmp_path):
    # The demo comparison's Bridge-Net cell: needs (the encoder's tagging, the Bridge-Net's stage 1 per
    # seed), a 2-point learning-rate grid chosen on the validation loss, then 2 seeds; run from another
    # folder, as a user would, with the tiny override.
    cmd = [sys.executable, "-m", "bridgebench", "sweep", os.path.join(ROOT, "experiments", "sweeps", "demo_bridges.yaml"),
           "--tiny", "--cells", "bridgenet", "--seeds", "0", "1", "--report", "2", "--",
           "--trainer.max_steps=2"]
    sweep_file = tmp_path / "two_point.yaml"
    spec = yaml.safe_load(open(os.path.join(ROOT, "experiments", "sweeps", "demo_bridges.yaml")))
    spec["protocol"]["tune"] = {"model.optimizer.lr": [1.0e-4, 1.0e-3]}
    # Stage 1 per seed (a sweep option; demo_bridges itself fits stage 1 once, for time).
    spec["needs"]["demo_bridgenet_stage1"]["per_seed"] = True
    sweep_file.write_text(yaml.safe_dump(spec))
    cmd[4] = str(sweep_file)
    (tmp_path / "experiments").symlink_to(os.path.join(ROOT, "experiments"))
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    needs = tmp_path / "runs" / "sweeps" / "_needs"
    for need in ("demo_encoder-tiny", "demo_bridgenet_stage1-tiny/seed0", "demo_bridgenet_stage1-tiny/seed1"):
        assert (needs / need / "metrics.json").exists()  # tested, for the stage-1 columns
    cell = tmp_path / "runs" / "sweeps" / "two_point-tiny" / "bridgenet"
    protocol = json.loads((cell / "protocol.json").read_text())
    assert [g["point"]["model.optimizer.lr"] for g in protocol["grid"]] == [1.0e-4, 1.0e-3]
    values = [g["value"] for g in protocol["grid"]]
    assert protocol["chosen"]["model.optimizer.lr"] == [1.0e-4, 1.0e-3][values.index(min(values))]
    chosen = cell / "tune" / f"lr={protocol['chosen']['model.optimizer.lr']}"
    assert (chosen / "metrics.json").exists() and (cell / "seed1" / "metrics.json").exists()  # seed 0 = the tuned run
    assert not (cell / "seed0").exists()
    # Seed 1 got its own stage-1 run.
    config = yaml.safe_load((cell / "seed1" / "logs" / "01-fit" / "config.yaml").read_text())
    assert config["model"]["stage1_checkpoint"].endswith("demo_bridgenet_stage1-tiny/seed1/checkpoints/last.ckpt")
    assert "generated: " in first.stdout and re.search(r"metrics \(\d+ held-out predictions\)", first.stdout)
    table = (tmp_path / "results" / "two_point-tiny.md").read_text()
    header, _, row = table.splitlines()[2:5]
    cols = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")], strict=True))
    assert cols["cell"] == "bridgenet" and cols["seeds"] == "2" and cols["chosen (val)"].startswith("lr=")
    for key in ("test/attr_acc_instrument", "test/bleu_4", "stage1:test/r1_t2a"):
        assert cols[key] != "n/a" and "±" in cols[key], (key, table)
    assert float(cols["fit min"]) > 0
    assert "chance" in table and "validation split" in table
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0
    assert "fit + " not in second.stdout and second.stdout.count("done earlier") >= 5


def test_report_command_shows_clips_labels_and_metrics(tmp_path, capsys):
    run_dir = tmp_path / "r"
    _fit_test("blap_stage2", run_dir, "--model.evaluation.attribute_vocabulary=music-synth")
    capsys.readouterr()
    assert main(["report", str(run_dir), "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("generated: ") == 3 and out.count("true: instrument=") == 3
    assert "attr_acc_instrument" in out and "named: instrument " in out
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_caption_rebuilds_a_frozen_encoder_that_an_earlier_run_trained(tmp_path):
    import torch

    from bridgebench.engine.runs import load_run

    stage1, stage2 = tmp_path / "s1", tmp_path / "s2"
    common = ["--config", TINY, "--trainer.max_steps=2"]
    run(["fit", "--config", os.path.join(ROOT, "experiments", "demo_encoder.yaml"), *common,
         f"--trainer.default_root_dir={stage1}"])
    ckpt = stage1 / "checkpoints" / "last.ckpt"
    run(["fit", "--config", os.path.join(ROOT, "experiments", "demo_linear_pool.yaml"), *common,
         f"--trainer.default_root_dir={stage2}", f"--model.encoder_checkpoint={ckpt}", "--data.features=audio"])
    trained = {k[len("encoder."):]: v for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items()
               if k.startswith("encoder.")}
    assert trained  # the tagging run trained the encoder, so its checkpoint holds it
    module, _ = load_run(str(stage2))
    own = module.encoder.state_dict()
    assert all(torch.equal(own[k], v) for k, v in trained.items())
