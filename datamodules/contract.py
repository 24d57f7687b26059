"""What the data path needs from the model, handed over late through ``connect``.

The model decides the audio rate, the window and the tokenisers; the datamodule receives them as a
``DataContract`` (litgpt's ``DataModule.connect`` pattern), so nothing about the encoder or LLM is
configured twice. The consumer owns the type it accepts, so the engine imports it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class TextProcessor:
    """Tokenises a batch's instructions/targets for the LLM and, if they read them, the bridge and
    the stage-1 heads (runs in data-loader workers, so it must pickle)."""

    llm: Any
    bridge: Any = None
    stage1: Any = None

    def __call__(self, instructions: list[str], targets: Optional[list[str]] = None,
                 bridge_instructions: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
        """``bridge_instructions`` (default: ``instructions``) is what an instruction-reading bridge sees."""
        out = self.llm(instructions, targets) if self.llm is not None else {}
        if self.bridge is not None:
            out.update(self.bridge(instructions if bridge_instructions is None else bridge_instructions))
        if self.stage1 is not None and targets is not None:
            out.update(self.stage1(targets))
        return out


@dataclass
class DataContract:
    """The audio rate and window, and the text tokenisers."""

    sample_rate: int
    max_seconds: Optional[float]
    text: TextProcessor
    encoder_key: Optional[str] = None
    """Feature-cache key of a frozen encoder (None when its features cannot be cached)."""
