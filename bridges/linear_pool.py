"""MusiLingo's adapter: non-overlapping temporal average pooling, then one linear layer.

Windows of ``window`` frames are averaged (only over real frames; padding is masked out), giving
ceil(T/window) tokens with the remainder averaged into one last token; MusiLingo pools before
projecting (mean over layers -> window mean -> ``llama_proj``). Paper window: 325 frames of MERT at
75 Hz, i.e. 3 tokens for a 10 s clip. ``hidden`` puts one GELU layer before that output layer
(LLaVA-1.5's two-layer projector); the output layer stays ``proj`` so checkpoints and the
``output_init`` treat both forms alike. ``tokens`` > 1 maps each pooled window to
that many soft-prompt vectors (ClipCap's prefix mapping: one clip embedding -> K prefix tokens), so a
whole-clip window still gives the LLM several vectors to attend to.
"""

from __future__ import annotations

import math
from typing import Optional

import torch.nn.functional as F
from torch import nn

from bridgebench.bridges.base import Bridge, output_init_problems


def check_options(opts, key: str) -> list[str]:
    """Checks of ``linear_pool`` options beyond their declared ranges."""
    return output_init_problems(opts.output_init, f"{key}.output_init")


class LinearPoolBridge(Bridge):
    def __init__(self, in_dim: int, out_dim: int, window: int = 325, hidden: Optional[int] = None, tokens: int = 1,
                 output_init: str = "default"):
        super().__init__()
        self.output_init = output_init
        self.window = window
        self.tokens = tokens
        self.hidden = nn.Identity() if hidden is None else nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU())
        self.proj = nn.Linear(in_dim if hidden is None else hidden, out_dim * tokens)

    def forward(self, features, feature_mask, text=None):
        b, t, d = features.shape
        n = math.ceil(t / self.window)
        pad = n * self.window - t
        m = feature_mask.to(features.dtype)
        x = F.pad(features * m.unsqueeze(-1), (0, 0, 0, pad)).view(b, n, self.window, d)
        w = F.pad(m, (0, pad)).view(b, n, self.window)
        counts = w.sum(-1)
        pooled = x.sum(2) / counts.clamp_min(1).unsqueeze(-1)
        out = self.proj(self.hidden(pooled)).view(b, n * self.tokens, -1)
        return out, (counts > 0).repeat_interleave(self.tokens, dim=1)

    def output_layer(self) -> nn.Linear:
        return self.proj
