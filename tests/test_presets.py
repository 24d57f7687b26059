"""Every preset is parsed, and every preset fast-dev-runs (fit + test) with the tiny override."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from bridgebench.engine.lightning_cli import run
from bridgebench.engine import validate
from bridgebench.evaluation.external_tools import find_java

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(
    os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "experiments", "*.yaml")) if not p.endswith("tiny.yaml")
)
TINY = os.path.join(ROOT, "experiments", "tiny.yaml")


def preset(name: str) -> str:
    return os.path.join(ROOT, "experiments", f"{name}.yaml")


def test_the_paper_presets_exist():
    assert {"blap_stage1", "blap_stage2", "mint_stage1", "mint_stage2", "musilingo_stage1",
            "musilingo_stage2"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_header_names_command_and_source(name):
    head = open(preset(name)).read().split("\n\n")[0]
    assert head.startswith("#")
    assert f"make exp NAME={name}" in head and "Source:" in head


@pytest.mark.parametrize("name", PRESETS)
def test_preset_parses_and_names_known_components(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", preset(name), "--print_config"])
    assert exit_info.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    # Names, options and hub ids are valid; stage-1 paths are run outputs, checked when they are used.
    validate.check(cfg["model"], check_files=False)
    if not name.startswith("demo_"):  # paper presets target GPU clusters; the demo runs on 2 CPU cores
        assert cfg["trainer"]["precision"] == "bf16-mixed" and cfg["trainer"]["strategy"] == "ddp"


def test_interpolated_preset_values_resolve_after_every_override(capsys, tmp_path):
    from bridgebench.__main__ import main

    def data(*args: str) -> dict:
        with pytest.raises(SystemExit):
            run(["fit", "--config", preset("blap_stage2"), *args, "--print_config"])
        return yaml.safe_load(capsys.readouterr().out)["data"]

    text = open(preset("blap_stage2")).read()
    assert "eval_batch_size: ${data.batch_size}" in text and "clip_seconds: ${model.encoder.clap.clip_seconds}" in text
    resolved = data()
    assert resolved["batch_size"] == resolved["eval_batch_size"] == 50 and resolved["clip_seconds"] == 10.0
    assert data("--data.batch_size=8")["eval_batch_size"] == 8  # the tie holds after a flag
    overlay = tmp_path / "sweep_overlay.yaml"  # as the sweep writes them: plain YAML
    overlay.write_text(yaml.safe_dump({"data": {"batch_size": 12}, "model": {"encoder": {"clap": {"clip_seconds": 5.0}}}}))
    tied = data("--config", str(overlay))
    assert (tied["eval_batch_size"], tied["clip_seconds"]) == (12, 5.0)
    tiny = data("--config", TINY)  # the tiny override sets both values itself, and wins
    assert (tiny["batch_size"], tiny["eval_batch_size"], tiny["clip_seconds"]) == (4, 4, 2.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  eval_batch_size: ${data.batch_siz}\n")
    assert main(["fit", "--config", preset("blap_stage2"), "--config", str(bad), "--print_config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data.eval_batch_size: cannot resolve ${...}: key "
                                               "'data.batch_siz' not found"), err


@pytest.mark.parametrize("name", PRESETS)
def test_preset_fast_dev_runs_with_tiny_override(name, tmp_path):
    common = ["--config", preset(name), "--config", TINY, f"--trainer.default_root_dir={tmp_path}",
              "--trainer.fast_dev_run=true"]
    fit = run(["fit", *common])
    assert fit.trainer.state.finished and fit.trainer.global_step == 1
    test = run(["test", *common])
    assert test.trainer.state.finished
    assert "test/loss" in test.trainer.callback_metrics
    if test.model.tagger is not None and test.model.stage1 is None:  # encoder tagging
        assert "test/tag_map" in test.trainer.callback_metrics
    elif test.model.llm is None:  # stage 1: retrieval instead of generated text
        assert "test/r1_t2a" in test.trainer.callback_metrics
    else:
        rows = open(tmp_path / "predictions.jsonl").read().splitlines()
        assert len(rows) == 4  # one fast-dev-run batch of the tiny override


@pytest.mark.java  # the one end-to-end run that scores with METEOR and the PTB tokenizer (when Java is here)
def test_make_exp_tiny_fits_then_tests_from_the_last_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run(
        ["make", "--no-print-directory", "exp", "NAME=musilingo_stage1", "TINY=1", f"RUNS={tmp_path}",
         f"PY={sys.executable}", "VENV=" + os.path.dirname(os.path.dirname(sys.executable)),
         "ARGS=--trainer.max_steps=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "musilingo_stage1-tiny"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "predictions.jsonl").exists()
    # Each command kept its own metrics and config: the fit's training curve survives the test.
    assert (run_dir / "logs" / "01-fit" / "metrics.csv").exists() and (run_dir / "logs" / "02-test" / "metrics.csv").exists()
    assert "train/loss" in (run_dir / "logs" / "01-fit" / "metrics.csv").read_text()
    fit_config = yaml.safe_load((run_dir / "logs" / "01-fit" / "config.yaml").read_text())
    test_config = yaml.safe_load((run_dir / "logs" / "02-test" / "config.yaml").read_text())
    assert fit_config["ckpt_path"] is None and test_config["ckpt_path"].endswith("last.ckpt")
    assert "Restoring states from the checkpoint path" in out.stdout + out.stderr
    assert "encoder  mert" in out.stdout + out.stderr  # the frozen/trained report
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if find_java()[0] is not None:
        assert isinstance(metrics["test/meteor"], float) and metrics["test/tokenizer"] == "ptb", metrics
    else:
        assert metrics["test/meteor"].startswith("unavailable: ")
