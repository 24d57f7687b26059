"""MusiLingo's adapter: non-overlapping temporal average pooling, then one linear layer.

Windows of ``window`` frames are averaged (only over real frames; padding is masked out), giving
ceil(T/window) tokens with the remainder averaged into one last token; MusiLingo pools before
projecting (mean over layers -> window mean -> ``llama_proj``). Paper window: 325 frames of MERT at
75 Hz, i.e. 3 tokens for a 10 s clip.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from bridgebench.bridges.base import Bridge


class LinearPoolBridge(Bridge):
    def __init__(self, in_dim: int, out_dim: int, window: int = 325):
        super().__init__()
        self.window = window
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, features, feature_mask, text=None):
        b, t, d = features.shape
        n = math.ceil(t / self.window)
        pad = n * self.window - t
        m = feature_mask.to(features.dtype)
        x = F.pad(features * m.unsqueeze(-1), (0, 0, 0, pad)).view(b, n, self.window, d)
        w = F.pad(m, (0, pad)).view(b, n, self.window)
        counts = w.sum(-1)
        pooled = x.sum(2) / counts.clamp_min(1).unsqueeze(-1)
        return self.proj(pooled), counts > 0
