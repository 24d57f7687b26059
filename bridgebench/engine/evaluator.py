"""Test-time evaluation: scorers that collect per batch and score at the end of the epoch.

``TestEvaluator`` holds the scorers a run's config enables and owns their accumulators; the module
calls ``collect`` from its test (and validation) step and ``compute`` at the epoch's end. A new
metric is a new ``Scorer`` (``enabled``, ``collect``, ``compute``) and one entry in ``SCORERS``:
the LightningModule does not change. Scoring itself is in ``bridgebench.evaluation`` (pure
functions); here are only the model calls and the gathering across DDP ranks.

Scorers: ``generation`` (generated text -> caption/QA metrics, attribute accuracy, the predictions
file), ``classification`` (rank a label's classes by LLM likelihood, MINT/LAVIS), ``retrieval``
(stage 1: R@k both ways with optional ATM re-ranking, zero-shot classification), ``tagging`` (mAP).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from bridgebench.evaluation.attributes import attribute_accuracy
from bridgebench.evaluation.ranking import (
    classification_metrics,
    mean_average_precision,
    rank_classes,
    recall_at_k,
    rerank,
    zero_shot_accuracy,
)


def gather(rows: list) -> list:
    """Every rank's rows (one process: the rows themselves)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, rows)
        return [r for part in gathered for r in part]
    return rows


def unique_by_id(rows: list[dict]) -> list[dict]:
    """One row per clip id (qa sets and distributed padding repeat clips), first seen kept."""
    seen: dict = {}
    for row in rows:
        seen.setdefault(row["id"], row)
    return list(seen.values())


class Scorer:
    """One kind of test measurement."""

    def __init__(self, module):
        self.module = module
        self.rows: list[dict] = []

    def enabled(self, stage: str) -> bool:
        raise NotImplementedError

    def start(self, stage: str) -> None:
        self.rows = []

    def collect(self, batch: dict, encoded: tuple) -> None:
        raise NotImplementedError

    def compute(self, stage: str) -> dict[str, Any]:
        raise NotImplementedError


class GenerationScorer(Scorer):
    """Generated text for every test clip: the predictions file, caption/QA metrics in each
    ``evaluation.metric_modes`` convention, and closed-vocabulary attribute accuracy."""

    def enabled(self, stage: str) -> bool:
        return stage == "test" and self.module.llm is not None

    def collect(self, batch: dict, encoded: tuple) -> None:
        m = self.module
        soft = m.bridge(encoded[0].float(), encoded[1], batch["text"])
        labels = batch.get("labels", [{}] * len(batch["id"]))
        for i, text in enumerate(m.generate(batch, soft)):
            self.rows.append({"id": batch["id"][i], "instruction": batch["instruction"][i], "prediction": text,
                              "references": batch["references"][i], "labels": labels[i]})

    def compute(self, stage: str) -> dict[str, Any]:
        from bridgebench.evaluation.text import caption_metrics

        self.rows = sorted(gather(self.rows), key=lambda r: str(r["id"]))
        spec = self.module.eval_spec
        if not self.rows or not self.module.is_global_zero():
            return {}
        preds = [r["prediction"] for r in self.rows]
        refs = [r["references"] for r in self.rows]
        dm = self.module.datamodule()
        train = dm.target_texts("train") if dm is not None and hasattr(dm, "target_texts") else None
        out: dict[str, Any] = {}
        for mode in spec.metric_modes:  # non-standard modes prefix their names (musilingo/..., lpmc/...)
            out.update(caption_metrics(preds, refs, mode=mode, train_captions=train or None))
        if spec.attribute_vocabulary:
            out.update(attribute_accuracy(self.rows, spec.attribute_vocabulary))
        return out


class ClassificationScorer(Scorer):
    """Classification by vocabulary ranking (MINT; LAVIS ``_predict_class``): the classes of
    ``evaluation.classify_label`` ranked by the LLM's NLL of each class name, after the instruction."""

    candidates: list[str] = []

    def enabled(self, stage: str) -> bool:
        return stage == "test" and self.module.llm is not None and bool(self.module.eval_spec.classify_label)

    def start(self, stage: str) -> None:
        super().start(stage)
        spec = self.module.eval_spec
        dm = self.module.datamodule()
        if spec.classify_candidates:
            self.candidates = list(spec.classify_candidates)
        else:
            self.candidates = dm.label_values("test", spec.classify_label) if dm is not None else []

    @torch.no_grad()
    def collect(self, batch: dict, encoded: tuple) -> None:
        if not self.candidates:
            return
        m, spec = self.module, self.module.eval_spec
        instruction = [spec.classify_instruction] * len(batch["id"])
        text = {k: v.to(m.device) for k, v in m.data_contract().text(instruction).items()}
        soft, soft_mask = m.bridge(encoded[0].float(), encoded[1], text)
        nll, counts = m.llm.candidate_nll(soft, soft_mask, text, self.candidates)
        for i, clip_id in enumerate(batch["id"]):
            truth = batch["labels"][i].get(spec.classify_label)
            self.rows.append({"id": clip_id, "nll": nll[i].cpu(), "counts": counts[i].cpu(), "truth": truth})

    def compute(self, stage: str) -> dict[str, Any]:
        rows = [r for r in unique_by_id(gather(self.rows)) if r["truth"] is not None]
        if not rows or not self.candidates:
            return {}
        ranking = rank_classes(torch.stack([r["nll"] for r in rows]), torch.stack([r["counts"] for r in rows]))
        index = {c: i for i, c in enumerate(self.candidates)}
        label = self.module.eval_spec.classify_label
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


class RetrievalScorer(Scorer):
    """Stage 1 (ATC): audio<->text R@k over every caption of the split, optionally re-ranked by ATM
    (LAVIS: top 128), and zero-shot classification of ``evaluation.zero_shot_label``."""

    def enabled(self, stage: str) -> bool:
        s1 = self.module.stage1
        return stage in ("val", "test") and s1 is not None and "atc" in s1.objectives

    def collect(self, batch: dict, encoded: tuple) -> None:
        m = self.module
        feats, mask = encoded[0].float(), encoded[1]
        audio = m.stage1.encode_audio(m.bridge, feats, mask).cpu()
        keep = m.eval_spec.rerank_k > 0
        labels = batch.get("labels", [{}] * len(batch["id"]))
        for i, clip_id in enumerate(batch["id"]):
            row = {"id": clip_id, "audio": audio[i], "references": batch["references"][i], "labels": labels[i]}
            if keep:  # ATM re-ranking needs the clip's encoder features
                row["feats"], row["mask"] = feats[i].cpu(), mask[i].cpu()
            self.rows.append(row)

    def compute(self, stage: str) -> dict[str, Any]:
        m, spec = self.module, self.module.eval_spec
        rows = unique_by_id(gather(self.rows))
        self.rows = []
        if not rows:
            return {}
        texts, owner = [], []
        for a, row in enumerate(rows):
            texts += row["references"]
            owner += [a] * len(row["references"])
        audio = torch.stack([r["audio"] for r in rows]).to(m.device)
        text_ids, text_mask, text_feats = encode_texts(m, texts)
        sim = m.stage1.similarity(audio, text_feats).float().cpu()
        sim_t2a = None
        k = spec.rerank_k
        if k > 0 and "atm" in m.stage1.objectives:
            def match(a_idx, t_idx):
                return _match(m, rows, a_idx, text_ids[t_idx], text_mask[t_idx])

            sim_t2a = rerank(sim.t(), k, lambda t, a: match(a, t)).t()
            sim = rerank(sim, k, match)
        metrics = recall_at_k(sim, torch.tensor(owner), sim_t2a=sim_t2a)
        label = spec.zero_shot_label
        if label and all(label in r["labels"] for r in rows):
            classes = sorted({str(r["labels"][label]) for r in rows})
            prompts = [spec.zero_shot_prompt.format(label=c) for c in classes]
            _, _, class_feats = encode_texts(m, prompts)
            truth = torch.tensor([classes.index(str(r["labels"][label])) for r in rows])
            metrics[f"zero_shot_acc_{label}"] = zero_shot_accuracy(
                m.stage1.similarity(audio, class_feats).float().cpu(), truth)
        return metrics


class TagScorer(Scorer):
    """The ``tag`` objective's head on the test clips: macro mAP over the tags that occur."""

    def enabled(self, stage: str) -> bool:
        return stage == "test" and self.module.tagger is not None

    def collect(self, batch: dict, encoded: tuple) -> None:
        tagger = self.module.tagger
        logits = tagger(encoded[0].float(), encoded[1])
        targets = tagger.targets(batch["tags"], logits.device)
        self.rows.extend({"logits": lg.tolist(), "targets": tg.tolist()} for lg, tg in zip(logits, targets))

    def compute(self, stage: str) -> dict[str, Any]:
        rows = gather(self.rows)
        if not rows:
            return {}
        return {"tag_map": mean_average_precision(torch.tensor([r["logits"] for r in rows]),
                                                  torch.tensor([r["targets"] for r in rows]))}


SCORERS = {"generation": GenerationScorer, "classification": ClassificationScorer,
           "retrieval": RetrievalScorer, "tagging": TagScorer}


class TestEvaluator:
    """The enabled scorers of one stage (``val`` or ``test``)."""

    def __init__(self, module):
        self.scorers = {name: cls(module) for name, cls in SCORERS.items()}
        self.active: list[Scorer] = []

    def start(self, stage: str) -> None:
        self.active = [s for s in self.scorers.values() if s.enabled(stage)]
        for scorer in self.active:
            scorer.start(stage)

    def collect(self, batch: dict, encoded: tuple) -> None:
        for scorer in self.active:
            scorer.collect(batch, encoded)

    def compute(self, stage: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for scorer in self.active:
            out.update(scorer.compute(stage))
        return out

    @property
    def predictions(self) -> list[dict]:
        return self.scorers["generation"].rows


@torch.no_grad()
def encode_texts(module, texts: list[str], chunk: int = 256):
    """Stage-1 text features of ``texts`` (and their padded ids and masks, for ATM re-ranking)."""
    ids, masks, feats = [], [], []
    processor = module.stage1.text_processor
    for i in range(0, len(texts), chunk):
        tok = processor(texts[i:i + chunk])
        pad = processor.max_tokens - tok["s1_ids"].shape[1]
        ids.append(torch.nn.functional.pad(tok["s1_ids"], (0, pad)))
        masks.append(torch.nn.functional.pad(tok["s1_mask"], (0, pad)))
        feats.append(module.stage1.encode_text(module.bridge, tok["s1_ids"].to(module.device),
                                               tok["s1_mask"].to(module.device)))
    return torch.cat(ids), torch.cat(masks), torch.cat(feats)


@torch.no_grad()
def _match(module, rows, audio_idx, ids, mask, chunk: int = 64) -> torch.Tensor:
    scores = []
    for i in range(0, len(audio_idx), chunk):
        sel = audio_idx[i:i + chunk].tolist()
        feats = torch.nn.utils.rnn.pad_sequence([rows[a]["feats"] for a in sel], batch_first=True)
        fmask = torch.nn.utils.rnn.pad_sequence([rows[a]["mask"] for a in sel], batch_first=True)
        scores.append(module.stage1.match_scores(module.bridge, feats.to(module.device), fmask.to(module.device),
                                                 ids[i:i + chunk].to(module.device),
                                                 mask[i:i + chunk].to(module.device)).float().cpu())
    return torch.cat(scores)


def classification_of(module) -> Optional[list[str]]:
    """The candidates the classification scorer ranks (for reports)."""
    return module.evaluator.scorers["classification"].candidates
