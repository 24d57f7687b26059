"""The LightningModule that assembles encoder -> bridge -> LLM and trains what is not frozen.

Lifecycle. ``__init__`` checks the model section (``validate``), builds the encoder, then the bridge
from the encoder's ``output_dim`` and the LLM's width (read from its config, so a stage-1 checkpoint
is checked against the bridge before any LLM weight loads), loads the stage-1/encoder checkpoints,
builds the LLM and lets the bridge initialise its output layer. Parts the objectives do not use are
not built (a tagging-only run has no bridge and no LLM). ``setup`` builds the tag head from the
training tags and logs the component table. ``training_step`` / ``validation_step`` /
``test_step`` compute the enabled objectives' losses; validation and test also feed the
``TestEvaluator`` (``evaluator.py``), which scores at the epoch's end and whose results
``on_test_end`` writes into the run folder. ``configure_optimizers`` groups parameters as the parts
declare them. ``on_save_checkpoint`` keeps trainable weights and the random state only
(``checkpoints.keep_trainable``); ``from_pretrained`` reads an exported bridge (``exported.py``);
``on_load_checkpoint`` checks nothing trainable is missing and tells the datamodule where a resumed
epoch stopped. Freezing and the frozen parts' precision are in ``frozen.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import warnings
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from bridgebench.bridges.objectives import Stage1Heads
from bridgebench.datamodules.contract import DataContract, TextProcessor
from bridgebench.encoders.tagging import TagHead, tag_vocabulary
from bridgebench.engine import checkpoints, frozen, validate
from bridgebench.engine.evaluator import TestEvaluator
from bridgebench.engine.registry import build_bridge, build_encoder, build_llm, llm_width
from bridgebench.engine.schedule import lr_factor
from bridgebench.engine.speed import SpeedSpec, adamw_fused, compile_parts, fp8_linears, step_begin
from bridgebench.errors import ConfigError, DataError
from bridgebench.runtime.distributed import rank_and_world
from bridgebench.specs import (
    STAGE1_OBJECTIVES,
    BridgeSpec,
    EncoderSpec,
    EvalSpec,
    GenerationSpec,
    LLMSpec,
    OptimSpec,
    PrecisionSpec,
    Stage1Spec,
    spec_from_dict,
)

# Frozen encoder/LLM are in eval mode on purpose; Lightning's generic hint about it is noise here.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


class BridgeModule(L.LightningModule):
    """Audio encoder -> bridge -> LLM, trained with the enabled objectives.

    Args:
        encoder: The audio encoder (frozen by default).
        bridge: The trainable bridge; its widths come from the encoder and LLM.
        llm: The language model (frozen by default; lora or full also possible).
        objectives: Enabled objectives and their weights. Stage 2: ``{lm: 1.0}``.
        optimizer: AdamW and learning-rate schedule.
        generation: Decoding for validate/test/predict.
        stage1: Heads of the stage-1 objectives (and the tag objective's vocabulary threshold).
        evaluation: What ``test`` measures besides the losses.
        precision: Storage dtypes of the frozen parts, in training and in evaluation.
        stage1_checkpoint: A stage-1 run's checkpoint whose bridge (and trained encoder) weights
            initialise this run.
        stage1_parts: Which parts to take from it: ``bridge``, ``encoder`` (default: both, or only
            the bridge when ``encoder_checkpoint`` is set).
        encoder_checkpoint: A run's checkpoint whose trained encoder initialises this encoder (its
            bridge is ignored): one encoder trained in stage 1 shared by other bridges, e.g. the
            demo's stage-1 and stage-2 runs reuse the encoder that demo_encoder trained by tagging.
        speed: Speed switches (compile, FP8, fused AdamW), each off by default; they change how a
            step computes, never its loss or the checkpoint keys (see ``bench/gpu.py --ablate``).
        check_finite: Stop at the first non-finite loss before its update is applied (README, "When
            things go wrong"). It costs one host-device sync per step; switch it off on GPUs once a
            recipe is known to be stable, for a step with no sync of ours.
    """

    def __init__(
        self,
        encoder: EncoderSpec = EncoderSpec(),
        bridge: BridgeSpec = BridgeSpec(),
        llm: LLMSpec = LLMSpec(),
        objectives: Optional[dict[str, float]] = None,
        optimizer: OptimSpec = OptimSpec(),
        generation: GenerationSpec = GenerationSpec(),
        stage1: Stage1Spec = Stage1Spec(),
        evaluation: EvalSpec = EvalSpec(),
        precision: PrecisionSpec = PrecisionSpec(),
        stage1_checkpoint: Optional[str] = None,
        stage1_parts: Optional[list[str]] = None,
        encoder_checkpoint: Optional[str] = None,
        speed: SpeedSpec = SpeedSpec(),
        check_finite: bool = True,
    ):
        super().__init__()
        objectives = dict(objectives or {"lm": 1.0})
        validate.check({"encoder": encoder, "bridge": bridge, "llm": llm, "objectives": objectives,
                        "optimizer": optimizer, "generation": generation, "stage1": stage1,
                        "evaluation": evaluation, "precision": precision, "speed": speed,
                        "stage1_checkpoint": stage1_checkpoint, "encoder_checkpoint": encoder_checkpoint})
        # Every argument, as plain data (checkpoints load with torch.load(weights_only=True)); a run
        # is rebuilt from these alone (from_hparams), so no key list is kept by hand.
        self.save_hyperparameters({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                                   for k, v in locals().items() if k in inspect.signature(type(self)).parameters})
        self.check_finite = check_finite
        self.specs = {"encoder": encoder, "bridge": bridge, "llm": llm}
        self.objectives = objectives
        self.optim = optimizer
        self.gen = generation
        self.eval_spec = evaluation
        self.speed = speed
        self.frozen_dtype = frozen.resolve_dtype(precision.frozen)
        self.eval_frozen_dtype = None if precision.frozen_eval is None else frozen.resolve_dtype(precision.frozen_eval)
        stage1_objectives = [o for o in objectives if o in STAGE1_OBJECTIVES]
        uses_bridge = bool(stage1_objectives) or "lm" in objectives

        self.encoder = build_encoder(encoder)
        self.encoder.frozen = not encoder.trainable
        if self.encoder.frozen:
            frozen.freeze_encoder(self.encoder, self.frozen_dtype)
        # The bridge is built, and a stage-1 checkpoint checked against it, before the LLM's
        # weights are loaded (the LLM's width comes from its config), so a mismatch costs seconds.
        width = llm_width(llm) if llm.name != "none" and "lm" in objectives else None
        self.llm = None
        self.bridge = (build_bridge(bridge, self.encoder.output_dim, width, with_text=bool(stage1_objectives))
                       if uses_bridge else None)
        # Built in setup(), once the training split's tags are known (see encoders/tagging.py).
        self.tagger: Optional[TagHead] = None
        self._tag_min_count = stage1.tag_min_count
        self.stage1 = (Stage1Heads(self.bridge, tuple(stage1_objectives),
                                   **{k: v for k, v in dataclasses.asdict(stage1).items() if k != "tag_min_count"})
                       if stage1_objectives else None)
        # Trainable-only checkpoints: frozen weights are rebuilt from the config, so resuming and
        # testing load with strict=False; on_load_checkpoint checks nothing trainable is missing.
        self.strict_loading = False
        if encoder_checkpoint is not None:
            checkpoints.load_stage1(self, encoder_checkpoint, ("encoder",), required=("encoder",),
                                    option="model.encoder_checkpoint")
        if stage1_checkpoint is not None:
            # By default the bridge must be there; the encoder only if stage 1 trained it.
            default_parts = ("bridge",) if encoder_checkpoint is not None else ("bridge", "encoder")
            checkpoints.load_stage1(self, stage1_checkpoint, tuple(stage1_parts or default_parts),
                                    required=tuple(stage1_parts or ("bridge",)))
        if width is not None:
            self.llm = build_llm(llm, self.frozen_dtype if llm.mode != "full" else None)
            if self.llm.hidden_size != width:
                raise ConfigError(f"model.llm: config width {width} != embedding width {self.llm.hidden_size}")
            self.bridge.init_output(self.llm.hf.get_input_embeddings().weight.float().std().item())
        self.evaluator = TestEvaluator(self)
        self.test_results: dict = {}
        self._skipped: dict[str, list[dict]] = {}
        self._trained_examples = 0
        self._encoder_key: Optional[str] = None
        if speed.fp8 and self.llm is not None:
            fp8_linears(self)
        compile_parts(self, speed)
        self.train()  # the override keeps the frozen parts in eval mode

    @classmethod
    def from_hparams(cls, hparams: dict, **overrides) -> "BridgeModule":
        """Rebuild a module from a checkpoint's hyper-parameters (frozen parts from their references;
        load the trainable weights separately). Specs are rebuilt from the signature's types."""
        kwargs = {}
        hparams = {**hparams, **overrides}
        for name, param in inspect.signature(cls).parameters.items():
            if name not in hparams:
                continue
            value = hparams[name]
            default = param.default
            kwargs[name] = (spec_from_dict(type(default), value)
                            if dataclasses.is_dataclass(default) and isinstance(value, dict) else value)
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path: str, **overrides) -> "BridgeModule":
        """A bridge written by ``python -m bridgebench export`` (its folder, or a hub repo holding it),
        in eval mode; ``overrides`` replace hyper-parameters (e.g. ``precision``)."""
        from bridgebench.engine.exported import load_exported

        return load_exported(cls, path, **overrides)

    # === Freezing and the run's parts ===

    def train(self, mode: bool = True):
        super().train(mode)
        frozen.keep_frozen_in_eval(self)
        return self

    def configure_callbacks(self):
        callback = frozen.eval_precision_callback(self)
        return [callback] if callback is not None else []

    def trainable_state_keys(self) -> set[str]:
        keys = {n for n, p in self.named_parameters() if p.requires_grad}
        owners = ["bridge.", "stage1."] + ([] if self.encoder.frozen else ["encoder."])
        keys |= {n for n, _ in self.named_buffers() if n.startswith(tuple(owners)) and n in self.state_dict()}
        return keys

    def component_report(self) -> list[str]:
        return frozen.component_report(self)

    def datamodule(self):
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def is_global_zero(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    def setup(self, stage: str) -> None:
        if "tag" in self.objectives and self.tagger is None:
            dm = self.datamodule()
            if dm is None or not hasattr(dm, "tag_lists"):
                raise ConfigError("model.objectives.tag needs the manifest datamodule (its clips' tags)")
            vocabulary = tag_vocabulary(dm.tag_lists("train"), self._tag_min_count)
            if not vocabulary:
                raise ConfigError(
                    f"model.objectives.tag: no tag is carried by {self._tag_min_count} or more training clips of "
                    f"{dm.manifest}; add `tags` to the manifest or lower model.stage1.tag_min_count"
                )
            self.tagger = TagHead(self.encoder.output_dim, vocabulary)
        rank_zero_info("bridgebench components (frozen parts run in eval mode, the encoder under no_grad):")
        for line in self.component_report():
            rank_zero_info("  " + line)

    # === Data contract ===

    def data_contract(self) -> DataContract:
        bridge_text = self.bridge.text_processor if self.bridge is not None and self.bridge.uses_instruction else None
        text = TextProcessor(self.llm.text_processor if self.llm else None, bridge_text,
                             self.stage1.text_processor if self.stage1 else None)
        return DataContract(self.encoder.sample_rate, self.encoder.max_seconds, text, self.encoder_cache_key())

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
        step_begin(self.speed)
        feats, mask = self.encode(batch)
        return self.bridge(feats.float(), mask, batch["text"])

    def losses(self, batch: dict, encoded: Optional[tuple] = None) -> dict[str, torch.Tensor]:
        step_begin(self.speed)
        feats, mask = encoded if encoded is not None else self.encode(batch)
        feats = feats.float()
        text = batch["text"]
        out = {}
        if "lm" in self.objectives:
            soft, soft_mask = self.bridge(feats, mask, text)
            out["lm"] = self.llm.loss(soft, soft_mask, text)
        if self.stage1 is not None:
            out.update(self.stage1.losses(self.bridge, feats, mask, text["s1_ids"], text["s1_mask"]))
        if "tag" in self.objectives:
            out["tag"] = self.tagger.loss(feats, mask, batch["tags"])
        out["loss"] = sum(self.objectives[k] * out[k] for k in self.objectives)
        return out

    def generate(self, batch: dict, soft: Optional[tuple] = None) -> list[str]:
        soft, soft_mask = soft if soft is not None else self.soft_prompt(batch)
        if self.gen.do_sample:
            torch.manual_seed(self.gen.seed)
        return self.llm.generate(soft, soft_mask, batch["text"], self.gen)

    def _log_losses(self, prefix: str, losses: dict, batch_size: int) -> None:
        for name, value in losses.items():
            key = f"{prefix}/loss" if name == "loss" else f"{prefix}/loss_{name}"
            self.log(key, value, batch_size=batch_size, prog_bar=name == "loss", sync_dist=prefix != "train")

    # === Skipped clips (data.skip_bad_audio) ===

    def _note_skipped(self, batch: dict, stage: str) -> bool:
        """Record the batch's skipped clips under ``stage``; True when nothing is left to compute on."""
        self._skipped.setdefault(stage, []).extend(batch.get("skipped", []))
        return len(batch["id"]) == 0

    def _report_skipped(self, stage: str) -> None:
        from bridgebench.engine.evaluator import gather
        from bridgebench.runtime.io import append_jsonl

        rows = gather(self._skipped.pop(stage, []))
        if self._trainer is None or not self.trainer.is_global_zero or not rows:
            return
        path = os.path.join(self.trainer.default_root_dir, "skipped_audio.jsonl")
        append_jsonl(path, [{"stage": stage, "epoch": self.current_epoch, **row} for row in rows])
        rank_zero_info(f"{stage}: skipped {len(rows)} clip(s) with bad audio this epoch; listed in {path}")

    # === Steps ===

    def on_train_epoch_start(self) -> None:
        self._trained_examples = 0

    def training_step(self, batch, batch_idx):
        if self._note_skipped(batch, "train"):
            return None  # every clip of this batch was bad; nothing to learn from
        losses = self.losses(batch)
        if self.check_finite and not torch.isfinite(losses["loss"]):
            raise FloatingPointError(
                f"loss is {losses['loss'].item()} at global step {self.global_step}; lower the learning rate "
                "or check the data (see README, 'When things go wrong')"
            )
        self._trained_examples += len(batch["id"])
        self._log_losses("train", losses, len(batch["id"]))
        return losses["loss"]

    def on_train_epoch_end(self) -> None:
        skipped = len(self._skipped.get("train", []))
        self._report_skipped("train")
        trained = torch.tensor(self._trained_examples, device=self.device)
        if rank_and_world()[1] > 1:
            torch.distributed.all_reduce(trained)
        if int(trained) == 0:
            raise DataError(f"every training clip of this epoch was skipped as bad audio ({skipped} skipped on this "
                            f"rank, listed in {self.trainer.default_root_dir}/skipped_audio.jsonl); fix or remove the "
                            "files, or point data.manifest at usable audio")

    def on_validation_epoch_start(self) -> None:
        self.evaluator.start("val")

    def validation_step(self, batch, batch_idx):
        if self._note_skipped(batch, "validate"):
            return
        encoded = self.encode(batch)
        self._log_losses("val", self.losses(batch, encoded), len(batch["id"]))
        self.evaluator.collect(batch, encoded)

    def on_validation_epoch_end(self) -> None:
        self._report_skipped("validate")
        if not self.trainer.sanity_checking:
            for name, value in self.evaluator.compute("val").items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.log(f"val/{name}", float(value), rank_zero_only=True)

    def on_test_epoch_start(self) -> None:
        self.test_results = {}
        self.evaluator.start("test")

    def test_step(self, batch, batch_idx):
        if self._note_skipped(batch, "test"):
            return
        encoded = self.encode(batch)  # one encoder pass serves losses, generation and ranking
        self._log_losses("test", self.losses(batch, encoded), len(batch["id"]))
        self.evaluator.collect(batch, encoded)

    def on_test_epoch_end(self) -> None:
        self._report_skipped("test")
        self.test_results = self.evaluator.compute("test")
        for name, value in self.test_results.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.log(f"test/{name}", float(value), rank_zero_only=True)

    def on_test_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        from bridgebench.engine.run_folder import write_test_results

        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        for name, value in self.test_results.items():
            metrics.setdefault(f"test/{name}", value)
        # A tagging run builds no bridge: its spec's default name would misreport the run.
        bridge = self.specs["bridge"].name if self.bridge is not None else "none"
        metrics["run"] = {"encoder": self.specs["encoder"].name, "bridge": bridge,
                          "llm": self.specs["llm"].name, "objectives": self.objectives,
                          "trainable_params": sum(p.numel() for p in self.parameters() if p.requires_grad)}
        write_test_results(self.trainer, metrics, self.evaluator.predictions)

    def predict_step(self, batch, batch_idx):
        if self._note_skipped(batch, "predict"):
            return []
        return [{"id": i, "prediction": t} for i, t in zip(batch["id"], self.generate(batch), strict=True)]

    # === Optimisation ===

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Trainable parameters by learning-rate group, as the parts declare them."""
        groups: dict[str, list] = {"encoder": [], "projection": [], "body": []}
        if not self.encoder.frozen or self.encoder.trainable_when_frozen():
            groups["encoder"] = [p for p in self.encoder.parameters() if p.requires_grad]
        if self.llm is not None and "llm" in (self.optim.lr_scale or {}):  # unscaled: in body, the old layout
            groups["llm"] = [p for p in self.llm.parameters() if p.requires_grad]
        if self.bridge is not None:
            for name, params in self.bridge.param_groups(frozenset(self.optim.lr_scale or {})).items():
                groups.setdefault(name, []).extend(p for p in params if p.requires_grad)
        seen = {id(p) for ps in groups.values() for p in ps}
        groups["body"] += [p for p in self.parameters() if p.requires_grad and id(p) not in seen]
        return groups

    def configure_optimizers(self):
        o = self.optim
        param_groups = []
        for group, params in self.param_groups().items():
            lr = o.lr * (o.lr_scale or {}).get(group, 1.0)
            for decayed in (False, True):
                ps = [p for p in params if (p.ndim >= 2) == decayed]
                if ps:
                    param_groups.append({"params": ps, "weight_decay": o.weight_decay if decayed else 0.0, "lr": lr})
        fused = adamw_fused([p for g in param_groups for p in g["params"]], self.speed.fused_adamw)
        opt = torch.optim.AdamW(param_groups, lr=o.lr, betas=tuple(o.betas), fused=fused)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else float("inf")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, o, total=total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # === Checkpoints ===

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoints.keep_trainable(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("bridgebench", {}).get("tag_vocabulary")
        if self.tagger is not None and saved is not None and saved != self.tagger.vocabulary:
            raise ConfigError(
                f"checkpoint's tag vocabulary ({len(saved)} tags) differs from this data's ({len(self.tagger.vocabulary)}); "
                "test with the manifest and model.stage1.tag_min_count it was trained with"
            )
        checkpoints.check_trainable(checkpoint, self.trainable_state_keys())
        self._rng_to_restore = checkpoint.get("rng")
        # Resuming fit mid-epoch: tell the datamodule's sampler where the checkpoint stopped.
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        # "processed": batches whose step ran (a checkpoint saved in on_train_batch_end has not yet
        # counted its own batch as "completed").
        done = progress.get("current", {}).get("processed")
        if dm is not None and hasattr(dm, "resume_at") and done is not None and trainer.state.fn == "fit":
            dm.resume_at(checkpoint.get("epoch", 0), int(done))

    def on_train_start(self) -> None:
        # After the sanity check, which draws random numbers of its own.
        checkpoints.restore_rng(getattr(self, "_rng_to_restore", None))
        self._rng_to_restore = None
