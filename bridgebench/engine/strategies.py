"""Scale-out strategies: FSDP with wrap units that never mix frozen and trained weights.

FSDP flattens each wrap unit's parameters into shared buffers; a unit holding both a frozen LLM
block and trainable bridge weights must keep gradients (and, without ``use_orig_params``, fails
outright). ``BridgeFSDPStrategy`` wraps each transformer block of the frozen models (the classes
their transformers definitions list in ``_no_split_modules``) and the trainable parts (the bridge,
the stage-1 heads) as units of their own, so frozen units shard their bf16 weights with no gradient
or optimizer state. Use it from YAML (see ``experiments/fsdp.yaml``)::

    trainer:
      strategy:
        class_path: bridgebench.strategies.BridgeFSDPStrategy
        init_args: {sharding_strategy: FULL_SHARD}

Assumes CUDA devices (FSDP does not run on CPUs); DDP (``strategy: ddp``) stays the default of the
paper presets, which fit one GPU per rank.
"""

from __future__ import annotations

from typing import Callable

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


def block_class_names(root: nn.Module) -> set[str]:
    """Class names of the transformer blocks of every transformers model inside ``root``."""
    names: set[str] = set()
    for module in root.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def trainable_unit(module: nn.Module) -> bool:
    from bridgebench.bridges.base import Bridge
    from bridgebench.bridges.objectives import Stage1Heads

    return isinstance(module, (Bridge, Stage1Heads))


def stacked_blocks(root: nn.Module) -> set[int]:
    """ids of the repeated layers (elements of a ModuleList) outside the trainable parts: the
    transformer layers of models whose ``_no_split_modules`` does not name them."""
    found: set[int] = set()

    def visit(module: nn.Module) -> None:
        if trainable_unit(module):
            return
        for child in module.children():
            if isinstance(module, nn.ModuleList) and any(True for _ in child.parameters()):
                found.add(id(child))
            visit(child)

    visit(root)
    return found


def wrap_policy(root: nn.Module) -> Callable[[nn.Module, bool, int], bool]:
    """An FSDP auto-wrap policy over ``root``: units = the frozen models' blocks and the trainable parts."""
    blocks = block_class_names(root)
    stacked = stacked_blocks(root)

    def policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if recurse:  # look inside everything except a trainable unit, which stays whole
            return not trainable_unit(module)
        return trainable_unit(module) or type(module).__name__ in blocks or id(module) in stacked

    return policy


class BridgeFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy with bridgebench's wrap units (see the module docstring).

    Args:
        **kwargs: FSDPStrategy arguments (``sharding_strategy``, ``cpu_offload``, ``mixed_precision``,
            ``activation_checkpointing_policy``, ...). ``auto_wrap_policy`` is set from the model;
            ``use_orig_params`` defaults to True so mixed units, if any remain, still train.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("use_orig_params", True)
        super().__init__(**kwargs)

    def _setup_model(self, model: nn.Module):
        self.kwargs["auto_wrap_policy"] = wrap_policy(model)
        return super()._setup_model(model)
