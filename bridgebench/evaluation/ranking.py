"""Ranking metrics (pure scoring): retrieval R@k and zero-shot accuracy from similarity matrices,
classification by candidate ranking, and tag mAP.

Classification by candidate ranking (LAVIS ``_predict_class``): :func:`rank_classes` ranks candidates by
ascending summed token NLL (EOS included, as LAVIS) and by ascending mean NLL per token (length-normalised);
:func:`classification_metrics` gives accuracy (single-label) or macro PR-AUC / ROC-AUC (multi-label, from
the scores -NLL, via torchmetrics).

Retrieval conventions follow LAVIS's ``_report_metrics`` (anchors.md §1.8): audio->text counts the best rank
among all of a clip's captions (Clotho has five), text->audio the rank of the caption's one clip;
R@1/5/10 in percent, both directions, and their mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def recall_at_k(sim: torch.Tensor, text_to_audio: torch.Tensor, ks=(1, 5, 10),
                sim_t2a: torch.Tensor | None = None) -> dict[str, float]:
    """``sim[a, t]`` similarities; ``text_to_audio[t]`` = index of caption t's clip. ``sim_t2a``
    (same layout) ranks the text->audio direction when it differs (re-ranking is per direction)."""
    n_audio, n_text = sim.shape
    correct = text_to_audio.unsqueeze(0) == torch.arange(n_audio).unsqueeze(1)  # [A, T]
    # audio -> text: rank of the best-ranked correct caption
    order = sim.argsort(dim=1, descending=True)
    hit = torch.gather(correct, 1, order)
    a2t_rank = hit.float().argmax(dim=1)
    # text -> audio: rank of the caption's clip
    order_t = (sim if sim_t2a is None else sim_t2a).t().argsort(dim=1, descending=True)
    t2a_rank = (order_t == text_to_audio.unsqueeze(1)).float().argmax(dim=1)
    out = {}
    for k in ks:
        out[f"r{k}_a2t"] = 100.0 * (a2t_rank < k).float().mean().item()
        out[f"r{k}_t2a"] = 100.0 * (t2a_rank < k).float().mean().item()
    out["r_mean"] = sum(out.values()) / len(out)
    return out


def rerank(sim: torch.Tensor, k: int, score_fn) -> torch.Tensor:
    """LAVIS-style re-ranking: keep each row's top-k, rescore them with ``score_fn(rows, cols)`` + sim,
    set everything else to -100."""
    out = torch.full_like(sim, -100.0)
    k = min(k, sim.shape[1])
    top = sim.topk(k, dim=1).indices
    rows = torch.arange(sim.shape[0]).unsqueeze(1).expand_as(top)
    scores = score_fn(rows.reshape(-1), top.reshape(-1)).reshape(top.shape).to(sim.dtype)
    out.scatter_(1, top, scores + torch.gather(sim, 1, top))
    return out


def zero_shot_accuracy(sim: torch.Tensor, labels: torch.Tensor) -> float:
    """``sim[clip, class]``; accuracy of the most similar class."""
    return 100.0 * (sim.argmax(dim=1) == labels).float().mean().item()


def rank_classes(
    scores_fn: Callable[[list[int]], tuple[Any, Any]] | Any,
    token_counts: Any = None,
    *,
    n_candidates: int | None = None,
    n_segments: int = 1,
) -> dict[str, Any]:
    """Rank candidate labels by their NLL under the model (LAVIS ``_predict_class``).

    ``scores_fn`` is either an (N, C) array of summed token NLL per (sample, candidate), with
    ``token_counts`` (N, C) or (C,) the number of scored tokens (EOS included), or a callable
    ``scores_fn(candidate_indices) -> (nll_sum[N, k], token_counts[N, k])`` that is called once per
    segment of ``n_candidates`` split into ``n_segments`` chunks (LAVIS' ``n_segments``).

    Returns float64 tensors ``nll_sum``, ``nll_mean`` (sum / tokens), ``token_counts`` (N, C); the
    predictions ``pred_sum`` (LAVIS: lowest summed NLL) and ``pred_mean`` (length-normalised) (N,);
    the full ascending orders ``order_sum``/``order_mean`` (N, C). Ties go to the lower index.
    """
    if callable(scores_fn):
        if n_candidates is None:
            raise ValueError("n_candidates is needed with a scoring function")
        chunks = [c.tolist() for c in torch.arange(n_candidates).tensor_split(max(1, n_segments)) if len(c)]
        sums, counts = [], []
        for idx in chunks:
            s, c = scores_fn(idx)
            s = torch.as_tensor(s, dtype=torch.float64)
            sums.append(s)
            counts.append(torch.as_tensor(c, dtype=torch.float64).expand_as(s))
        nll_sum, counts_t = torch.cat(sums, dim=1), torch.cat(counts, dim=1)
    else:
        nll_sum = torch.as_tensor(scores_fn, dtype=torch.float64)
        if token_counts is None:
            raise ValueError("token_counts is needed with an NLL array")
        counts_t = torch.as_tensor(token_counts, dtype=torch.float64).expand_as(nll_sum)
    if nll_sum.dim() != 2:
        raise ValueError(f"summed NLL must be (samples, candidates), got shape {tuple(nll_sum.shape)}")
    if (counts_t <= 0).any():
        raise ValueError("every candidate needs at least one scored token")
    nll_mean = nll_sum / counts_t
    order_sum = torch.argsort(nll_sum, dim=1, stable=True)
    order_mean = torch.argsort(nll_mean, dim=1, stable=True)
    return {
        "nll_sum": nll_sum, "nll_mean": nll_mean, "token_counts": counts_t,
        "pred_sum": order_sum[:, 0], "pred_mean": order_mean[:, 0],
        "order_sum": order_sum, "order_mean": order_mean,
    }


def _unit_scores(scores):
    """Per-label min-max rescale to [0, 1] in float64: the same order and ties, so AP and AUROC are
    unchanged, and torchmetrics does not apply a sigmoid (which saturates for NLL-sized scores)."""
    lo, hi = scores.min(dim=0).values, scores.max(dim=0).values
    return (scores - lo) / (hi - lo).clamp_min(1e-300)


def classification_metrics(ranking: dict[str, Any], targets: Any, multilabel: bool = False) -> dict[str, float]:
    """Metrics of a :func:`rank_classes` result for both scorings (suffix ``_sum`` / ``_mean``).

    Single-label: ``targets`` (N,) class indices -> ``accuracy_sum``, ``accuracy_mean``.
    Multi-label (e.g. OpenMIC): ``targets`` (N, C) 0/1 -> macro ``pr_auc_*`` (torchmetrics multilabel
    AveragePrecision) and ``roc_auc_*`` (multilabel AUROC), with score = -NLL of each candidate.
    """
    out: dict[str, float] = {}
    if not multilabel:
        target = torch.as_tensor(targets).long().view(-1)
        for kind in ("sum", "mean"):
            out[f"accuracy_{kind}"] = float((ranking[f"pred_{kind}"] == target).double().mean())
        return out
    from torchmetrics.functional.classification import (
        multilabel_auroc,
        multilabel_average_precision,
    )

    target = torch.as_tensor(targets).long()
    num_labels = target.shape[1]
    for kind in ("sum", "mean"):
        preds = _unit_scores(-ranking[f"nll_{kind}"])
        out[f"pr_auc_{kind}"] = float(
            multilabel_average_precision(preds, target, num_labels=num_labels, average="macro"))
        out[f"roc_auc_{kind}"] = float(multilabel_auroc(preds, target, num_labels=num_labels, average="macro"))
    return out


def mean_average_precision(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mAP (%) over the tags that occur in ``targets`` (torchmetrics)."""
    from torchmetrics.functional.classification import multilabel_average_precision

    present = targets.sum(0) > 0
    if not present.any():
        return float("nan")
    value = multilabel_average_precision(logits[:, present].float(), targets[:, present].long(),
                                         num_labels=int(present.sum()), average="macro")
    return 100.0 * float(value)
