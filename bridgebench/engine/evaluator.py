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

from bridgebench.evaluation.answers import answer_accuracy
from bridgebench.evaluation.attributes import attribute_accuracy, caption_answer_agreement
from bridgebench.evaluation.ranking import (
    classification_metrics,
    mean_average_precision,
    rank_classes,
    recall_at_k,
    rerank,
    zero_shot_accuracy,
)
from bridgebench.runtime.distributed import rank_and_world


def gather(rows: list) -> list:
    """Every rank's rows (one process: the rows themselves)."""
    world = rank_and_world()[1]
    if world > 1:
        gathered = [None] * world
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
    """Generated text for every test example: the predictions file; for captions, caption metrics in
    each ``evaluation.metric_modes`` convention and closed-vocabulary attribute accuracy; for
    questions beside captions, the ``evaluation.qa_metric_modes`` metrics over all questions (a
    question-only task keeps ``metric_modes`` and the usual names); per question type, those
    metrics and answer accuracy."""

    def enabled(self, stage: str) -> bool:
        return stage == "test" and self.module.llm is not None

    def collect(self, batch: dict, encoded: tuple) -> None:
        m = self.module
        soft = m.bridge(encoded[0].float(), encoded[1], batch["text"])
        labels = batch.get("labels", [{}] * len(batch["id"]))
        qa_types = batch.get("qa_type", [None] * len(batch["id"]))
        examples = batch.get("example", [None] * len(batch["id"]))
        for i, text in enumerate(m.generate(batch, soft)):
            row = {"id": batch["id"][i], "example": examples[i], "instruction": batch["instruction"][i],
                   "prediction": text, "references": batch["references"][i], "labels": labels[i]}
            if qa_types[i] is not None:
                row["qa_type"] = qa_types[i]
            self.rows.append(row)

    def compute(self, stage: str) -> dict[str, Any]:
        rows = gather(self.rows)
        # Under DDP the sampler pads the last round with repeats of the first examples so every rank
        # steps equally; each example is scored once (its dataset index; None: a batch without one).
        seen = set()
        self.rows = []
        for row in rows:
            key = row.pop("example")
            if key is None or key not in seen:
                seen.add(key)
                self.rows.append(row)
        self.rows.sort(key=lambda r: (str(r["id"]), r.get("qa_type") or ""))
        if not self.rows or not self.module.is_global_zero():
            return {}
        spec = self.module.eval_spec
        captions = [r for r in self.rows if "qa_type" not in r]
        answers = [r for r in self.rows if "qa_type" in r]
        dm = self.module.datamodule()
        train = dm.target_texts("train") if dm is not None and hasattr(dm, "target_texts") else None
        out: dict[str, Any] = {}
        if captions:
            out.update(_text_metrics(captions, spec.metric_modes, train, ""))
            if spec.attribute_vocabulary:
                out.update(attribute_accuracy(captions, spec.attribute_vocabulary))
        if answers and not captions:  # a question-answering task: its metrics under the usual names
            out.update(_text_metrics(answers, spec.metric_modes, train, ""))
        elif answers:
            out.update(_text_metrics(answers, spec.qa_metric_modes, None, "qa/"))
        if answers:
            for qa_type in sorted({r["qa_type"] for r in answers} - {"qa"}):  # "qa": a question without a type
                typed = [r for r in answers if r["qa_type"] == qa_type]
                out.update(_text_metrics(typed, spec.qa_metric_modes, None, f"qa/{qa_type}/"))
            if spec.attribute_vocabulary:
                out.update(answer_accuracy(answers))
                out.update(caption_answer_agreement(captions, answers))
        return out


def _text_metrics(rows: list[dict], modes: list[str], train: Optional[list[str]], prefix: str) -> dict[str, Any]:
    from bridgebench.evaluation.text import caption_metrics

    out: dict[str, Any] = {}
    preds, refs = [r["prediction"] for r in rows], [r["references"] for r in rows]
    for mode in modes:  # non-standard modes prefix their names (musilingo/..., lpmc/...)
        out.update({prefix + k: v for k, v in caption_metrics(preds, refs, mode=mode, train_captions=train).items()})
    return out


class ClassificationScorer(Scorer):
    """Classification by vocabulary ranking (MINT; LAVIS ``_predict_class``): for each entry of
    ``evaluation.classify``, the label's classes ranked by the LLM's NLL of each class name after
    the entry's instruction."""

    def __init__(self, module):
        super().__init__(module)
        self.candidates: dict[str, list[str]] = {}
        self.ranked: set = set()

    def enabled(self, stage: str) -> bool:
        return stage == "test" and self.module.llm is not None and bool(self.module.eval_spec.classify)

    def start(self, stage: str) -> None:
        super().start(stage)
        self.ranked = set()
        dm = self.module.datamodule()
        self.candidates = {c.label: list(c.candidates) if c.candidates else
                           (dm.label_values("test", c.label) if dm is not None else [])
                           for c in self.module.eval_spec.classify}

    @torch.no_grad()
    def collect(self, batch: dict, encoded: tuple) -> None:
        m = self.module
        # A qa set repeats each clip (its caption, then each question, in other batches): rank it once.
        keep = [batch["id"].index(c) for c in dict.fromkeys(batch["id"]) if c not in self.ranked]
        if not keep:
            return
        self.ranked.update(batch["id"][i] for i in keep)
        feats, mask = encoded[0][keep].float(), encoded[1][keep]
        for spec in m.eval_spec.classify:
            candidates = self.candidates.get(spec.label)
            if not candidates:
                continue
            dm = m.datamodule()
            fixed = getattr(dm, "bridge_instruction", None)  # the instruction ablation holds here too
            text = m.data_contract().text([spec.instruction] * len(keep), None,
                                          None if fixed is None else [fixed] * len(keep))
            text = {k: v.to(m.device) for k, v in text.items()}
            soft, soft_mask = m.bridge(feats, mask, text)
            nll, counts = m.llm.candidate_nll(soft, soft_mask, text, candidates)
            for n, i in enumerate(keep):
                truth = batch["labels"][i].get(spec.label)
                self.rows.append({"id": batch["id"][i], "label": spec.label, "nll": nll[n].cpu(),
                                  "counts": counts[n].cpu(), "truth": truth})

    def compute(self, stage: str) -> dict[str, Any]:
        rows = gather(self.rows)
        out: dict[str, Any] = {}
        for label, candidates in self.candidates.items():
            mine = [r for r in unique_by_id([r for r in rows if r["label"] == label]) if r["truth"] is not None]
            if mine and candidates:
                out.update(_classification(label, candidates, mine))
        return out


def _classification(label: str, candidates: list[str], rows: list[dict]) -> dict[str, Any]:
    ranking = rank_classes(torch.stack([r["nll"] for r in rows]), torch.stack([r["counts"] for r in rows]))
    index = {c: i for i, c in enumerate(candidates)}
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
        self.rows.extend({"id": clip_id, "logits": lg.tolist(), "targets": tg.tolist()}
                         for clip_id, lg, tg in zip(batch["id"], logits, targets))

    def compute(self, stage: str) -> dict[str, Any]:
        rows = unique_by_id(gather(self.rows))
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
