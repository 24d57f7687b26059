"""What is frozen and what trains: the freezing policy, the frozen parts' storage dtype, and the
component report the log opens with.

- Frozen parts (the encoder unless ``trainable``, the LLM unless ``mode`` is lora/full) never train:
  ``requires_grad`` off, eval mode whatever Lightning calls (``keep_frozen_in_eval``), the encoder
  under no_grad, stored in ``precision.frozen`` (bf16 where the hardware supports it on ``auto``).
- ``FrozenEvalPrecision`` (a callback the module registers when ``precision.frozen_eval`` differs)
  casts the frozen LLM's weights for validation/test/predict and back for training.
"""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn


def bf16_is_native() -> bool:
    """Whether bf16 matmuls run in hardware where this run computes: a CUDA GPU that supports them,
    or a CPU with AMX tiles or AVX512-BF16 dot products. Elsewhere they are emulated (measured on an
    AVX2 EPYC: a 512x576x576 matmul took 193 ms in bf16 against 4.6 ms in float32, so a demo stage-2
    step went from ~1 s to over a minute). Native: on an AMX Xeon the bf16 step was 1.3x faster than
    float32; on an AVX512-BF16 EPYC a 640x576x1536 matmul took 3.6 ms against 9.5 ms and SmolLM2's
    forward + backward at batch 8 x 80 tokens 2.1 s against 3.4 s."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return any(bool(getattr(torch.cpu, probe, lambda: False)())
               for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if bf16_is_native() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def freeze_encoder(encoder, dtype: torch.dtype) -> None:
    """No gradient for the encoder's backbone (except weights it trains even when frozen, such as
    learned layer weights), stored in ``dtype``."""
    encoder.requires_grad_(False)
    for name in encoder.trainable_when_frozen():
        getattr(encoder, name).requires_grad_(True)
    encoder.model.to(dtype)


def keep_frozen_in_eval(module) -> None:
    """After any ``train()`` call: frozen parts back in eval mode (no dropout, frozen BatchNorm)."""
    if module.encoder.frozen:
        module.encoder.eval()
    if module.llm is not None and module.llm.mode == "frozen":
        module.llm.eval()


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the frozen parameters of ``model`` in place. Buffers (RoPE frequencies) keep the dtype
    from_pretrained gave them, and a LoRA LLM's adapters train in float32 and stay the Parameter
    objects the optimizer holds. Lightning calls evaluation hooks under inference mode; weights cast
    there would be inference tensors, which a later training step cannot save for backward."""
    with torch.inference_mode(False):
        for p in model.parameters():
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(dtype)


class FrozenEvalPrecision(Callback):
    """The frozen LLM (a LoRA LLM's base weights) in ``eval_dtype`` while validating, testing and
    predicting, and in ``train_dtype`` while training (also after a validation inside fit)."""

    def __init__(self, train_dtype: torch.dtype, eval_dtype: torch.dtype):
        self.train_dtype, self.eval_dtype = train_dtype, eval_dtype

    def _cast(self, pl_module, evaluating: bool) -> None:
        cast_frozen(pl_module.llm, self.eval_dtype if evaluating else self.train_dtype)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._cast(pl_module, True)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._cast(pl_module, False)

    def on_test_start(self, trainer, pl_module) -> None:
        self._cast(pl_module, True)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._cast(pl_module, True)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _line(role: str, kind: str, state: str, total: int, trained: int, extra: str = "") -> str:
    return f"{role:8s} {kind:12s} {state:15s} {_human(total):>7s} params, {_human(trained):>7s} trained{extra}"


def component_report(module) -> list[str]:
    """One line per part: kind, frozen or trained, parameter counts, mode, dtype, source."""
    lines = []
    for role in ("encoder", "bridge", "llm"):
        part = getattr(module, role)
        if part is None:
            continue
        spec = module.specs[role]
        total = sum(p.numel() for p in part.parameters())
        trained = sum(p.numel() for p in part.parameters() if p.requires_grad)
        state = "trained" if trained == total else ("frozen" if trained == 0 else "partly trained")
        dtype = str(next(part.parameters()).dtype).removeprefix("torch.")
        options = getattr(spec, spec.name)
        source = getattr(options, "pretrained", None) or getattr(options, "bert", "")
        lines.append(_line(role, spec.name, state, total, trained,
                           f"  [{'train' if part.training else 'eval'}, {dtype}]  {source}"))
    for heads, kind, note in ((module.stage1, "+".join(getattr(module.stage1, "objectives", ())), ""),
                              (module.tagger, "tag", f"  ({len(module.tagger.vocabulary)} tags)"
                               if module.tagger is not None else "")):
        if heads is not None:
            n = sum(p.numel() for p in heads.parameters())
            lines.append(_line("heads", kind, "trained", n, n, note))
    total = sum(p.numel() for p in module.parameters())
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    lines.append(_line("total", "", "", total, trained))
    return lines


def eval_precision_callback(module) -> Optional[FrozenEvalPrecision]:
    """The callback for ``precision.frozen_eval``, when it applies to this module."""
    if module.eval_frozen_dtype is None or module.llm is None or module.llm.mode == "full":
        return None
    return FrozenEvalPrecision(module.frozen_dtype, module.eval_frozen_dtype)
