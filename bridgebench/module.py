"""The LightningModule that assembles encoder -> bridge -> LLM and trains the bridge.

Assumptions, each enforced here:
- Frozen parts (the encoder unless ``trainable``, the LLM unless ``mode`` is lora/full) never
  train: ``requires_grad`` off, kept in eval mode whatever Lightning calls, the encoder under
  no_grad, stored in bf16 where the hardware supports it (``frozen_dtype: auto``).
- The optimiser sees trainable parameters only; checkpoints hold trainable weights only (frozen
  weights come back from their pretrained references when the config is rebuilt).
- The bridge is built last, from the built encoder's ``output_dim`` and the LLM's ``hidden_size``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

# Frozen encoder/LLM are in eval mode on purpose; Lightning's generic hint about it is noise here.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

from bridgebench.config import (
    BridgeSpec,
    ConfigError,
    EncoderSpec,
    GenerationSpec,
    LLMSpec,
    OptimSpec,
    validate_config,
)
from bridgebench.registry import build_bridge, build_encoder, build_llm


@dataclass
class DataContract:
    """What the data path needs from the model: the audio rate and window, and the text tokenisers."""

    sample_rate: int
    max_seconds: Optional[float]
    text: "TextProcessor"
    encoder_key: Optional[str] = None
    """Feature-cache key of a frozen encoder (None when its features cannot be cached)."""


@dataclass
class TextProcessor:
    """Tokenises a batch's instructions/targets for the LLM and, if it reads them, the bridge."""

    llm: Any
    bridge: Any = None

    def __call__(self, instructions: list[str], targets: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
        out = self.llm(instructions, targets)
        if self.bridge is not None:
            out.update(self.bridge(instructions))
        return out


def resolve_frozen_dtype(name: str) -> torch.dtype:
    if name == "auto":
        # bf16 storage only where bf16 matmuls are native; CPUs emulate them slowly.
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class BridgeModule(L.LightningModule):
    """Audio encoder -> bridge -> LLM, trained with the enabled objectives.

    Args:
        encoder: The audio encoder (frozen by default).
        bridge: The trainable bridge; its widths come from the encoder and LLM.
        llm: The language model (frozen by default; lora or full also possible).
        objectives: Enabled objectives and their weights. Stage 2: ``{lm: 1.0}``.
        optimizer: AdamW and learning-rate schedule.
        generation: Decoding for validate/test/predict.
        stage1_checkpoint: A stage-1 run's checkpoint whose bridge (and trained encoder) weights
            initialise this run.
        frozen_dtype: Storage dtype of frozen modules: auto (bf16 on GPUs that support it, else
            float32), float32, bfloat16 or float16.
    """

    def __init__(
        self,
        encoder: EncoderSpec = EncoderSpec(),
        bridge: BridgeSpec = BridgeSpec(),
        llm: LLMSpec = LLMSpec(),
        objectives: Optional[dict[str, float]] = None,
        optimizer: OptimSpec = OptimSpec(),
        generation: GenerationSpec = GenerationSpec(),
        stage1_checkpoint: Optional[str] = None,
        frozen_dtype: str = "auto",
    ):
        super().__init__()
        objectives = dict(objectives or {"lm": 1.0})
        validate_config(encoder, bridge, llm, objectives, stage1_checkpoint, frozen_dtype)
        # Plain dicts, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({
            "encoder": asdict(encoder), "bridge": asdict(bridge), "llm": asdict(llm), "objectives": objectives,
            "optimizer": asdict(optimizer), "generation": asdict(generation),
            "stage1_checkpoint": stage1_checkpoint, "frozen_dtype": frozen_dtype,
        })
        self.specs = {"encoder": encoder, "bridge": bridge, "llm": llm}
        self.objectives = objectives
        self.optim = optimizer
        self.gen = generation
        self.frozen_dtype = resolve_frozen_dtype(frozen_dtype)

        self.encoder = build_encoder(encoder)
        self.encoder.frozen = not encoder.trainable
        if self.encoder.frozen:
            self.encoder.requires_grad_(False)
            for name in self.encoder.trainable_when_frozen():
                getattr(self.encoder, name).requires_grad_(True)
            self.encoder.model.to(self.frozen_dtype)
        self.llm = build_llm(llm, self.frozen_dtype if llm.mode != "full" else None)
        self.bridge = build_bridge(bridge, self.encoder.output_dim, self.llm.hidden_size)
        # Trainable-only checkpoints: frozen weights are rebuilt from the config, so resuming and
        # testing load with strict=False; on_load_checkpoint checks nothing trainable is missing.
        self.strict_loading = False
        if stage1_checkpoint is not None:
            self.load_stage1(stage1_checkpoint)
        self._predictions: list[dict] = []
        self._skipped: list[dict] = []
        self._encoder_key: Optional[str] = None
        self.feature_mode = False  # predict returns encoder features (the cache pass)
        self.train()  # the override keeps the frozen parts in eval mode

    # === Freezing ===

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder.frozen:
            self.encoder.eval()
        if self.llm.mode == "frozen":
            self.llm.eval()
        return self

    def trainable_state_keys(self) -> set[str]:
        keys = {n for n, p in self.named_parameters() if p.requires_grad}
        owners = ["bridge."] + ([] if self.encoder.frozen else ["encoder."])
        keys |= {n for n, _ in self.named_buffers() if n.startswith(tuple(owners)) and n in self.state_dict()}
        return keys

    def component_report(self) -> list[str]:
        """One line per module: kind, frozen or trained, parameter counts, mode, dtype, source."""
        lines = []
        for role, module in (("encoder", self.encoder), ("bridge", self.bridge), ("llm", self.llm)):
            spec = self.specs[role]
            total = sum(p.numel() for p in module.parameters())
            trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
            state = "trained" if trained == total else ("frozen" if trained == 0 else "partly trained")
            dtype = str(next(module.parameters()).dtype).removeprefix("torch.")
            source = getattr(getattr(spec, spec.name), "pretrained", None) or getattr(
                getattr(spec, spec.name), "bert", "")
            lines.append(
                f"{role:8s} {spec.name:12s} {state:15s} {_human(total):>7s} params, {_human(trained):>7s} trained"
                f"  [{'train' if module.training else 'eval'}, {dtype}]  {source}"
            )
        total = sum(p.numel() for p in self.parameters())
        trained = sum(p.numel() for p in self.parameters() if p.requires_grad)
        lines.append(f"{'total':8s} {'':12s} {'':15s} {_human(total):>7s} params, {_human(trained):>7s} trained")
        return lines

    def setup(self, stage: str) -> None:
        rank_zero_info("bridgebench components (frozen parts run in eval mode, the encoder under no_grad):")
        for line in self.component_report():
            rank_zero_info("  " + line)

    # === Data contract ===

    def data_contract(self) -> DataContract:
        bridge_text = self.bridge.text_processor if self.bridge.uses_instruction else None
        return DataContract(self.encoder.sample_rate, self.encoder.max_seconds,
                            TextProcessor(self.llm.text_processor, bridge_text), self.encoder_cache_key())

    def encoder_cache_key(self) -> Optional[str]:
        """Key of this encoder's cached features: identity + weights fingerprint; None if it trains."""
        if not self.encoder.frozen or self.encoder.trainable_when_frozen():
            return None
        if self._encoder_key is None:
            from bridgebench.datamodules.features import encoder_key, weights_fingerprint

            self._encoder_key = encoder_key(self.encoder.identity(), weights_fingerprint(self.encoder))
        return self._encoder_key

    # === Forward ===

    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder features of a batch, or the cached ones the batch carries."""
        if "features" in batch:
            return batch["features"], batch["feature_mask"]
        return self.encoder(batch["audio"], batch["audio_mask"])

    def soft_prompt(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        feats, mask = self.encode(batch)
        return self.bridge(feats.float(), mask, batch["text"])

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        soft, soft_mask = self.soft_prompt(batch)
        out = {"lm": self.llm.loss(soft, soft_mask, batch["text"])}
        out["loss"] = sum(self.objectives[k] * out[k] for k in self.objectives)
        return out

    def _log_losses(self, prefix: str, losses: dict, batch_size: int) -> None:
        for name, value in losses.items():
            key = f"{prefix}/loss" if name == "loss" else f"{prefix}/loss_{name}"
            self.log(key, value, batch_size=batch_size, prog_bar=name == "loss", sync_dist=prefix != "train")

    # === Skipped clips ===

    def _note_skipped(self, batch: dict) -> bool:
        """Record the batch's skipped clips; True when nothing is left to compute on."""
        self._skipped.extend(batch.get("skipped", []))
        return len(batch["id"]) == 0

    def _report_skipped(self, stage: str) -> None:
        rows = self._skipped
        self._skipped = []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if self.trainer is None or not self.trainer.is_global_zero or not rows:
            return
        run_dir = self.trainer.default_root_dir
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, "skipped_audio.jsonl")
        with open(path, "a") as f:
            for row in rows:
                f.write(json.dumps({"stage": stage, "epoch": self.current_epoch, **row}) + "\n")
        rank_zero_info(f"{stage}: skipped {len(rows)} clip(s) with bad audio this epoch; listed in {path}")

    def on_train_epoch_end(self) -> None:
        self._report_skipped("train")

    def on_validation_epoch_end(self) -> None:
        self._report_skipped("validate")

    # === Steps ===

    def training_step(self, batch, batch_idx):
        if self._note_skipped(batch):
            return None  # every clip of this batch was bad; nothing to learn from
        losses = self.losses(batch)
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(
                f"loss is {losses['loss'].item()} at global step {self.global_step}; lower the learning rate "
                "or check the data (see README, 'When things go wrong')"
            )
        self._log_losses("train", losses, len(batch["id"]))
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        if self._note_skipped(batch):
            return
        self._log_losses("val", self.losses(batch), len(batch["id"]))

    def generate(self, batch: dict) -> list[str]:
        soft, soft_mask = self.soft_prompt(batch)
        if self.gen.do_sample:
            torch.manual_seed(self.gen.seed)
        return self.llm.generate(soft, soft_mask, batch["text"], self.gen)

    def test_step(self, batch, batch_idx):
        if self._note_skipped(batch):
            return
        self._log_losses("test", self.losses(batch), len(batch["id"]))
        for i, text in enumerate(self.generate(batch)):
            self._predictions.append({"id": batch["id"][i], "instruction": batch["instruction"][i],
                                      "prediction": text, "references": batch["references"][i]})

    def on_test_epoch_start(self) -> None:
        self._predictions = []

    def on_test_epoch_end(self) -> None:
        self._report_skipped("test")
        rows = self._predictions
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if self.trainer.is_global_zero:
            run_dir = self.trainer.default_root_dir  # the run folder (see cli.BridgeCLI)
            os.makedirs(run_dir, exist_ok=True)
            path = os.path.join(run_dir, "predictions.jsonl")
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                for row in sorted(rows, key=lambda r: str(r["id"])):
                    f.write(json.dumps(row) + "\n")
            os.replace(tmp, path)
            rank_zero_info(f"wrote {len(rows)} predictions to {path}")

    def predict_step(self, batch, batch_idx):
        if self._note_skipped(batch):
            return []
        if self.feature_mode:
            # A fixed-window encoder (CLAP) gives every clip all its frames; keep them, so cached
            # batches have the same shape as encoded ones. Others keep the clip's real frames.
            feats, mask = self.encoder(batch["audio"], batch["audio_mask"])
            valid = mask.sum(1)
            keep = [feats.shape[1] if self.encoder.max_seconds else int(n) for n in valid]
            return {key: (feats[i, : keep[i]], int(valid[i])) for i, key in enumerate(batch["cache_key"])}
        return [{"id": i, "prediction": t} for i, t in zip(batch["id"], self.generate(batch), strict=True)]

    # === Optimisation ===

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        o = self.optim
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = all(p.is_cuda for p in decay + no_decay)
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), fused=fused or None)
        total = self.trainer.estimated_stepping_batches if self.trainer else float("inf")

        def factor(step: int) -> float:
            if step < o.warmup_steps:
                return (o.warmup_lr + (o.lr - o.warmup_lr) * step / o.warmup_steps) / o.lr
            if o.schedule == "constant" or not math.isfinite(total):
                return 1.0
            progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
            return (o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))) / o.lr

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # === Checkpoints ===

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["bridgebench"] = {
            "trainable_keys": sorted(keep),
            "components": {"encoder": self.encoder.identity(), "llm": self.llm.identity(),
                           "bridge": self.specs["bridge"].name},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = sorted(self.trainable_state_keys() - set(checkpoint["state_dict"]))
        if missing:
            raise ConfigError(
                f"checkpoint lacks {len(missing)} trainable weights of this model (first: {missing[0]}); "
                "it was saved from a different configuration"
            )

    def load_stage1(self, path: str) -> None:
        """Initialise the bridge (and a stage-1-trained encoder) from a stage-1 checkpoint."""
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line report
            raise ConfigError(f"model.stage1_checkpoint: cannot read '{path}': {type(err).__name__}: {err}") from None
        state = ckpt.get("state_dict", ckpt)
        own = self.state_dict()
        ignored = self.bridge.stage1_only_keys()
        load, skipped = {}, []
        for key, value in state.items():
            if not key.startswith(("bridge.", "encoder.")):
                skipped.append(key)  # stage-1 heads (contrastive projections, matching head, ...)
                continue
            if key not in own:
                if key.startswith("bridge.") and not any(f in key for f in ignored):
                    raise ConfigError(
                        f"model.stage1_checkpoint: '{path}' has bridge weight '{key}' that this "
                        f"'{self.specs['bridge'].name}' bridge lacks; the stage-1 run used another bridge shape"
                    )
                skipped.append(key)
                continue
            if own[key].shape != value.shape:
                raise ConfigError(
                    f"model.stage1_checkpoint: '{key}' has shape {tuple(value.shape)} in '{path}' but "
                    f"{tuple(own[key].shape)} here; match the stage-1 bridge settings (queries, widths, window)"
                )
            load[key] = value
        fresh = sorted(k for k in self.trainable_state_keys() if k.startswith("bridge.") and k not in load)
        if not any(k.startswith("bridge.") for k in load):
            raise ConfigError(f"model.stage1_checkpoint: '{path}' holds no bridge weights")
        self.load_state_dict(load, strict=False)
        rank_zero_info(
            f"stage-1 checkpoint {path}: loaded {len(load)} tensors, skipped {len(skipped)} stage-1-only, "
            f"new in stage 2: {', '.join(fresh) if fresh else 'none'}"
        )
