"""The bridge protocol: encoder features (+ optional instruction tokens) -> soft prompt.

A bridge is built with ``(in_dim, out_dim)`` taken from the built encoder and LLM, so no width is
typed in a config. ``forward(features[B,T,D_in], mask[B,T], text)`` returns the soft prompt
``[B, N, D_out]`` and its mask ``[B, N]``. ``text`` is the collated text batch; bridges that read
the instruction (``uses_instruction``) find their own tokens in it, made by ``text_processor``.

What the engine needs from a bridge, declared here instead of read from parameter names:
``output_layer()`` (the layer into the LLM, fresh in stage 2), ``param_groups()`` (which weights
form the groups that ``optimizer.lr_scale`` can scale: ``projection``, and those of
``extra_groups()``, e.g. a Q-Former's ``cross_attention``) and ``init_output()`` (the
``output_init`` option, applied once the LLM's embedding scale is known).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from bridgebench.specs import OUTPUT_INITS


def output_init_problems(value: str, key: str) -> list[str]:
    if value not in OUTPUT_INITS:
        return [f"{key}: unknown '{value}'; choose one of: {', '.join(OUTPUT_INITS)}"]
    return []


class Bridge(nn.Module):
    uses_instruction: bool = False
    output_init: str = "default"

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor,
                text: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # A picklable callable instructions -> dict of tensors, for bridges that read the instruction.
    text_processor = None

    def stage1_only_keys(self) -> tuple[str, ...]:
        """Key fragments of stage-1 weights this bridge has no place for (ignored when loading)."""
        return ()

    def output_layer(self) -> Optional[nn.Linear]:
        """The linear layer that maps into the LLM's embedding space (None without an LLM)."""
        return None

    def param_groups(self, scaled: frozenset = frozenset()) -> dict[str, list[nn.Parameter]]:
        """Parameters by group: ``projection`` (the output layer), each group of ``extra_groups()``
        that ``scaled`` names (the groups ``optimizer.lr_scale`` sets) and ``body`` (the rest, in
        parameter order). An extra group no scale names stays in the body, so the optimizer (and a
        checkpoint's optimizer state) is laid out as if the group did not exist."""
        out = self.output_layer()
        own = {id(p) for p in out.parameters()} if out is not None else set()
        groups = {"projection": [p for p in self.parameters() if id(p) in own]}
        for name, params in self.extra_groups().items():
            if name in scaled:
                groups[name] = params
                own |= {id(p) for p in params}
        groups["body"] = [p for p in self.parameters() if id(p) not in own]
        return groups

    def extra_groups(self) -> dict[str, list[nn.Parameter]]:
        """Learning-rate groups beyond ``projection`` that this bridge offers (a Q-Former's ``cross_attention``)."""
        return {}

    @torch.no_grad()
    def init_output(self, embedding_std: float) -> None:
        """``output_init: embedding_scale``: rescale the fresh output layer so the soft prompt starts
        at the LLM's word-embedding scale (``embedding_std``). A default Linear on unit-variance
        inputs (LayerNorm'd Q-Former outputs, pooled features) gives outputs of std
        sqrt(fan_in) * weight std, e.g. 0.6 from a 384-wide Q-Former, 4x SmolLM2's embeddings."""
        layer = self.output_layer()
        if self.output_init == "default" or layer is None:
            return
        current = layer.weight.float().std() * math.sqrt(layer.in_features)
        layer.weight.mul_(embedding_std / current)
        layer.bias.zero_()
