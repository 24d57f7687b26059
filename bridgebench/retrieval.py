"""Retrieval and zero-shot classification metrics from an audio x text similarity matrix.

Conventions follow LAVIS's ``_report_metrics`` (anchors.md §1.8): audio->text counts the best rank
among all of a clip's captions (Clotho has five), text->audio the rank of the caption's one clip;
R@1/5/10 in percent, both directions, and their mean.
"""

from __future__ import annotations

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
