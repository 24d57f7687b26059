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
import random
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


from bridgebench.bridges.objectives import Stage1Heads
from bridgebench.config import (
    STAGE1_OBJECTIVES,
    BridgeSpec,
    ConfigError,
    EncoderSpec,
    EvalSpec,
    GenerationSpec,
    LLMSpec,
    OptimSpec,
    Stage1Spec,
    validate_config,
)
from bridgebench.registry import build_bridge, build_encoder, build_llm, llm_width
from bridgebench.retrieval import recall_at_k, rerank, zero_shot_accuracy
from bridgebench.tagging import TagHead, mean_average_precision, tag_vocabulary

# Frozen encoder/LLM are in eval mode on purpose; Lightning's generic hint about it is noise here.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


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
    stage1: Any = None

    def __call__(self, instructions: list[str], targets: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
        out = self.llm(instructions, targets) if self.llm is not None else {}
        if self.bridge is not None:
            out.update(self.bridge(instructions))
        if self.stage1 is not None and targets is not None:
            out.update(self.stage1(targets))
        return out


ATTRIBUTES = ("instrument", "genre", "tempo_class", "dynamics", "key", "mode")


def attribute_accuracy(rows: list[dict], vocabulary: str) -> dict[str, float]:
    """Share (%) of generated captions that name each true attribute (closed-vocabulary match)."""
    if vocabulary != "music-synth":
        raise ConfigError(f"model.evaluation.attribute_vocabulary: unknown '{vocabulary}'; known: music-synth")
    from bridgebench.datamodules.music_synth import caption_attributes

    out = {}
    for attr in ATTRIBUTES:
        scored = [r for r in rows if attr in r.get("labels", {})]
        if scored:
            hits = [caption_attributes(r["prediction"]).get(attr) == r["labels"][attr] for r in scored]
            out[f"attr_acc_{attr}"] = 100.0 * sum(hits) / len(hits)
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
        stage1_parts: Which parts to take from it: ``bridge``, ``encoder`` (default: both, or only
            the bridge when ``encoder_checkpoint`` is set).
        encoder_checkpoint: A run's checkpoint whose trained encoder initialises this encoder (its
            bridge is ignored): one encoder trained in stage 1 shared by other bridges, e.g. the
            demo's stage-1 and stage-2 runs reuse the encoder that demo_encoder trained by tagging.
        prompt_init: ``default`` (PyTorch's init of the bridge's output layer, as the papers) or
            ``embedding_scale``: rescale that fresh layer so the soft prompt starts at the LLM's
            word-embedding scale. A default Linear from a LayerNorm'd 384-wide Q-Former gives prompt
            vectors of std ~0.6, 4x SmolLM2's embeddings (0.136); small frozen LLMs learn far slower
            from prompts off their embedding scale.
        check_finite: Stop at the first non-finite loss before its update is applied (README, "When
            things go wrong"). It costs one host-device sync per step; switch it off on GPUs once a
            recipe is known to be stable, for a step with no sync of ours.
        compile: ``torch.compile`` the bridge's forward and the LLM's encoder/decoder stacks
            (dynamic shapes). The module tree and checkpoint keys stay unchanged; the first steps
            pay the compile time. A speed switch for GPUs (see ``bench/gpu.py``).
        frozen_dtype: Storage dtype of frozen modules: auto (bf16 on GPUs that support it, else
            float32), float32, bfloat16 or float16.
        eval_frozen_dtype: Storage dtype of a frozen LLM (of a LoRA LLM's base weights) while
            validating, testing and predicting (None: ``frozen_dtype``). CPUs with AMX train faster
            in bf16 but generate far slower (measured: the demo's test took 7 min in bf16 against 2
            in float32, as every new sequence length re-packs the weights), so a CPU run can train
            in bf16 and generate in float32.
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
        stage1_checkpoint: Optional[str] = None,
        stage1_parts: Optional[list[str]] = None,
        frozen_dtype: str = "auto",
        eval_frozen_dtype: Optional[str] = None,
        encoder_checkpoint: Optional[str] = None,
        prompt_init: str = "default",
        compile: bool = False,
        check_finite: bool = True,
    ):
        super().__init__()
        objectives = dict(objectives or {"lm": 1.0})
        validate_config(encoder, bridge, llm, objectives, stage1_checkpoint, frozen_dtype, stage1, encoder_checkpoint,
                        eval_frozen_dtype)
        # Plain dicts, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({
            "encoder": asdict(encoder), "bridge": asdict(bridge), "llm": asdict(llm), "objectives": objectives,
            "optimizer": asdict(optimizer), "generation": asdict(generation), "stage1": asdict(stage1),
            "evaluation": asdict(evaluation), "stage1_checkpoint": stage1_checkpoint,
            "stage1_parts": stage1_parts, "frozen_dtype": frozen_dtype, "eval_frozen_dtype": eval_frozen_dtype,
            "encoder_checkpoint": encoder_checkpoint,
            "prompt_init": prompt_init, "compile": compile,
            "check_finite": check_finite,
        })
        self.check_finite = check_finite
        self.specs = {"encoder": encoder, "bridge": bridge, "llm": llm}
        self.objectives = objectives
        self.optim = optimizer
        self.gen = generation
        self.eval_spec = evaluation
        self.frozen_dtype = resolve_frozen_dtype(frozen_dtype)
        self.eval_frozen_dtype = None if eval_frozen_dtype is None else resolve_frozen_dtype(eval_frozen_dtype)
        stage1_objectives = [o for o in objectives if o in STAGE1_OBJECTIVES]

        self.encoder = build_encoder(encoder)
        self.encoder.frozen = not encoder.trainable
        if self.encoder.frozen:
            self.encoder.requires_grad_(False)
            for name in self.encoder.trainable_when_frozen():
                getattr(self.encoder, name).requires_grad_(True)
            self.encoder.model.to(self.frozen_dtype)
        # The bridge is built, and a stage-1 checkpoint checked against it, before the LLM's
        # weights are loaded (the LLM's width comes from its config), so a mismatch costs seconds.
        width = llm_width(llm) if llm.name != "none" else None
        self.llm = None
        self.bridge = build_bridge(bridge, self.encoder.output_dim, width, with_text=bool(stage1_objectives))
        if not stage1_objectives and "lm" not in objectives:
            # Tagging alone trains the encoder; an untouched bridge would be saved as if trained.
            self.bridge.requires_grad_(False)
        # Built in setup(), once the training split's tags are known (see bridgebench/tagging.py).
        self.tagger: Optional[TagHead] = None
        self._tag_min_count = stage1.tag_min_count
        self._tag_scores: list[dict] = []
        self.stage1 = (Stage1Heads(self.bridge, tuple(stage1_objectives),
                                   **{k: v for k, v in asdict(stage1).items() if k != "tag_min_count"})
                       if stage1_objectives else None)
        # Trainable-only checkpoints: frozen weights are rebuilt from the config, so resuming and
        # testing load with strict=False; on_load_checkpoint checks nothing trainable is missing.
        self.strict_loading = False
        if encoder_checkpoint is not None:
            self.load_stage1(encoder_checkpoint, ("encoder",), required=("encoder",), option="model.encoder_checkpoint")
        if stage1_checkpoint is not None:
            # By default the bridge must be there; the encoder only if stage 1 trained it.
            default_parts = ("bridge",) if encoder_checkpoint is not None else ("bridge", "encoder")
            self.load_stage1(stage1_checkpoint, tuple(stage1_parts or default_parts),
                             required=tuple(stage1_parts or ("bridge",)))
        if llm.name != "none":
            self.llm = build_llm(llm, self.frozen_dtype if llm.mode != "full" else None)
            if self.llm.hidden_size != width:
                raise ConfigError(f"model.llm: config width {width} != embedding width {self.llm.hidden_size}")
            self._init_prompt_scale(prompt_init)
        self._predictions: list[dict] = []
        self._retrieval: list[dict] = []
        self._ranked: list[dict] = []
        self._candidates: list[str] = []
        self.test_results: dict = {}
        self._skipped: list[dict] = []
        self._encoder_key: Optional[str] = None
        self.feature_mode = False  # predict returns encoder features (the cache pass)
        if compile:
            self._compile()
        self.train()  # the override keeps the frozen parts in eval mode

    def _compile(self) -> None:
        # Compiling bound forwards (not wrapping the modules) keeps parameter names, so checkpoints
        # and stage-1 loading are the same with and without the switch.
        targets = [self.bridge]
        if self.llm is not None:
            hf = self.llm.hf
            for getter in ("get_encoder", "get_decoder"):
                stack = getattr(hf, getter, None)
                stack = stack() if callable(stack) else None
                if isinstance(stack, torch.nn.Module) and stack is not hf and all(stack is not t for t in targets):
                    targets.append(stack)
        for module in targets:
            module.forward = torch.compile(module.forward, dynamic=True)
        rank_zero_info(f"torch.compile: {', '.join(type(m).__name__ for m in targets)}")

    def _init_prompt_scale(self, prompt_init: str) -> None:
        if prompt_init not in ("default", "embedding_scale"):
            raise ConfigError(f"model.prompt_init: unknown '{prompt_init}'; choose one of: default, embedding_scale")
        proj = getattr(self.bridge, "proj", None)
        if prompt_init == "default" or not isinstance(proj, torch.nn.Linear):
            return
        with torch.no_grad():
            target = self.llm.hf.get_input_embeddings().weight.float().std()
            # Output std of a linear layer on unit-variance inputs (the bridges' outputs are
            # LayerNorm'd or encoder tokens) is sqrt(fan_in) * weight std.
            current = proj.weight.float().std() * math.sqrt(proj.in_features)
            proj.weight.mul_(target / current)
            proj.bias.zero_()

    def _llm_storage(self, evaluating: bool) -> None:
        if self.eval_frozen_dtype is None or self.llm is None or self.llm.mode == "full":
            return
        dtype = self.eval_frozen_dtype if evaluating else self.frozen_dtype
        # Frozen parameters only, in place: buffers (RoPE frequencies) keep the dtype from_pretrained
        # gave them, and a LoRA LLM's adapters train in float32 and stay the Parameter objects the
        # optimizer holds. Lightning calls these hooks under inference mode; weights cast there would
        # be inference tensors, which a later training step cannot save for backward.
        with torch.inference_mode(False):
            for p in self.llm.parameters():
                if not p.requires_grad and p.is_floating_point():
                    p.data = p.data.to(dtype)

    def on_validation_start(self) -> None:
        self._llm_storage(evaluating=True)

    def on_validation_end(self) -> None:
        self._llm_storage(evaluating=False)  # training goes on after a validation inside fit

    def on_test_start(self) -> None:
        self._llm_storage(evaluating=True)

    def on_predict_start(self) -> None:
        self._llm_storage(evaluating=True)

    def on_predict_end(self) -> None:
        # `data.features: auto` fills the feature cache with a predict loop inside fit; training
        # after it must run in frozen_dtype again (it ran in float32 at 1.5x the step time before).
        self._llm_storage(evaluating=False)

    # === Freezing ===

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder.frozen:
            self.encoder.eval()
        if self.llm is not None and self.llm.mode == "frozen":
            self.llm.eval()
        if not any(p.requires_grad for p in self.bridge.parameters()):
            self.bridge.eval()  # unused by a tagging-only run
        return self

    def trainable_state_keys(self) -> set[str]:
        keys = {n for n, p in self.named_parameters() if p.requires_grad}
        owners = ["bridge.", "stage1."] + ([] if self.encoder.frozen else ["encoder."])
        keys |= {n for n, _ in self.named_buffers() if n.startswith(tuple(owners)) and n in self.state_dict()}
        return keys

    def component_report(self) -> list[str]:
        """One line per module: kind, frozen or trained, parameter counts, mode, dtype, source."""
        lines = []
        for role, module in (("encoder", self.encoder), ("bridge", self.bridge), ("llm", self.llm),
                             ("stage1", self.stage1)):
            if module is None:
                continue
            spec = self.specs.get(role)
            if spec is None:  # the stage-1 heads
                trained = sum(p.numel() for p in module.parameters())
                lines.append(f"{'heads':8s} {'+'.join(module.objectives):12s} {'trained':15s} {_human(trained):>7s} "
                             f"params, {_human(trained):>7s} trained")
                continue
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
        if self.tagger is not None:
            n = sum(p.numel() for p in self.tagger.parameters())
            lines.append(f"{'heads':8s} {'tag':12s} {'trained':15s} {_human(n):>7s} params, {_human(n):>7s} trained"
                         f"  ({len(self.tagger.vocabulary)} tags)")
        total = sum(p.numel() for p in self.parameters())
        trained = sum(p.numel() for p in self.parameters() if p.requires_grad)
        lines.append(f"{'total':8s} {'':12s} {'':15s} {_human(total):>7s} params, {_human(trained):>7s} trained")
        return lines

    def setup(self, stage: str) -> None:
        if "tag" in self.objectives and self.tagger is None:
            dm = getattr(self.trainer, "datamodule", None)
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
        bridge_text = self.bridge.text_processor if self.bridge.uses_instruction else None
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
        feats, mask = self.encode(batch)
        return self.bridge(feats.float(), mask, batch["text"])

    def losses(self, batch: dict, encoded: Optional[tuple] = None) -> dict[str, torch.Tensor]:
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
        rows = self._gather(self._skipped)
        self._skipped = []
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
        if not self.trainer.sanity_checking:
            self._retrieval_metrics("val")

    # === Steps ===

    def training_step(self, batch, batch_idx):
        if self._note_skipped(batch):
            return None  # every clip of this batch was bad; nothing to learn from
        losses = self.losses(batch)
        if self.check_finite and not torch.isfinite(losses["loss"]):
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
        self._collect_retrieval(batch)

    def on_validation_epoch_start(self) -> None:
        self._retrieval = []

    def generate(self, batch: dict, soft: Optional[tuple] = None) -> list[str]:
        soft, soft_mask = soft if soft is not None else self.soft_prompt(batch)
        if self.gen.do_sample:
            torch.manual_seed(self.gen.seed)
        return self.llm.generate(soft, soft_mask, batch["text"], self.gen)

    def test_step(self, batch, batch_idx):
        if self._note_skipped(batch):
            return
        encoded = self.encode(batch)  # one encoder pass serves losses, generation and ranking
        self._log_losses("test", self.losses(batch, encoded), len(batch["id"]))
        self._collect_retrieval(batch)
        if self.tagger is not None:
            logits = self.tagger(encoded[0].float(), encoded[1])
            targets = self.tagger.targets(batch["tags"], logits.device)
            self._tag_scores.extend({"logits": lg.tolist(), "targets": tg.tolist()} for lg, tg in zip(logits, targets))
        if self.llm is None:
            return
        soft = self.bridge(encoded[0].float(), encoded[1], batch["text"])
        for i, text in enumerate(self.generate(batch, soft)):
            self._predictions.append({"id": batch["id"][i], "instruction": batch["instruction"][i],
                                      "prediction": text, "references": batch["references"][i],
                                      "labels": batch.get("labels", [{}] * len(batch["id"]))[i]})
        if self._candidates:
            self._rank_candidates(batch, encoded)

    def on_test_epoch_start(self) -> None:
        self._predictions = []
        self._retrieval = []
        self._ranked = []
        self.test_results = {}
        self._candidates = self._classification_candidates()

    def on_test_epoch_end(self) -> None:
        self._report_skipped("test")
        self.test_results.update(self._retrieval_metrics("test"))
        if self.tagger is not None:
            rows, self._tag_scores = self._gather(self._tag_scores), []
            if rows:
                # Logged only: on_test_end writes every logged metric to metrics.json.
                self.log("test/tag_map", mean_average_precision(
                    torch.tensor([r["logits"] for r in rows]), torch.tensor([r["targets"] for r in rows])),
                    rank_zero_only=True)
        if self.llm is None:
            return
        self._predictions = self._gather(self._predictions)
        if self._candidates:
            self.test_results.update(self._classification_metrics())
        if self.trainer.is_global_zero and self._predictions:
            from bridgebench.metrics import caption_metrics

            preds = [r["prediction"] for r in self._predictions]
            refs = [r["references"] for r in self._predictions]
            train = self._training_captions()
            for mode in self.eval_spec.metric_modes:
                # Non-standard modes prefix their names (musilingo/..., lpmc/...).
                self.test_results.update(caption_metrics(preds, refs, mode=mode, train_captions=train))
            if self.eval_spec.attribute_vocabulary:
                self.test_results.update(attribute_accuracy(self._predictions, self.eval_spec.attribute_vocabulary))
        for name, value in self.test_results.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.log(f"test/{name}", float(value), rank_zero_only=True)

    def on_test_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        from bridgebench.metrics import write_results

        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        for name, value in self.test_results.items():
            metrics.setdefault(f"test/{name}", value)
        metrics["run"] = {"encoder": self.specs["encoder"].name, "bridge": self.specs["bridge"].name,
                          "llm": self.specs["llm"].name, "objectives": self.objectives,
                          "trainable_params": sum(p.numel() for p in self.parameters() if p.requires_grad)}
        rows = sorted(self._predictions, key=lambda r: str(r["id"]))
        paths = write_results(self.trainer.default_root_dir, metrics, rows)
        rank_zero_info(f"wrote {paths[0]} and {len(rows)} predictions to {paths[1]}")

    def _training_captions(self) -> Optional[list[str]]:
        """Training targets, for the novel-vocabulary figures (None when the data is not a manifest)."""
        dm = getattr(self.trainer, "datamodule", None)
        clips = getattr(dm, "_clips", None)
        if not clips:
            return None
        split = dm.splits["train"]
        out = [c for clip in clips if clip.split == split for c in clip.captions]
        out += [qa["answer"] for clip in clips if clip.split == split for qa in clip.qa]
        return out or None

    # === Classification by vocabulary ranking (MINT; LAVIS _predict_class) ===

    def _classification_candidates(self) -> list[str]:
        label = self.eval_spec.classify_label
        if not label or self.llm is None:
            return []
        if self.eval_spec.classify_candidates:
            return list(self.eval_spec.classify_candidates)
        dm = getattr(self.trainer, "datamodule", None)
        clips = getattr(dm, "_clips", None) or []
        split = dm.splits["test"] if dm is not None else "test"
        values = set()
        for clip in clips:
            if clip.split == split and label in clip.labels:
                v = clip.labels[label]
                values.update(v if isinstance(v, list) else [v])
        return sorted(str(v) for v in values)

    @torch.no_grad()
    def _rank_candidates(self, batch: dict, encoded: tuple) -> None:
        label = self.eval_spec.classify_label
        instruction = [self.eval_spec.classify_instruction] * len(batch["id"])
        text = {k: v.to(self.device) for k, v in self.data_contract().text(instruction).items()}
        soft, soft_mask = self.bridge(encoded[0].float(), encoded[1], text)
        nll, counts = self.llm.candidate_nll(soft, soft_mask, text, self._candidates)
        for i, clip_id in enumerate(batch["id"]):
            truth = batch["labels"][i].get(label)
            self._ranked.append({"id": clip_id, "nll": nll[i].cpu(), "counts": counts[i].cpu(), "truth": truth})

    def _classification_metrics(self) -> dict:
        from bridgebench.metrics import classification_metrics, rank_classes

        rows = {r["id"]: r for r in self._gather(self._ranked) if r["truth"] is not None}
        if not rows:
            return {}
        rows = list(rows.values())
        ranking = rank_classes(torch.stack([r["nll"] for r in rows]), torch.stack([r["counts"] for r in rows]))
        index = {c: i for i, c in enumerate(self._candidates)}
        label = self.eval_spec.classify_label
        multilabel = isinstance(rows[0]["truth"], list)
        if multilabel:
            targets = torch.zeros(len(rows), len(index), dtype=torch.long)
            for n, r in enumerate(rows):
                for v in r["truth"]:
                    targets[n, index[str(v)]] = 1
        else:
            targets = torch.tensor([index.get(str(r["truth"]), -1) for r in rows])
        out = classification_metrics(ranking, targets, multilabel=multilabel)
        return {f"classify_{label}_{k}": 100.0 * v if k.startswith("accuracy") else v for k, v in out.items()}

    def _gather(self, rows: list) -> list:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            return [r for part in gathered for r in part]
        return rows

    # === Stage-1 evaluation: retrieval and zero-shot classification ===

    def _collect_retrieval(self, batch: dict) -> None:
        if self.stage1 is None or "atc" not in self.stage1.objectives:
            return
        feats, mask = self.encode(batch)
        feats = feats.float()
        audio = self.stage1.encode_audio(self.bridge, feats, mask).cpu()
        keep = self.eval_spec.rerank_k > 0
        for i, clip_id in enumerate(batch["id"]):
            row = {"id": clip_id, "audio": audio[i], "references": batch["references"][i],
                   "labels": batch.get("labels", [{}] * len(batch["id"]))[i]}
            if keep:  # ATM re-ranking needs the clip's encoder features
                row["feats"], row["mask"] = feats[i].cpu(), mask[i].cpu()
            self._retrieval.append(row)

    def _retrieval_metrics(self, stage: str) -> dict[str, float]:
        rows, self._retrieval = self._retrieval, []
        if self.stage1 is None or "atc" not in self.stage1.objectives:
            return {}
        rows = self._gather(rows)
        unique = {}
        for row in rows:  # qa sets and distributed padding repeat clips
            unique.setdefault(row["id"], row)
        rows = list(unique.values())
        if not rows:
            return {}
        texts, owner = [], []
        for a, row in enumerate(rows):
            texts += row["references"]
            owner += [a] * len(row["references"])
        audio = torch.stack([r["audio"] for r in rows]).to(self.device)
        text_ids, text_mask, text_feats = self._encode_texts(texts)
        sim = self.stage1.similarity(audio, text_feats).float().cpu()
        sim_t2a = None
        k = self.eval_spec.rerank_k
        if k > 0 and "atm" in self.stage1.objectives:
            def match(a_idx, t_idx):
                return self._match(rows, a_idx, text_ids[t_idx], text_mask[t_idx])

            sim_t2a = rerank(sim.t(), k, lambda t, a: match(a, t)).t()
            sim = rerank(sim, k, match)
        metrics = recall_at_k(sim, torch.tensor(owner), sim_t2a=sim_t2a)
        label = self.eval_spec.zero_shot_label
        if label and all(label in r["labels"] for r in rows):
            classes = sorted({str(r["labels"][label]) for r in rows})
            prompts = [self.eval_spec.zero_shot_prompt.format(label=c) for c in classes]
            _, _, class_feats = self._encode_texts(prompts)
            truth = torch.tensor([classes.index(str(r["labels"][label])) for r in rows])
            metrics[f"zero_shot_acc_{label}"] = zero_shot_accuracy(
                self.stage1.similarity(audio, class_feats).float().cpu(), truth)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, rank_zero_only=True)
        return metrics

    @torch.no_grad()
    def _encode_texts(self, texts: list[str], chunk: int = 256):
        ids, masks, feats = [], [], []
        for i in range(0, len(texts), chunk):
            tok = self.stage1.text_processor(texts[i:i + chunk])
            width = self.stage1.text_processor.max_tokens
            pad = width - tok["s1_ids"].shape[1]
            ids.append(torch.nn.functional.pad(tok["s1_ids"], (0, pad)))
            masks.append(torch.nn.functional.pad(tok["s1_mask"], (0, pad)))
            feats.append(self.stage1.encode_text(self.bridge, tok["s1_ids"].to(self.device),
                                                 tok["s1_mask"].to(self.device)))
        return torch.cat(ids), torch.cat(masks), torch.cat(feats)

    @torch.no_grad()
    def _match(self, rows, audio_idx, ids, mask, chunk: int = 64) -> torch.Tensor:
        scores = []
        for i in range(0, len(audio_idx), chunk):
            sel = audio_idx[i:i + chunk].tolist()
            feats = torch.nn.utils.rnn.pad_sequence([rows[a]["feats"] for a in sel], batch_first=True)
            fmask = torch.nn.utils.rnn.pad_sequence([rows[a]["mask"] for a in sel], batch_first=True)
            scores.append(self.stage1.match_scores(self.bridge, feats.to(self.device), fmask.to(self.device),
                                                   ids[i:i + chunk].to(self.device),
                                                   mask[i:i + chunk].to(self.device)).float().cpu())
        return torch.cat(scores)

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
        o = self.optim
        scales = {"encoder": o.encoder_lr_scale, "projection": o.projection_lr_scale, "rest": 1.0}
        groups: dict[tuple[str, bool], list] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                part = ("encoder" if name.startswith("encoder.") else
                        "projection" if name.startswith("bridge.proj.") else "rest")
                groups.setdefault((part, p.ndim >= 2), []).append(p)
        params = [p for ps in groups.values() for p in ps]
        param_groups = [
            {"params": ps, "weight_decay": o.weight_decay if decayed else 0.0, "lr": o.lr * scales[part]}
            for (part, decayed), ps in sorted(groups.items())
        ]
        fused = all(p.is_cuda for p in params)
        opt = torch.optim.AdamW(param_groups, lr=o.lr, betas=tuple(o.betas), fused=fused or None)
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
        # Random state at this step, so a resumed run draws the same dropout masks and ATM negatives.
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["bridgebench"] = {
            "trainable_keys": sorted(keep),
            "components": {"encoder": self.encoder.identity(), "llm": self.llm.identity() if self.llm else None,
                           "bridge": self.specs["bridge"].name},
        }
        if self.tagger is not None:
            checkpoint["bridgebench"]["tag_vocabulary"] = self.tagger.vocabulary

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("bridgebench", {}).get("tag_vocabulary")
        if self.tagger is not None and saved is not None and saved != self.tagger.vocabulary:
            raise ConfigError(
                f"checkpoint's tag vocabulary ({len(saved)} tags) differs from this data's ({len(self.tagger.vocabulary)}); "
                "test with the manifest and model.stage1.tag_min_count it was trained with"
            )
        missing = sorted(self.trainable_state_keys() - set(checkpoint["state_dict"]))
        if missing:
            raise ConfigError(
                f"checkpoint lacks {len(missing)} trainable weights of this model (first: {missing[0]}); "
                "it was saved from a different configuration"
            )
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
        state = getattr(self, "_rng_to_restore", None)
        if state:  # after the sanity check, which draws random numbers of its own
            torch.set_rng_state(state["torch"])
            random.setstate(state["python"])
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])
        self._rng_to_restore = None

    def load_stage1(self, path: str, parts: tuple[str, ...] = ("bridge", "encoder"),
                    required: tuple[str, ...] = ("bridge",), option: str = "model.stage1_checkpoint") -> None:
        """Initialise the bridge and/or a stage-1-trained encoder from a stage-1 checkpoint."""
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line report
            raise ConfigError(f"{option}: cannot read '{path}': {type(err).__name__}: {err}") from None
        state = ckpt.get("state_dict", ckpt)
        own = self.state_dict()
        ignored = self.bridge.stage1_only_keys()
        load, skipped = {}, []
        for key, value in state.items():
            if not key.startswith(tuple(f"{p}." for p in parts)):
                skipped.append(key)  # stage-1 heads (contrastive projections, matching head, ...)
                continue
            if key not in own:
                if key.startswith("bridge.") and not any(f in key for f in ignored):
                    raise ConfigError(
                        f"{option}: '{path}' has bridge weight '{key}' that this "
                        f"'{self.specs['bridge'].name}' bridge lacks; the stage-1 run used another bridge shape"
                    )
                skipped.append(key)
                continue
            if own[key].shape != value.shape:
                raise ConfigError(
                    f"{option}: '{key}' has shape {tuple(value.shape)} in '{path}' but "
                    f"{tuple(own[key].shape)} here; match the stage-1 bridge settings (queries, widths, window)"
                )
            load[key] = value
        fresh = sorted(k for k in self.trainable_state_keys() if k.startswith("bridge.") and k not in load)
        for part in required:
            if not any(k.startswith(f"{part}.") for k in load):
                raise ConfigError(f"{option}: '{path}' holds no {part} weights")
        self.load_state_dict(load, strict=False)
        rank_zero_info(
            f"{option.removeprefix('model.')} {path}: loaded {len(load)} tensors, skipped {len(skipped)} stage-1-only, "
            f"new in stage 2: {', '.join(fresh) if fresh else 'none'}"
        )
