"""Benchmark: stage-2 training steps at the papers' sizes, bridgebench vs a hand-wired transformers step.

For each of blap_stage2, mint_stage2 and musilingo_stage2 this builds the preset's model with random
weights at paper size (configs written here, nothing downloaded; tokenizers are the local tiny ones,
whose ids fit every vocabulary) and, in the same process and from the same frozen weights, a plain
hand-wired step written the way the reference code does it:

- BLAP/MINT (LAVIS style): frozen encoder and T5 in bf16, trainable parts in fp32 under bf16
  autocast, transformers' ``Blip2QFormerModel`` / ``InstructBlipQFormerModel`` with a query
  parameter, T5 called with ``labels=`` (full-vocabulary logits and loss inside transformers),
  ``torch.optim.AdamW`` with its default (foreach) kernels.
- MusiLingo: MERT and LLaMA in bf16, mean over all hidden states, ``avg_pool1d`` windows, a linear
  layer, the prompt pieces padded to the batch maximum *in the middle* of the sequence, and
  ``labels=`` over every position.

bridgebench's step is ``module.losses(batch)`` + backward + fused AdamW under bf16 autocast (what
Lightning's ``bf16-mixed`` runs), with the speed switches of the preset (frozen bf16 storage,
no_grad encoder, SDPA, LM head on answer positions only, packed sequences) and ``--compile``.
Both see identical batches: random audio of the preset's window, prompt and answer of fixed token
lengths. Reports samples/s, TFLOP/s counted by ``torch.utils.flop_counter.FlopCounterMode`` over
one step, that rate's share of a measured bf16 matmul rate (MFU), and peak memory, as JSON.
``--ablate`` adds issue 24's table (``bench/ablate.py``): the LAVIS/MusiLingo-default step and each
speed switch of ``model.speed`` one row at a time, and micro-batch scaling.

    python bench/gpu.py                      # GPU, paper sizes (< 6 min on one H100)
    python bench/gpu.py --tiny               # CPU check with tiny models (the test suite runs it)
    python bench/gpu.py --presets blap_stage2 --steps 20 --compile --out bench/gpu-h100.json
    python bench/gpu.py --presets --ablate --out bench/gpu-ablate-h200.json        # GPU: the ablation only
    python bench/gpu.py --tiny --presets --ablate --compile-backend aot_eager      # its CPU check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent

# Paper-size shapes per preset: batch, audio seconds, prompt and answer tokens.
SHAPES = {
    "blap_stage2": {"batch": 50, "seconds": 10.0, "prompt": 10, "answer": 64},
    "mint_stage2": {"batch": 50, "seconds": 10.0, "prompt": 10, "answer": 64},
    "musilingo_stage2": {"batch": 8, "seconds": 10.0, "prompt": 10, "answer": 64},
}
TINY_SHAPES = {"batch": 2, "seconds": 2.0, "prompt": 4, "answer": 6}


def paper_configs() -> dict:
    """transformers configs of the papers' components (sizes from anchors.md and the model cards)."""
    from transformers import BertConfig, ClapAudioConfig, Data2VecAudioConfig, HubertConfig, LlamaConfig, T5Config

    return {
        # LAION-CLAP HTS-AT base (BLAP: 1024-d tokens, 32 per 10 s).
        "clap": ClapAudioConfig(patch_embeds_hidden_size=128, depths=[2, 2, 12, 2], num_attention_heads=[4, 8, 16, 32],
                                hidden_size=1024, projection_dim=512, enable_fusion=False),
        "bert": BertConfig(),  # bert-base-uncased
        "t5": T5Config(d_model=2048, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32, d_kv=64,
                       vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                       decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),  # flan-t5-xl
        "data2vec": Data2VecAudioConfig(),  # data2vec-audio-base
        # MERT-v1-330M: HuBERT-large shape, 24 kHz, stable layer norm.
        "mert": HubertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                             do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True),
        "llama": LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                             num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),  # vicuna-7b
    }


TOKENIZER_FAMILY = {"bert": "bert", "t5": "t5", "llama": "llama"}


def write_folders(out: Path, tiny: bool) -> dict:
    """One folder per component: config.json (paper size, or the tiny family's) + a local tokenizer."""
    from bridgebench.runtime.tiny import tiny_checkpoint

    family = {"clap": "clap", "bert": "bert", "t5": "t5", "data2vec": "data2vec", "mert": "mert", "llama": "llama"}
    configs = None if tiny else paper_configs()
    folders = {}
    for name, fam in family.items():
        src = tiny_checkpoint(fam)
        dst = out / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():  # tokenizer files (and, for tiny, the config)
            if not f.name.endswith((".safetensors", ".bin")):
                shutil.copy(f, dst / f.name)
        if configs is not None:
            configs[name].save_pretrained(str(dst))
        folders[name] = str(dst)
    return folders


@contextlib.contextmanager
def random_weights(device: torch.device):
    """``from_pretrained`` builds the model from its folder's config with random weights, directly
    on ``device`` (a 7B model initialises in seconds on a GPU; nothing is read or downloaded)."""
    from transformers import AutoConfig, PreTrainedModel
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    saved = PreTrainedModel.__dict__["from_pretrained"], _BaseAutoModelClass.__dict__["from_pretrained"]

    def concrete(cls, path, *args, config=None, dtype=None, **kwargs):
        config = config or cls.config_class.from_pretrained(path)
        with torch.device(device):
            return cls._from_config(config, dtype=dtype or torch.float32).eval()

    def auto(cls, path, *args, config=None, dtype=None, trust_remote_code=None, **kwargs):
        config = config or AutoConfig.from_pretrained(path)
        with torch.device(device):
            return cls.from_config(config, dtype=dtype or torch.float32).eval()

    PreTrainedModel.from_pretrained = classmethod(concrete)
    _BaseAutoModelClass.from_pretrained = classmethod(auto)
    try:
        yield
    finally:
        PreTrainedModel.from_pretrained, _BaseAutoModelClass.from_pretrained = saved


def build_module(preset: str, folders: dict, device: torch.device, compile_: bool, variant: dict | None = None):
    """The preset's model section with every pretrained reference pointed at ``folders``. ``variant``:
    ``frozen_dtype``, ``gradient_checkpointing``, ``speed`` (``model.speed`` fields) and ``buckets``
    (the LLM's ``length_buckets``)."""
    import yaml

    from bridgebench.specs import BridgeSpec, EncoderSpec, GenerationSpec, LLMSpec, PrecisionSpec, spec_from_dict
    from bridgebench.engine.module import BridgeModule
    from bridgebench.engine.speed import SpeedSpec

    model = yaml.safe_load(open(ROOT / "experiments" / f"{preset}.yaml"))["model"]
    enc, bridge, llm = (spec_from_dict(EncoderSpec, model["encoder"]), spec_from_dict(BridgeSpec, model["bridge"]),
                        spec_from_dict(LLMSpec, model["llm"]))
    getattr(enc, enc.name).pretrained = folders[enc.name]
    getattr(bridge, bridge.name).bert = folders["bert"]
    opts = getattr(llm, llm.name)
    opts.pretrained = folders["t5" if llm.name == "seq2seq" else "llama"]
    if llm.name == "causal":
        opts.gguf_file = None
    dtype = "float32" if device.type == "cpu" else "bfloat16"
    variant = variant or {}
    dtype = variant.get("frozen_dtype", dtype)
    if variant.get("gradient_checkpointing") and bridge.name != "linear_pool":
        getattr(bridge, bridge.name).gradient_checkpointing = True
    opts.length_buckets = variant.get("buckets")
    speed = SpeedSpec(**{"compile": "stacks" if compile_ else "off", **variant.get("speed", {})})
    with random_weights(device), torch.device(device):
        module = BridgeModule(encoder=enc, bridge=bridge, llm=llm, objectives={"lm": 1.0},
                              generation=GenerationSpec(num_beams=1), precision=PrecisionSpec(dtype), speed=speed)
    return module.to(device)


def make_batch(module, shape: dict, device: torch.device) -> dict:
    """Random audio and fixed-length texts: every word of the local tokenizers is one token."""
    b, sr = shape["batch"], module.encoder.sample_rate
    samples = int(shape["seconds"] * sr)
    gen = torch.Generator().manual_seed(0)
    audio = torch.randn(b, samples, generator=gen) * 0.1
    instructions = [" ".join(["music"] * shape["prompt"])] * b
    targets = [" ".join(["sound"] * (shape["answer"] - 1))] * b
    text = module.data_contract().text(instructions, targets)
    return {"audio": audio.to(device), "audio_mask": torch.ones(b, samples, dtype=torch.bool, device=device),
            "text": {k: v.to(device) for k, v in text.items()}, "instruction": instructions, "target": targets}


# --- Hand-wired reference steps ------------------------------------------------------------------


class HandWiredQFormerT5(nn.Module):
    """LAVIS-style Blip2T5 / InstructBLIP-T5 step over the module's frozen encoder and T5."""

    def __init__(self, module, instruct: bool):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel, InstructBlipQFormerConfig, InstructBlipQFormerModel

        self.encoder, self.t5 = module.encoder, module.llm.hf
        bert = module.bridge.qformer.config
        cls_cfg, cls = ((InstructBlipQFormerConfig, InstructBlipQFormerModel) if instruct
                        else (Blip2QFormerConfig, Blip2QFormerModel))
        cfg = cls_cfg(vocab_size=bert.vocab_size, hidden_size=bert.hidden_size, num_hidden_layers=bert.num_hidden_layers,
                      num_attention_heads=bert.num_attention_heads, intermediate_size=bert.intermediate_size,
                      encoder_hidden_size=module.encoder.output_dim, cross_attention_frequency=2)
        self.qformer = cls(cfg)
        n = module.bridge.num_queries
        self.query_tokens = nn.Parameter(torch.randn(1, n, bert.hidden_size) * 0.02)
        self.ln = nn.LayerNorm(module.encoder.output_dim)
        self.proj = nn.Linear(bert.hidden_size, self.t5.config.d_model)
        self.instruct = instruct

    def forward(self, batch: dict) -> torch.Tensor:
        with torch.autocast(batch["audio"].device.type, dtype=torch.bfloat16, enabled=batch["audio"].is_cuda):
            feats, mask = self.encoder(batch["audio"], batch["audio_mask"])  # frozen weights: no graph
            feats = self.ln(feats.float())
            queries = self.query_tokens.expand(feats.shape[0], -1, -1)
            kwargs = dict(query_embeds=queries, encoder_hidden_states=feats, encoder_attention_mask=mask.long())
            if self.instruct:
                text = batch["text"]
                q_mask = torch.ones(queries.shape[:2], dtype=torch.long, device=queries.device)
                out = self.qformer(input_ids=text["bridge_ids"], attention_mask=torch.cat(
                    [q_mask, text["bridge_mask"].long()], 1), **kwargs)
            else:
                out = self.qformer(**kwargs)
            soft = self.proj(out.last_hidden_state[:, : queries.shape[1]])
            text = batch["text"]
            prompt = self.t5.get_input_embeddings()(text["prompt_ids"])
            embeds = torch.cat([soft.to(prompt.dtype), prompt], 1)
            att = torch.cat([torch.ones(soft.shape[:2], dtype=torch.long, device=soft.device), text["prompt_mask"].long()], 1)
            labels = text["target_ids"].masked_fill(~text["target_mask"], -100)
            return self.t5(inputs_embeds=embeds, attention_mask=att, decoder_attention_mask=text["target_mask"].long(),
                           labels=labels).loss


class HandWiredMusiLingo(nn.Module):
    """MusiLingo's step: MERT hidden-state mean, window pooling, linear, LLaMA with mid-sequence padding."""

    def __init__(self, module, window: int):
        super().__init__()
        self.mert, self.llama = module.encoder.model, module.llm.hf
        self.proj = nn.Linear(self.mert.config.hidden_size, self.llama.config.hidden_size)
        self.window = window

    def forward(self, batch: dict) -> torch.Tensor:
        with torch.autocast(batch["audio"].device.type, dtype=torch.bfloat16, enabled=batch["audio"].is_cuda):
            dtype = next(self.mert.parameters()).dtype
            hidden = self.mert(batch["audio"].to(dtype), output_hidden_states=True).hidden_states
            feats = torch.stack(hidden).mean(0).float()  # [B, T, D]
            pooled = F.avg_pool1d(feats.transpose(1, 2), self.window, self.window, ceil_mode=True).transpose(1, 2)
            soft = self.proj(pooled)
            text = batch["text"]
            emb = self.llama.get_input_embeddings()
            pieces = [emb(text["pre_ids"]), soft.to(emb.weight.dtype), emb(text["post_ids"]), emb(text["target_ids"])]
            masks = [text["pre_mask"], torch.ones(soft.shape[:2], dtype=torch.bool, device=soft.device),
                     text["post_mask"], text["target_mask"]]
            embeds, att = torch.cat(pieces, 1), torch.cat(masks, 1).long()
            n_prompt = sum(p.shape[1] for p in pieces[:3])
            labels = torch.cat([torch.full((soft.shape[0], n_prompt), -100, device=soft.device),
                                text["target_ids"].masked_fill(~text["target_mask"], -100)], 1)
            return self.llama(inputs_embeds=embeds, attention_mask=att, labels=labels).loss


def hand_wired(preset: str, module) -> nn.Module:
    if preset == "musilingo_stage2":
        return HandWiredMusiLingo(module, module.bridge.window)
    return HandWiredQFormerT5(module, instruct=module.specs["bridge"].name == "bridgenet")


# --- Measurement -----------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: torch.device, tiny: bool) -> float:
    """Measured dense matmul rate (bf16 on GPU, fp32 on CPU), TFLOP/s."""
    n = 512 if tiny else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 5 if tiny else 50
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def measure(step, params: list, batch_size: int, device: torch.device, steps: int, warmup: int, fused: bool,
            flops: int | None = None, mark_steps: bool = False) -> dict:
    """Samples/s over ``steps`` timed optimiser steps after ``warmup``; FLOPs counted on one step (or
    ``flops``, for a compiled step, whose kernels a FlopCounterMode cannot see). ``mark_steps``: tell
    CUDA graphs (compile mode reduce-overhead) where each step begins. ``first_step_s`` includes any
    compilation."""
    from torch.utils.flop_counter import FlopCounterMode

    opt = torch.optim.AdamW(params, lr=1e-5, fused=fused or None)

    def one():
        if mark_steps:
            torch.compiler.cudagraph_mark_step_begin()
        loss = step()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync(device)
    start = time.perf_counter()
    for i in range(max(warmup, 1)):
        one()
        if i == 0:
            sync(device)
            first = time.perf_counter() - start
    sync(device)
    if flops is None:
        counter = FlopCounterMode(display=False)
        with counter:
            one()
        flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = one()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {"samples_per_s": batch_size / seconds, "step_s": seconds, "first_step_s": first,
            "tflops": flops / seconds / 1e12, "flop_per_step": flops, "loss": float(loss),
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def run_preset(preset: str, folders: dict, device: torch.device, tiny: bool, steps: int, warmup: int,
               compile_: bool, variant: dict | None = None, reference: bool = True) -> dict:
    shape = TINY_SHAPES if tiny else SHAPES[preset]
    torch.manual_seed(0)
    module = build_module(preset, folders, device, compile_, variant)
    module.train()
    batch = make_batch(module, shape, device)
    fused = device.type == "cuda"
    ours_params = [p for p in module.parameters() if p.requires_grad]

    def ours():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return module.losses(batch)["loss"]

    result = {"batch": shape["batch"], "shape": shape, "bridgebench": measure(ours, ours_params, shape["batch"], device,
                                                                              steps, warmup, fused)}
    if not reference:
        return result
    ref = hand_wired(preset, module).to(device)
    ref.train()
    module.train()  # the frozen parts stay in eval mode, as in bridgebench's own step
    ref_params = [p for p in ref.parameters() if p.requires_grad]
    result["hand_wired"] = measure(lambda: ref(batch), ref_params, shape["batch"], device, steps, warmup, fused=False)
    result["speedup"] = result["bridgebench"]["samples_per_s"] / result["hand_wired"]["samples_per_s"]
    del ref, module
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (a check that the script runs)")
    parser.add_argument("--presets", nargs="*", default=list(SHAPES))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; tiny 1)")
    parser.add_argument("--compile", action="store_true", help="bridgebench's compile switch (model.speed.compile: stacks)")
    parser.add_argument("--ablate", action="store_true",
                        help="also the speed-switch table of bench/ablate.py (one switch per row) for --ablate-presets")
    parser.add_argument("--ablate-presets", nargs="*", default=["blap_stage2", "musilingo_stage2"])
    parser.add_argument("--rows", nargs="*", default=None,
                        help="only these rows of the ablation (default: all; a later row still adds the switches of "
                             "the rows before it)")
    parser.add_argument("--batches", type=int, nargs="*", default=None,
                        help="batch sizes of the ablation's batch_scaling row (default 8 16 32 50 100 200; tiny 1 2)")
    parser.add_argument("--fp8-steps", type=int, default=None, help="steps of the fp8 vs bf16 loss check (default 200; tiny 2)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="model.speed.compile_backend of the compiled rows (aot_eager: a quick CPU check)")
    parser.add_argument("--out", default=None, help="JSON output (default bench/results/gpu[-tiny].json)")
    opts = parser.parse_args(argv)
    device = torch.device("cpu" if opts.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not opts.tiny:
        print("error: no GPU; run with --tiny for the CPU check", file=sys.stderr)
        return 2
    steps = opts.steps or (2 if opts.tiny else 10)
    warmup = opts.warmup or (1 if opts.tiny else 3)
    started = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "tiny": opts.tiny, "compile": opts.compile,
              "matmul_tflops": matmul_tflops(device, opts.tiny), "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_folders(Path(tmp), opts.tiny)
        for preset in opts.presets:
            r = run_preset(preset, folders, device, opts.tiny, steps, warmup, opts.compile)
            for side in ("bridgebench", "hand_wired"):
                r[side]["share_of_matmul_rate"] = r[side]["mfu"] = r[side]["tflops"] / report["matmul_tflops"]
            report["presets"][preset] = r
            print(f"{preset}: bridgebench {r['bridgebench']['samples_per_s']:.1f} samples/s "
                  f"({r['bridgebench']['tflops']:.2f} TFLOP/s), hand-wired {r['hand_wired']['samples_per_s']:.1f} "
                  f"samples/s, speedup {r['speedup']:.2f}x", flush=True)
        if opts.ablate:
            from ablate import ablate

            batches = opts.batches or ([1, 2] if opts.tiny else [8, 16, 32, 50, 100, 200])
            report["ablation"] = {
                preset: ablate(preset, folders, device, opts.tiny, steps, warmup, report["matmul_tflops"], batches,
                               opts.fp8_steps or (2 if opts.tiny else 200), opts.compile_backend, opts.rows)
                for preset in opts.ablate_presets}
    report["wall_s"] = time.perf_counter() - started
    out = Path(opts.out or ROOT / "bench" / "results" / f"gpu{'-tiny' if opts.tiny else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
