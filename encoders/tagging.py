"""The `tag` objective: multi-label tagging on the audio encoder's own output.

For an encoder trained from scratch (the demo's ``cnn``), before the bridge sees it: the public
encoders of the three papers arrive pretrained (CLAP on audio-text pairs, MERT and data2vec
self-supervised, PANNs by AudioSet tagging), and an encoder that learns only through a Q-Former's
contrastive loss learns slowly (measured on music-synth: the lead instrument stayed at 31-52% for
probes after 300 stage-1 steps). Tagging is how PANNs were trained: mean- and max-pooled time
tokens -> one linear layer -> a sigmoid per tag, binary cross-entropy. The vocabulary is every tag
that at least ``stage1.tag_min_count`` training clips carry (manifest ``tags``), built when the run
starts and stored in its checkpoints; test reports the macro mean average precision
(``bridgebench.evaluation.ranking.mean_average_precision``).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.nn import functional as F


def tag_vocabulary(tag_lists: list[list[str]], min_count: int) -> list[str]:
    """Tags carried by at least ``min_count`` clips, most frequent first (ties by name)."""
    counts = Counter(t for tags in tag_lists for t in set(tags))
    return sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))


class TagHead(nn.Module):
    """Pooled encoder tokens -> one logit per tag."""

    def __init__(self, width: int, vocabulary: list[str]):
        super().__init__()
        self.vocabulary = list(vocabulary)
        self.index = {t: i for i, t in enumerate(self.vocabulary)}
        self.fc = nn.Linear(2 * width, len(self.vocabulary))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = mask.unsqueeze(-1).to(feats.dtype)
        mean = (feats * valid).sum(1) / valid.sum(1).clamp_min(1.0)
        peak = feats.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        return self.fc(torch.cat([mean, peak], dim=-1))

    def targets(self, tag_lists: list[list[str]], device) -> torch.Tensor:
        out = torch.zeros(len(tag_lists), len(self.vocabulary), device=device)
        for row, tags in enumerate(tag_lists):
            for t in tags:
                if t in self.index:
                    out[row, self.index[t]] = 1.0
        return out

    def loss(self, feats: torch.Tensor, mask: torch.Tensor, tag_lists: list[list[str]]) -> torch.Tensor:
        logits = self(feats, mask)
        return F.binary_cross_entropy_with_logits(logits, self.targets(tag_lists, logits.device))
