"""How fast a stage-2 bridge starts to learn: training loss and gradient norms of its first steps.

For issue [3/7]'s question (why the Q-Former rows lag the pool + MLP at the same budget), this
builds a preset's stage-2 module under a sweep's shared overlay (``--sweep``, demo_bridges by
default: batch 16, 20 warm-up steps, its clipping) at one point of its grid (body 3e-4, output layer
1.8e-2 by default; the rate stays flat after the warm-up, since a probe of 40 steps has no cosine to
follow), trains it for ``--steps``
steps on the training split in the seed's data order, and prints per step the loss and the gradient
norm of each learning-rate group before clipping, then the mean loss per window of 10 steps. A few
minutes per variant on 2 cores, against 10-13 for a full 200-step fit and test.

Run:  python bench/stage2_early_loss.py --config experiments/demo_qformer.yaml \\
          --encoder-checkpoint runs/sweeps/_needs/demo_encoder/checkpoints/last.ckpt \\
          --stage1-checkpoint runs/sweeps/_needs/demo_stage1/checkpoints/last.ckpt [--steps 40] \\
          [-- --model.bridge.qformer.standardize_queries=false ...]
Assumes a stage-2 preset of the demo (music-synth, frozen SmolLM2).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import tempfile

import torch
import yaml


def sweep_overlay(sweep: str, lr: float, projection: float) -> tuple[dict, float]:
    """The sweep file's shared overlay without its trainer part (the probe counts its own steps), at
    this body rate and output-layer scale, and the sweep's gradient clipping."""
    with open(sweep) as f:
        overlay = dict(yaml.safe_load(f)["overlay"])
    clip = float(overlay.pop("trainer", {}).get("gradient_clip_val") or 0.0)
    model = dict(overlay.get("model") or {})
    model["optimizer"] = {**(model.get("optimizer") or {}), "lr": lr, "lr_scale": {"projection": projection}}
    return {**overlay, "model": model}, clip


def group_norm(params: list[torch.nn.Parameter]) -> float:
    return sum(float((p.grad.float() ** 2).sum()) for p in params if p.grad is not None) ** 0.5


def epochs(loader):
    """The loader's batches, epoch after epoch (a small training split ends before the probe does)."""
    while True:
        yield from loader


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--encoder-checkpoint", default=None, help="default: none (a pretrained or tiny encoder)")
    parser.add_argument("--stage1-checkpoint", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", default="experiments/sweeps/demo_bridges.yaml",
                        help="the sweep whose shared overlay (budget, schedule, clipping) the probe trains under")
    parser.add_argument("--lr", type=float, default=3e-4, help="the body's rate (a point of the sweep's grid)")
    parser.add_argument("--projection-scale", type=float, default=60.0, help="the output layer's rate / --lr")
    parser.add_argument("--out", default=None, help="write the per-step rows as JSON here")
    opts = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    from bridgebench.engine.lightning_cli import run

    overlay, clip = sweep_overlay(opts.sweep, opts.lr, opts.projection_scale)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(overlay, f)
        f.flush()
        cli = run(["--config", opts.config, "--config", f.name,
                   f"--model.encoder_checkpoint={opts.encoder_checkpoint or 'null'}",
                   f"--model.stage1_checkpoint={opts.stage1_checkpoint or 'null'}", f"--seed_everything={opts.seed}",
                   "--trainer.default_root_dir=runs/probe"] + extra, run=False)
    module, data = cli.model, cli.datamodule
    data.connect(module.data_contract())
    data.setup("fit")
    optim = module.configure_optimizers()  # no trainer: the schedule's length is open, so no cosine decay
    opt, sched = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    groups = {k: v for k, v in module.param_groups().items() if v}
    module.train()
    batches = epochs(data.train_dataloader())
    rows = []
    for step in range(opts.steps):
        loss = module.training_step(next(batches), step)
        opt.zero_grad()
        loss.backward()
        norms = {g: round(group_norm(ps), 4) for g, ps in groups.items()}
        if clip:
            torch.nn.utils.clip_grad_norm_([p for ps in groups.values() for p in ps], clip)
        opt.step()
        sched.step()
        rows.append({"step": step, "loss": round(loss.item(), 4), "grad_norm": norms})
        print(json.dumps(rows[-1]), flush=True)
    windows = {f"{i}-{min(i + 9, opts.steps - 1)}": round(sum(r["loss"] for r in rows[i:i + 10]) / len(rows[i:i + 10]), 3)
               for i in range(0, opts.steps, 10)}
    print("mean loss per window:", json.dumps(windows))
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump({"argv": argv, "rows": rows, "windows": windows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
