"""The speed switches (``model.speed``, ``llm.<kind>.length_buckets``) change how a step computes,
never what: the loss of a training step, and of the step after its update, is the loss without the
switch, and regional compilation traces one block per stack whatever the depth.

The default suite compiles with the ``aot_eager`` backend (dynamo + AOTAutograd's forward and
backward graphs, no kernels: seconds on a CPU); the ``inductor`` kernels are checked by the slow
test, since a cold inductor compile of even the tiny model takes a minute or more on 2 CPU cores
(``bench/compile_time.py``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import tiny_batch, tiny_specs

from bridgebench.engine.speed import SpeedSpec

# aot_eager runs the same ATen ops as eager in the same order, so the loss agrees to float32
# rounding (measured: identical losses, gradients within 3e-6); inductor fuses and reorders
# reductions, so its tolerance is wider.
RTOL = {"aot_eager": 1e-5, "eager": 1e-6, "inductor": 1e-4}


def build(llm: str = "seq2seq", speed: SpeedSpec = SpeedSpec(), buckets=None, pretrained: str = "tiny"):
    from bridgebench.engine.module import BridgeModule

    specs = tiny_specs(encoder="mert", bridge="qformer", llm=llm)
    specs["bridge"].qformer.dropout = 0.0  # no random numbers in the step: compiled RNG differs from eager
    opts = getattr(specs["llm"], llm)
    opts.length_buckets = buckets
    opts.pretrained = pretrained
    torch.manual_seed(0)
    return BridgeModule(**specs, speed=speed)


def two_steps(module, batch) -> tuple[float, float]:
    """The loss of a training step, then (after its AdamW update) the loss of the next one."""
    module.train()
    opt = module.configure_optimizers()["optimizer"]
    first = module.losses(batch)["loss"]
    first.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    second = module.losses(batch)["loss"]
    return first.item(), second.item()


@pytest.fixture(scope="module")
def reference():
    plain = build()
    batch = tiny_batch(plain)
    return batch, two_steps(plain, batch)


@pytest.mark.parametrize("switch", ["stacks", "regional", "length_buckets", "fused_adamw"])
def test_each_switch_keeps_the_loss_of_a_training_step(switch, reference):
    batch, expected = reference
    if switch in ("stacks", "regional"):
        module, rtol = build(speed=SpeedSpec(compile=switch, compile_backend="aot_eager")), RTOL["aot_eager"]
    elif switch == "fused_adamw":
        module, rtol = build(speed=SpeedSpec(fused_adamw=True)), 1e-6  # fused and foreach round differently
        assert module.configure_optimizers()["optimizer"].defaults["fused"] is True
    else:
        module, rtol = build(buckets=[16, 32]), 1e-6  # padding is masked out: equal up to rounding
        bucketed = module.data_contract().text(batch["instruction"], batch["target"])
        assert bucketed["prompt_ids"].shape[1] in (16, 32) and bucketed["target_ids"].shape[1] in (16, 32)
        assert bucketed["target_ids"].shape[1] > batch["text"]["target_ids"].shape[1]  # it did pad
        batch = {**batch, "text": {**batch["text"], **bucketed}}
    assert two_steps(module, batch) == pytest.approx(expected, rel=rtol)
    assert list(module.state_dict()) == list(build().state_dict())  # checkpoints are the same


def test_fused_adamw_default_is_fused_only_on_gpus():
    from bridgebench.engine.speed import adamw_fused

    cpu = [torch.zeros(2, requires_grad=True)]
    assert adamw_fused(cpu, None) is None  # foreach on a CPU, as before the switch existed
    assert adamw_fused(cpu, True) is True and adamw_fused(cpu, False) is None


def _graphs_of_one_step(module, batch) -> int:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    module.train()
    module.losses(batch)["loss"].backward()
    assert not counters["graph_break"], dict(counters["graph_break"])
    return counters["stats"]["unique_graphs"]


def test_regional_compile_traces_one_block_per_stack_whatever_the_depth(tmp_path):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from bridgebench.runtime.tiny import tiny_checkpoint

    speed = SpeedSpec(compile="regional", compile_backend="eager")
    # Decoder-only: the LLaMA body's layers are one compiled graph, plus the bridge's.
    causal = build("causal", speed)
    assert _graphs_of_one_step(causal, tiny_batch(causal)) == 2
    # T5: block 0 of each stack owns the relative-position bias and the later blocks receive it, so
    # two graphs per stack; a stack twice as deep traces no more.
    deep = tmp_path / "t5-4-layers"
    config = AutoConfig.from_pretrained(tiny_checkpoint("t5"), num_layers=4, num_decoder_layers=4)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(deep)
    for f in tiny_checkpoint("t5").iterdir():
        if not (deep / f.name).exists():
            (deep / f.name).write_bytes(f.read_bytes())
    counts = {}
    for layers, pretrained in ((2, "tiny"), (4, str(deep))):
        module = build("seq2seq", speed, pretrained=pretrained)
        assert len(module.llm.hf.encoder.block) == layers
        counts[layers] = _graphs_of_one_step(module, tiny_batch(module))
    assert counts == {2: 5, 4: 5}  # the bridge + 2 + 2
    stacks = build("seq2seq", dataclasses.replace(speed, compile="stacks"))
    assert _graphs_of_one_step(stacks, tiny_batch(stacks)) == 3  # the bridge + one graph per whole stack


def test_length_buckets_pad_to_the_next_bucket_and_bad_buckets_are_one_line():
    from bridgebench.engine import validate
    from bridgebench.llms.base import bucket_width, pad_right

    assert [bucket_width(n, [16, 32, 64]) for n in (1, 16, 17, 64, 65, 130)] == [16, 16, 32, 64, 128, 192]
    assert bucket_width(7, None) == 7
    ids, mask = pad_right([[5, 6, 7], [8]], 0, [4, 8])
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]] and mask.sum().item() == 4
    model = {"llm": {"name": "causal", "causal": {"pretrained": "tiny", "length_buckets": [16, 0]}}}
    assert validate.problems(model, check_files=False) == [
        "model.llm.causal.length_buckets: [16, 0]; give positive whole token counts, e.g. [16, 32, 64, 128], or null"]


def test_speed_options_are_checked_in_the_one_validation_pass():
    from bridgebench.engine import validate

    found = validate.problems({"llm": {"seq2seq": {"pretrained": "tiny"}},
                               "speed": {"compile": "everything", "compile_mode": "fast", "fp8": True}},
                              check_files=False)
    assert found[0].startswith("model.speed.compile: unknown value 'everything'; choose one of: off, stacks, regional")
    assert found[1].startswith("model.speed.compile_mode: unknown value 'fast'")
    if not torch.cuda.is_available():
        assert found[2].startswith("model.speed.fp8 needs torchao and a GPU with FP8 (sm_89+)") and len(found) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without FP8")
def test_fp8_without_torchao_or_an_fp8_gpu_is_one_error_line(capsys, tmp_path):
    from bridgebench.__main__ import main
    from test_presets import TINY, preset

    code = main(["fit", "--config", preset("blap_stage2"), "--config", TINY, "--model.speed.fp8=true",
                 f"--trainer.default_root_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.speed.fp8 needs torchao and a GPU with FP8 (sm_89+)" in err[0], err


def test_help_documents_the_speed_options(capsys):
    from bridgebench.engine.lightning_cli import run

    with pytest.raises(SystemExit):
        run(["fit", "--help"])
    out = capsys.readouterr().out
    for key in ("--model.speed.compile", "--model.speed.compile_mode", "--model.speed.fp8",
                "--model.speed.fused_adamw", "--model.llm.seq2seq.length_buckets"):
        assert key in out, key
    assert "regional" in out and "sm_89" in out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stacks", "regional"])
def test_inductor_compile_keeps_the_loss(mode, reference):
    batch, expected = reference
    module = build(speed=SpeedSpec(compile=mode))
    assert two_steps(module, batch) == pytest.approx(expected, rel=RTOL["inductor"])
