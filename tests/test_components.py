"""Swapping components by one YAML entry, and one-line errors for bad configs."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import yaml

from bridgebench.engine import registry
from bridgebench.__main__ import main
from bridgebench.engine.lightning_cli import run

ENCODER_KINDS, BRIDGE_KINDS, LLM_KINDS = tuple(registry.ENCODERS), tuple(registry.BRIDGES), (*registry.LLMS, "none")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "experiments", "blap_stage2.yaml")
TINY = os.path.join(ROOT, "experiments", "tiny.yaml")


def test_registry_tables_cover_every_kind():
    assert set(registry.ENCODERS) == set(ENCODER_KINDS)
    assert set(registry.BRIDGES) == set(BRIDGE_KINDS)
    assert set(registry.LLMS) == set(LLM_KINDS) - {"none"}  # none: stage 1 without a language model


@pytest.mark.parametrize("encoder,bridge,llm", list(itertools.product(ENCODER_KINDS, BRIDGE_KINDS, ("seq2seq", "causal"))))
def test_every_combination_builds_and_trains_one_step(encoder, bridge, llm, tmp_path):
    # The override names the three kinds and nothing else: one entry per component.
    override = tmp_path / "swap.yaml"
    override.write_text(yaml.safe_dump(
        {"model": {"encoder": {"name": encoder}, "bridge": {"name": bridge}, "llm": {"name": llm}}}))
    cli = run(["fit", "--config", PRESET, "--config", TINY, "--config", str(override),
               f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=true"])
    module = cli.model
    assert cli.trainer.global_step == 1
    assert module.specs["encoder"].name == encoder and module.specs["bridge"].name == bridge
    assert module.specs["llm"].name == llm
    assert module.bridge.proj.in_features == (module.encoder.output_dim if bridge == "linear_pool"
                                              else module.bridge.hidden_size)
    assert module.bridge.proj.out_features == module.llm.hidden_size


@pytest.mark.parametrize("line,replacement", [
    ("    name: clap\n", "    name: mert\n"),
    ("    name: qformer\n", "    name: linear_pool\n"),
    ("    name: seq2seq\n", "    name: causal\n"),
])
def test_editing_one_line_of_a_preset_swaps_one_component(line, replacement, tmp_path):
    text = open(PRESET).read()
    assert text.count(line) == 1
    edited = tmp_path / "edited.yaml"
    edited.write_text(text.replace(line, replacement))
    cli = run(["fit", "--config", str(edited), "--config", TINY, f"--trainer.default_root_dir={tmp_path}",
               "--trainer.fast_dev_run=true"])
    names = {role: cli.model.specs[role].name for role in ("encoder", "bridge", "llm")}
    assert replacement.split(":")[1].strip() in names.values()
    assert cli.trainer.global_step == 1


@pytest.mark.parametrize("flag,expected", [
    ("--model.bridge.name=qformr", "error: model.bridge.name: unknown name 'qformr'; choose one of: qformer, bridgenet, linear_pool"),
    ("--model.encoder.name=wav2vec", "error: model.encoder.name: unknown name 'wav2vec'; choose one of: clap, mert, data2vec, cnn"),
    ("--model.llm.name=gpt", "error: model.llm.name: unknown name 'gpt'; choose one of: seq2seq, causal, none"),
    ("--model.llm.seq2seq.pretrained=./missing/flan-t5", "error: model.llm.seq2seq.pretrained: checkpoint path './missing/flan-t5' does not exist; fix the path or use a hub id"),
    ("--model.encoder.clap.pretrained=/nowhere/music_audioset.pt", "error: model.encoder.clap.pretrained: checkpoint path '/nowhere/music_audioset.pt' does not exist; fix the path or use a hub id"),
    ("--model.stage1_checkpoint=runs/none/last.ckpt", "error: model.stage1_checkpoint: 'runs/none/last.ckpt' does not exist; run the stage-1 preset first or fix the path"),
    ("--model.bridge.qformer.num_queries=0", "error: model.bridge.qformer.num_queries: 0; it must be >= 1"),
])
def test_bad_config_fails_with_one_line_before_anything_is_built(flag, expected, monkeypatch, capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("a component was built before the config was validated")

    for name in ("build_encoder", "build_bridge", "build_llm"):
        monkeypatch.setattr(f"bridgebench.engine.module.{name}", forbidden)
    code = main(["fit", "--config", PRESET, "--config", TINY, flag])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [expected]


def test_bad_config_from_the_command_line_prints_one_line():
    out = subprocess.run([sys.executable, "-m", "bridgebench", "fit", "--config", PRESET, "--config", TINY,
                          "--model.bridge.name=qformr"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: model.bridge.name: unknown name 'qformr'; choose one of: qformer, bridgenet, linear_pool"]
