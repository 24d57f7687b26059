"""The paper presets hold the values their papers (or, where it is public and differs, their code)
use: each check names its source, so a preset drifting from its paper fails here. Only the YAML is
read; ``test_presets.py`` builds and runs every preset."""

from __future__ import annotations

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def preset(name: str) -> dict:
    with open(os.path.join(ROOT, "experiments", f"{name}.yaml")) as f:
        return yaml.safe_load(f)


def header(name: str) -> str:
    with open(os.path.join(ROOT, "experiments", f"{name}.yaml")) as f:
        return f.read().split("\n\n")[0]


def test_blap_uses_16_query_tokens():
    # blap.txt:63: "we use 16 query tokens each of dimension 768"
    for name in ("blap_stage1", "blap_stage2"):
        assert preset(name)["model"]["bridge"]["qformer"]["num_queries"] == 16, name


def test_blap_stage1_optimiser_is_the_codes_adam_without_weight_decay():
    # BLAP2_Pretrain.py:536-537: torch.optim.Adam(self.parameters(), lr=...): no decay, no schedule
    opt = preset("blap_stage1")["model"]["optimizer"]
    assert opt["weight_decay"] == 0.0 and opt["schedule"] == "constant" and opt["warmup_steps"] == 0
    assert opt["lr"] == 3.0e-5
    assert "Deviations" in header("blap_stage1") and "3e-4" in header("blap_stage1")
