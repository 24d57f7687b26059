"""Speed switches of a run that change how it computes, never what: ``torch.compile`` of the parts.

Compiling bound forwards (not wrapping the modules) keeps parameter names, so checkpoints and
stage-1 loading are the same with and without a switch.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info


def compile_parts(module) -> None:
    """``model.compile``: the bridge's forward and the LLM's encoder/decoder stacks (dynamic shapes)."""
    targets = [m for m in (module.bridge,) if m is not None]
    if module.llm is not None:
        hf = module.llm.hf
        for getter in ("get_encoder", "get_decoder"):
            stack = getattr(hf, getter, None)
            stack = stack() if callable(stack) else None
            if isinstance(stack, torch.nn.Module) and stack is not hf and all(stack is not t for t in targets):
                targets.append(stack)
    for part in targets:
        part.forward = torch.compile(part.forward, dynamic=True)
    rank_zero_info(f"torch.compile: {', '.join(type(m).__name__ for m in targets)}")
