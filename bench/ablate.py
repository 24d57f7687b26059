"""``bench/gpu.py --ablate``: issue 24's ablation table, one switch per row, for each preset named.

Rows, all on the same random weights' shapes and the same batch:

- ``hand_wired_bf16``: the hand-wired transformers step of ``bench/gpu.py`` (frozen parts stored in
  bf16, trainable parts fp32 under bf16 autocast, foreach AdamW). The published BLIP-2 T5 code
  (LAVIS ``Blip2T5``) casts its frozen T5 to bf16, so for BLAP/MINT this is the fairer baseline.
- ``lavis_default`` (``musilingo_default`` for MusiLingo): the same step with fp32 frozen weights
  under bf16 autocast and the encoder run every step, as MusiLingo's code keeps them.
- ``bridgebench``: our step with frozen bf16 storage, foreach AdamW and no other switch; then each
  ``+`` row adds one switch to the row before it (a row that fails or is unavailable is recorded
  and its switch left out of the later rows): ``+cached_features`` (stage 2 never runs the frozen
  encoder), ``+regional_compile``, ``+max_autotune``, ``+reduce_overhead_buckets`` (CUDA graphs,
  text padded to length buckets), ``+fp8`` (with the loss difference against bf16 over
  ``--fp8-steps`` steps), ``+fused_adamw``.
- ``batch_scaling``: samples/s at each of ``--batches`` for the last chained step and the default
  one; out-of-memory is reported as such.

Each row reports samples/s, TFLOP/s and MFU (its share of the measured bf16 matmul rate; FLOPs of a
compiled step are those counted on the same step uncompiled), peak memory, the first step's time
(compilation included) and its speed-up against both reference rows.
"""

from __future__ import annotations

import copy

import torch

from gpu import SHAPES, TINY_SHAPES, build_module, hand_wired, make_batch, measure

CHAIN = [
    ("bridgebench", {"speed": {"fused_adamw": False}}),
    ("+cached_features", {"cached": True}),
    ("+regional_compile", {"speed": {"compile": "regional"}}),
    ("+max_autotune", {"speed": {"compile_mode": "max-autotune-no-cudagraphs"}}),
    ("+reduce_overhead_buckets", {"speed": {"compile_mode": "reduce-overhead"}, "buckets": [16, 32, 64, 128]}),
    ("+fp8", {"speed": {"fp8": True}}),
    ("+fused_adamw", {"speed": {"fused_adamw": True}}),
]


def merged(variant: dict, change: dict) -> dict:
    out = copy.deepcopy(variant)
    for key, value in change.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def default_name(preset: str) -> str:
    return "musilingo_default" if preset.startswith("musilingo") else "lavis_default"


def _free(device: torch.device) -> None:
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _guarded(run, device: torch.device) -> dict:
    """``run()``'s row, or what stopped it: out of memory, an unavailable switch, an error."""
    from bridgebench.errors import ConfigProblems

    try:
        return run()
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    except ConfigProblems as err:
        return {"skipped": str(err).strip()}
    except Exception as err:  # noqa: BLE001 - a row that breaks is reported, the others still run
        return {"error": f"{type(err).__name__}: {str(err).strip()[:400]}"}
    finally:
        _free(device)


def hand_wired_row(preset, folders, device, shape, steps, warmup, frozen_dtype=None) -> dict:
    variant = {"frozen_dtype": frozen_dtype} if frozen_dtype else {}
    torch.manual_seed(0)
    module = build_module(preset, folders, device, False, variant).train()
    batch = make_batch(module, shape, device)
    ref = hand_wired(preset, module).to(device).train()
    module.train()
    params = [p for p in ref.parameters() if p.requires_grad]
    return measure(lambda: ref(batch), params, shape["batch"], device, steps, warmup, fused=False)


def ours_step(preset, folders, device, shape, variant, backend):
    """(module, batch, step, params, fused) of bridgebench's step under ``variant``."""
    from bridgebench.engine.speed import adamw_fused

    speed = {**variant.get("speed", {})}
    if speed.get("compile", "off") != "off":
        speed["compile_backend"] = backend
    torch.manual_seed(0)
    module = build_module(preset, folders, device, False, {**variant, "speed": speed}).train()
    batch = make_batch(module, shape, device)
    if variant.get("cached"):
        with torch.no_grad():
            feats, mask = module.encoder(batch["audio"], batch["audio_mask"])
        batch = {**batch, "features": feats, "feature_mask": mask}
    params = [p for p in module.parameters() if p.requires_grad]

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return module.losses(batch)["loss"]

    return module, batch, step, params, adamw_fused(params, speed.get("fused_adamw"))


def ours_row(preset, folders, device, shape, steps, warmup, variant, backend, flops=None) -> dict:
    _, _, step, params, fused = ours_step(preset, folders, device, shape, variant, backend)
    compiled = variant.get("speed", {}).get("compile", "off") != "off"
    mark = variant.get("speed", {}).get("compile_mode") == "reduce-overhead"
    return measure(step, params, shape["batch"], device, steps, warmup, fused, flops=flops if compiled else None,
                   mark_steps=mark)


def fp8_drift(preset, folders, device, shape, variant, n: int) -> dict:
    """Losses of ``n`` eager training steps with and without fp8 from the same weights and batch."""
    losses = {}
    for name, fp8 in (("bf16", False), ("fp8", True)):
        plain = merged(variant, {"speed": {"fp8": fp8, "compile": "off"}})
        _, _, step, params, fused = ours_step(preset, folders, device, shape, plain, "inductor")
        opt = torch.optim.AdamW(params, lr=1e-5, fused=fused)
        losses[name] = []
        for _ in range(n):
            loss = step()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[name].append(float(loss))
        _free(device)
    diffs = [abs(a - b) for a, b in zip(losses["bf16"], losses["fp8"])]
    return {"steps": n, "mean_abs_loss_diff": sum(diffs) / n, "max_abs_loss_diff": max(diffs),
            "final_loss_bf16": losses["bf16"][-1], "final_loss_fp8": losses["fp8"][-1]}


def ablate(preset: str, folders: dict, device: torch.device, tiny: bool, steps: int, warmup: int, matmul: float,
           batches: list[int], fp8_steps: int, backend: str, rows: list[str] | None = None) -> dict:
    shape = TINY_SHAPES if tiny else SHAPES[preset]
    table: dict[str, dict] = {}

    def report(name: str, row: dict) -> None:
        if "tflops" in row:
            row["mfu"] = row["tflops"] / matmul
            for ref in ("hand_wired_bf16", default_name(preset)):
                if "samples_per_s" in table.get(ref, {}):
                    row[f"speedup_vs_{ref}"] = row["samples_per_s"] / table[ref]["samples_per_s"]
        table[name] = row
        said = (f"{row['samples_per_s']:.1f} samples/s, MFU {row['mfu']:.1%}, first step {row['first_step_s']:.1f} s"
                if "samples_per_s" in row else row.get("error") or row.get("skipped"))
        print(f"{preset} {name}: {said}", flush=True)

    wanted = (lambda name: rows is None or name in rows)
    if wanted("hand_wired_bf16"):
        report("hand_wired_bf16", _guarded(lambda: hand_wired_row(preset, folders, device, shape, steps, warmup), device))
    lavis = default_name(preset)
    if wanted(lavis):
        report(lavis, _guarded(lambda: hand_wired_row(preset, folders, device, shape, steps, warmup, "float32"), device))
    variant: dict = {}
    flops = None  # of the last uncompiled row: a compiled step does the same arithmetic
    for name, change in CHAIN:
        trial = merged(variant, change)
        if not wanted(name):
            variant = trial
            continue
        row = _guarded(lambda: ours_row(preset, folders, device, shape, steps, warmup, trial, backend, flops), device)
        if name == "+fp8" and "samples_per_s" in row:
            row["loss_vs_bf16"] = _guarded(lambda: fp8_drift(preset, folders, device, shape, trial, fp8_steps), device)
        report(name, row)
        if "samples_per_s" in row:
            variant = trial
            if trial.get("speed", {}).get("compile", "off") == "off":
                flops = row["flop_per_step"]
    if wanted("batch_scaling"):
        scaling: dict[str, dict] = {}
        per_sample = flops / shape["batch"] if flops else None
        for b in batches:
            sized = {**shape, "batch": b}
            ours = _guarded(lambda: ours_row(preset, folders, device, sized, steps, warmup, variant, backend,
                                             int(per_sample * b) if per_sample else None), device)
            default = _guarded(lambda: hand_wired_row(preset, folders, device, sized, steps, warmup, "float32"), device)
            scaling[str(b)] = {"bridgebench": ours, lavis: default}
            print(f"{preset} batch {b}: ours {ours.get('samples_per_s', ours.get('error'))}, "
                  f"{lavis} {default.get('samples_per_s', default.get('error'))}", flush=True)
        table["batch_scaling"] = {"variant": variant, "batches": scaling}
    return table
