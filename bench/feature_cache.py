"""Benchmark: training steps with cached frozen features vs on-the-fly encoding.

Builds a preset (default: blap_stage2 with the tiny override), fills its feature cache, then times
the same number of optimiser steps, data loading included, in both modes, and checks that a fixed
batch gives the same loss both ways. Prints a JSON line and writes it to ``bench/results/``.

    python bench/feature_cache.py [--preset blap_stage2] [--steps 20] [--full]   (``--full``: no tiny override)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch


def build(preset: str, tiny: bool, root: str):
    from bridgebench.engine.lightning_cli import BridgeCLI
    from bridgebench.runtime.env import quiet_libraries
    from bridgebench.datamodules import AudioTextDataModule
    from bridgebench.engine.module import BridgeModule

    quiet_libraries()
    args = ["--config", f"experiments/{preset}.yaml"] + (["--config", "experiments/tiny.yaml"] if tiny else [])
    args += [f"--trainer.default_root_dir={root}", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    return BridgeCLI(BridgeModule, AudioTextDataModule, run=False, args=args, auto_configure_optimizers=False,
                     save_config_callback=None)


def cycle(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def timed_steps(module, loader, steps: int) -> float:
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    module.train()
    it = cycle(loader)
    next(it)  # warm-up: first batch (file handles, lazy init) is not timed
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
        loss = module.losses(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def compare(cli, steps: int) -> tuple[dict, dict]:
    """Fill the train split's cache, then time ``steps`` steps per mode ({mode: seconds per step}) and
    the loss of one identical batch per mode ({mode: loss})."""
    from bridgebench.engine.feature_cache import fill_cache

    module, dm = cli.model, cli.datamodule
    fill_cache(module, dm, roles=("train",))
    results = {}
    for mode in ("audio", "cached"):
        dm.features, dm.train_crop = mode, "start"
        dm.connect(module.data_contract())
        results[mode] = timed_steps(module, dm._loader("train", shuffle=False), steps)
    # Same batch, both ways: the cached features must give the on-the-fly loss.
    module.eval()
    losses = {}
    with torch.no_grad():
        for mode in ("audio", "cached"):
            dm.features = mode
            random.seed(0)  # the same drawn captions and instructions in both batches
            losses[mode] = module.losses(next(iter(dm._loader("train", shuffle=False))))["loss"].item()
    return results, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="blap_stage2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--full", action="store_true", help="use the preset's real components")
    parser.add_argument("--out", default="bench/results/feature_cache.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    cli = build(args.preset, not args.full, "runs/bench-feature-cache")
    dm = cli.datamodule
    results, losses = compare(cli, args.steps)
    report = {
        "preset": args.preset, "tiny": not args.full, "steps": args.steps, "batch_size": dm.batch_size,
        "seconds_per_step_on_the_fly": round(results["audio"], 5),
        "seconds_per_step_cached": round(results["cached"], 5),
        "speedup": round(results["audio"] / results["cached"], 2),
        "loss_on_the_fly": losses["audio"], "loss_cached": losses["cached"],
        "loss_abs_diff": abs(losses["audio"] - losses["cached"]),
        "torch_threads": torch.get_num_threads(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
