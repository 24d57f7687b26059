"""Soak: a long tiny run on the CPU, watching resident memory for leaks.

Trains a tiny preset for ``--steps`` steps (default 2,000) and samples the process's resident set
size every 50 steps; prints the growth from the end of warm-up (``--warmup`` steps) to the end, in
percent. A leak (predictions, graphs or batches kept alive per step) shows up as steady growth.

    python bench/soak.py [--preset musilingo_stage1] [--steps 2000] [--warmup 200]
"""

from __future__ import annotations

import argparse
import json
import os

import psutil
from lightning.pytorch.callbacks import Callback


class RssProbe(Callback):
    def __init__(self, every: int = 50):
        self.every, self.samples = every, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self.samples.append((trainer.global_step, psutil.Process(os.getpid()).memory_info().rss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="musilingo_stage1")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--out", default="bench/results/soak.json")
    args = parser.parse_args()

    from bridgebench.engine.lightning_cli import BridgeCLI
    from bridgebench.runtime.env import quiet_libraries
    from bridgebench.datamodules import AudioTextDataModule
    from bridgebench.engine.module import BridgeModule

    quiet_libraries()
    probe = RssProbe()
    cli = BridgeCLI(BridgeModule, AudioTextDataModule, run=False, auto_configure_optimizers=False,
                    save_config_callback=None,
                    args=["--config", f"experiments/{args.preset}.yaml", "--config", "experiments/tiny.yaml",
                          f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0",
                          "--trainer.enable_progress_bar=false", "--trainer.default_root_dir=runs/bench-soak"])
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    warm = next(rss for step, rss in probe.samples if step >= args.warmup)
    final = probe.samples[-1][1]
    report = {"preset": args.preset, "steps": args.steps, "warmup_steps": args.warmup,
              "rss_after_warmup_mb": round(warm / 2**20, 1), "rss_final_mb": round(final / 2**20, 1),
              "growth_after_warmup_pct": round(100.0 * (final - warm) / warm, 2),
              "samples": [(s, round(r / 2**20, 1)) for s, r in probe.samples]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}))


if __name__ == "__main__":
    main()
