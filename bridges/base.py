"""The bridge protocol: encoder features (+ optional instruction tokens) -> soft prompt.

A bridge is built with ``(in_dim, out_dim)`` taken from the built encoder and LLM, so no width is
typed in a config. ``forward(features[B,T,D_in], mask[B,T], text)`` returns the soft prompt
``[B, N, D_out]`` and its mask ``[B, N]``. ``text`` is the collated text batch; bridges that read
the instruction (``uses_instruction``) find their own tokens in it, made by ``text_processor``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class Bridge(nn.Module):
    uses_instruction: bool = False

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor,
                text: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # A picklable callable instructions -> dict of tensors, for bridges that read the instruction.
    text_processor = None

    def stage1_only_keys(self) -> tuple[str, ...]:
        """Key fragments of stage-1 weights this bridge has no place for (ignored when loading)."""
        return ()
