"""How fast a stage-2 bridge starts to learn: training loss and gradient norms of its first steps.

For issue [3/7]'s question (why the Q-Former rows lag the pool + MLP at the same budget), this
builds a preset's stage-2 module with the comparison's optimiser settings (demo_bridges' overlay:
batch 16, body 3e-4, output layer 1.8e-2, 20 warm-up steps, clipping at 1.0; the rate stays flat
after the warm-up, since a probe of 40 steps has no cosine to follow), trains it for ``--steps``
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

import torch

OVERLAY = ["--data.batch_size=16", "--data.train_target=first", "--model.optimizer.lr=3e-4",
           "--model.optimizer.lr_scale={projection: 60.0}", "--model.optimizer.min_lr=1e-5",
           "--model.optimizer.warmup_lr=1e-6", "--model.optimizer.warmup_steps=20",
           "--model.optimizer.weight_decay=0.05"]


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
    parser.add_argument("--clip", type=float, default=1.0, help="gradient clipping (total norm), as the sweeps")
    parser.add_argument("--out", default=None, help="write the per-step rows as JSON here")
    opts = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    from bridgebench.engine.lightning_cli import run

    cli = run(["--config", opts.config, f"--model.encoder_checkpoint={opts.encoder_checkpoint or 'null'}",
               f"--model.stage1_checkpoint={opts.stage1_checkpoint or 'null'}", f"--seed_everything={opts.seed}",
               "--trainer.default_root_dir=runs/probe"] + OVERLAY + extra, run=False)
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
        loss = loss["loss"] if isinstance(loss, dict) else loss
        opt.zero_grad()
        loss.backward()
        norms = {g: round(group_norm(ps), 4) for g, ps in groups.items()}
        torch.nn.utils.clip_grad_norm_([p for ps in groups.values() for p in ps], opts.clip)
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
