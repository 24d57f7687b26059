"""CPU benchmark suite (``make bench``): four ratios, each measured side by side in one process.

1. Cached frozen features vs on-the-fly encoding: seconds per training step, data loading included
   (``feature_cache.py``'s measurement; the losses of one batch must agree).
2. Framework overhead: bridgebench's training step as Lightning runs it (``trainer.fit`` with the
   preset's logging, checkpointing off) vs a bare PyTorch loop over the same module, loader and
   optimizer. Startup is excluded: both are timed from their ``--skip``-th step on.
3. Batched vs one-by-one generation of the same clips (the outputs must match).
4. Optimizer state vs trainable parameters: AdamW's state bytes after a step, against the
   trainable count (frozen weights must hold none).

Writes ``bench/results.json`` and ``bench/results.md`` (committed: the numbers of this machine).

    python bench/cpu.py [--preset blap_stage2] [--steps 60] [--full]   (``--full``: no tiny override)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feature_cache import build, compare, cycle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class StepTimer:
    """Lightning callback: wall time from the start of step ``skip`` to the end of the last step."""

    def __init__(self, skip: int):
        import lightning as L

        class _CB(L.Callback):
            def on_train_batch_start(cb, trainer, module, batch, batch_idx):
                if trainer.global_step == skip and self.start is None:
                    self.start = time.perf_counter()

            def on_train_batch_end(cb, trainer, module, outputs, batch, batch_idx):
                self.end = time.perf_counter()
                self.steps = trainer.global_step

        self.callback = _CB()
        self.start = self.end = None
        self.steps = 0


def framework_overhead(preset: str, tiny: bool, steps: int, skip: int, repeats: int = 3) -> dict:
    """Per-step seconds: Lightning fit vs a bare loop over the same module/loader/optimizer. Each is
    run ``repeats`` times in the order L, bare, bare, L, ... and the fastest run of each counts, so
    a burst of load from elsewhere on the machine does not decide the ratio."""
    import lightning as L

    cli = build(preset, tiny, "runs/bench-cpu")
    module, dm = cli.model, cli.datamodule
    state = {k: v.clone() for k, v in module.state_dict().items()}
    params = [p for p in module.parameters() if p.requires_grad]

    def lightning_run() -> float:
        module.load_state_dict(state)
        timer = StepTimer(skip)
        trainer = L.Trainer(max_steps=steps, logger=L.pytorch.loggers.CSVLogger("runs/bench-cpu", name="", version=""),
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            log_every_n_steps=cli.trainer.log_every_n_steps, callbacks=[timer.callback],
                            num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu", devices=1,
                            gradient_clip_val=cli.trainer.gradient_clip_val)
        trainer.fit(module, datamodule=dm)
        return (timer.end - timer.start) / (timer.steps - skip)

    def bare_run() -> float:
        module.load_state_dict(state)
        opt = module.configure_optimizers()["optimizer"]
        module.train()
        it = cycle(dm.train_dataloader())
        start = None
        for step in range(steps):
            if step == skip:
                start = time.perf_counter()
            batch = next(it)
            loss = module.losses(batch)["loss"]
            loss.backward()
            if cli.trainer.gradient_clip_val:
                torch.nn.utils.clip_grad_norm_(params, cli.trainer.gradient_clip_val)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / (steps - skip)

    runs = {"lightning": [], "bare": []}
    for r in range(repeats):
        order = ("lightning", "bare") if r % 2 == 0 else ("bare", "lightning")
        for name in order:
            runs[name].append(lightning_run() if name == "lightning" else bare_run())
    lightning, bare = min(runs["lightning"]), min(runs["bare"])
    return {"seconds_per_step_lightning": lightning, "seconds_per_step_bare": bare, "overhead": lightning / bare,
            "runs": runs}


def cached_vs_on_the_fly(preset: str, tiny: bool, steps: int) -> dict:
    seconds, losses = compare(build(preset, tiny, "runs/bench-cpu"), steps)
    return {"seconds_per_step_on_the_fly": seconds["audio"], "seconds_per_step_cached": seconds["cached"],
            "speedup": seconds["audio"] / seconds["cached"], "loss_abs_diff": abs(losses["audio"] - losses["cached"])}


def generation(preset: str, tiny: bool, n: int) -> dict:
    cli = build(preset, tiny, "runs/bench-cpu")
    module, dm = cli.model, cli.datamodule
    dm.connect(module.data_contract())
    dm.eval_batch_size = n
    batch = next(iter(dm.test_dataloader()))
    dm.eval_batch_size = 1
    singles = [b for _, b in zip(range(n), dm.test_dataloader())]
    module.eval()
    with torch.no_grad():
        module.generate(batch)  # warm-up
        start = time.perf_counter()
        batched = module.generate(batch)
        t_batched = time.perf_counter() - start
        start = time.perf_counter()
        single = [text for one in singles for text in module.generate(one)]
        t_single = time.perf_counter() - start
    return {"clips": len(batched), "seconds_batched": t_batched, "seconds_one_by_one": t_single,
            "speedup": t_single / t_batched, "same_outputs": batched == single}


def optimizer_memory(preset: str, tiny: bool) -> dict:
    cli = build(preset, tiny, "runs/bench-cpu")
    module, dm = cli.model, cli.datamodule
    dm.connect(module.data_contract())
    import lightning as L

    module.trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    opt = module.configure_optimizers()["optimizer"]
    module.train()
    module.losses(next(iter(dm.train_dataloader())))["loss"].backward()
    opt.step()
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if torch.is_tensor(t))
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    frozen_with_state = sum(1 for p in module.parameters() if not p.requires_grad and p in opt.state)
    return {"trainable_params": trainable, "total_params": total, "optimizer_state_bytes": state_bytes,
            "state_bytes_per_trainable_param": state_bytes / trainable, "frozen_params_with_state": frozen_with_state}


def markdown(report: dict) -> str:
    c, f, g, m = report["cached"], report["framework"], report["generation"], report["optimizer"]
    return "\n".join([
        f"# CPU benchmarks ({report['preset']}{' + tiny' if report['tiny'] else ''}, {report['machine']})", "",
        "| measurement | value | target |", "|---|---|---|",
        f"| cached-feature step vs on-the-fly step | {c['speedup']:.1f}x faster ({c['seconds_per_step_on_the_fly']*1e3:.0f} "
        f"-> {c['seconds_per_step_cached']*1e3:.0f} ms; loss diff {c['loss_abs_diff']:.1e}) | >= 5x |",
        f"| Lightning step vs bare PyTorch loop | {f['overhead']:.3f}x ({f['seconds_per_step_lightning']*1e3:.1f} vs "
        f"{f['seconds_per_step_bare']*1e3:.1f} ms) | <= 1.15x |",
        f"| batched vs one-by-one generation ({g['clips']} clips) | {g['speedup']:.1f}x faster, same outputs: "
        f"{g['same_outputs']} | |",
        f"| AdamW state | {m['optimizer_state_bytes']/2**20:.2f} MiB = {m['state_bytes_per_trainable_param']:.2f} B per "
        f"trainable parameter ({m['trainable_params']:,} of {m['total_params']:,}); frozen with state: "
        f"{m['frozen_params_with_state']} | 8 B, 0 |", "",
        f"torch {report['torch']}, {report['threads']} threads; {report['wall_s']:.0f} s.", ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="blap_stage2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=5, help="untimed first steps (startup, lazy init)")
    parser.add_argument("--full", action="store_true", help="the preset's real components, no tiny override")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="writes <out>.json and <out>.md")
    opts = parser.parse_args(argv)
    os.chdir(ROOT)
    started = time.perf_counter()
    torch.manual_seed(0)
    tiny = not opts.full
    report = {"preset": opts.preset, "tiny": tiny, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    report["cached"] = cached_vs_on_the_fly(opts.preset, tiny, opts.steps)
    report["framework"] = framework_overhead(opts.preset, tiny, opts.steps + opts.skip, opts.skip)
    report["generation"] = generation(opts.preset, tiny, 8)
    report["optimizer"] = optimizer_memory(opts.preset, tiny)
    report["wall_s"] = time.perf_counter() - started
    Path(opts.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    Path(opts.out + ".md").write_text(markdown(report))
    print(markdown(report))
    ok = report["cached"]["speedup"] >= 5 and report["framework"]["overhead"] <= 1.15
    print("targets met" if ok else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
