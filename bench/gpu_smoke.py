"""GPU smoke check of the stage-2 path the presets use on clusters: bf16-mixed, DDP strategy, frozen
modules stored in bf16 (``precision.frozen: auto``), for every LLM kind and a Q-Former and a linear bridge.

Needs no data files or audio libraries (synthetic waveforms), so it runs on a bare GPU image:
    python bench/gpu_smoke.py [--out bench/gpu_smoke.json]
Checks, per combination: frozen weights are bf16 and get no gradient, the bridge trains in fp32 and
its weights change, the loss is finite, generation returns text, and the trainable-only checkpoint
round-trips. Prints JSON (timings per step included).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from bridgebench.specs import (BridgeNetOptions, BridgeSpec, CausalOptions, ClapOptions, EncoderSpec,
                                GenerationSpec, LinearPoolOptions, LLMSpec, MertOptions, QFormerOptions,
                                PrecisionSpec, Seq2SeqOptions)
from bridgebench.datamodules.contract import TextProcessor
from bridgebench.engine.module import BridgeModule


class Synthetic(Dataset):
    def __init__(self, module: BridgeModule, n: int = 32):
        self.n, self.sr = n, module.encoder.sample_rate
        # The contract's text processor, built directly (data_contract() would also key the
        # feature cache, which imports the audio libraries this bare GPU image lacks).
        self.text = TextProcessor(module.llm.text_processor,
                                  module.bridge.text_processor if module.bridge.uses_instruction else None)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(self.sr * 2, generator=g) * 0.1

    def collate(self, items):
        audio = torch.stack(items)
        n = len(items)
        return {"id": [str(i) for i in range(n)], "audio": audio, "audio_mask": torch.ones_like(audio, dtype=torch.bool),
                "instruction": ["Describe the music."] * n, "target": ["a slow piano piece"] * n,
                "references": [["a slow piano piece"]] * n, "labels": [{}] * n, "skipped": [],
                "text": self.text(["Describe the music."] * n, ["a slow piano piece"] * n)}


def check(encoder: str, bridge: str, llm: str, steps: int, accelerator: str, precision: str) -> dict:
    module = BridgeModule(
        encoder=EncoderSpec(name=encoder, clap=ClapOptions(pretrained="tiny"), mert=MertOptions(pretrained="tiny")),
        bridge=BridgeSpec(name=bridge, qformer=QFormerOptions(bert="tiny", num_queries=8),
                          bridgenet=BridgeNetOptions(bert="tiny", num_queries=8), linear_pool=LinearPoolOptions(window=8)),
        llm=LLMSpec(name=llm, seq2seq=Seq2SeqOptions(pretrained="tiny"), causal=CausalOptions(pretrained="tiny")),
        generation=GenerationSpec(num_beams=2, max_new_tokens=8), precision=PrecisionSpec("auto"))
    data = Synthetic(module)
    loader = DataLoader(data, batch_size=8, collate_fn=data.collate)
    before = {k: v.detach().clone() for k, v in module.bridge.state_dict().items()}
    root = tempfile.mkdtemp()
    trainer = L.Trainer(accelerator=accelerator, devices=1, strategy="ddp" if accelerator == "gpu" else "auto",
                        precision=precision, max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    frozen = [p for n, p in module.named_parameters() if n.startswith(("encoder.model", "llm."))]
    out = {
        "combination": f"{encoder}+{bridge}+{llm}",
        "frozen_dtypes": sorted({str(p.dtype) for p in frozen}),
        "frozen_have_grad": any(p.grad is not None for p in frozen),
        "bridge_dtype": str(next(module.bridge.parameters()).dtype),
        "bridge_changed": any(not torch.equal(before[k].cpu(), v.cpu()) for k, v in module.bridge.state_dict().items()
                              if v.is_floating_point()),
        "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        "seconds_per_step": round(seconds / steps, 4),
    }
    module.eval()
    batch = next(iter(loader))
    batch = {k: (v.to(module.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    batch["text"] = {k: v.to(module.device) for k, v in batch["text"].items()}
    with torch.autocast(module.device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
        texts = module.generate(batch)
    out["generated"] = texts[:2]
    path = os.path.join(root, "ckpt.ckpt")
    trainer.save_checkpoint(path)
    keys = set(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    out["checkpoint_trainable_only"] = keys == module.trainable_state_keys()
    out["ok"] = (out["frozen_dtypes"] == (["torch.bfloat16"] if accelerator == "gpu" else ["torch.float32"])
                 and not out["frozen_have_grad"] and out["bridge_dtype"] == "torch.float32" and out["bridge_changed"]
                 and out["final_loss"] == out["final_loss"] and out["checkpoint_trainable_only"]
                 and all(isinstance(t, str) for t in texts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="bench/gpu_smoke.json")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    accelerator, precision = ("gpu", "bf16-mixed") if gpu else ("cpu", "32-true")
    results = [check(enc, br, lm, args.steps, accelerator, precision)
               for enc, br, lm in (("clap", "qformer", "seq2seq"), ("mert", "bridgenet", "causal"),
                               ("mert", "linear_pool", "causal"))]
    report = {"device": torch.cuda.get_device_name(0) if gpu else "cpu", "torch": torch.__version__,
              "precision": precision, "results": results, "all_ok": all(r["ok"] for r in results)}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
