"""The audio-encoder protocol every encoder follows.

An encoder takes a zero-padded mono batch at its own sample rate, ``audio[B, S]`` with
``audio_mask[B, S]`` (True = real sample), and returns ``(features[B, T, D], mask[B, T])``.
It declares ``sample_rate`` (the data path resamples to it), ``output_dim`` (the bridge's input
width) and ``max_seconds`` (a fixed input window, or None). ``identity()`` names the weights and
settings, so cached features can be keyed by it.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn


class AudioEncoder(nn.Module):
    """Base class: subclasses set the three attributes and implement ``forward``."""

    sample_rate: int
    output_dim: int
    max_seconds: Optional[float] = None
    frozen: bool = True
    """Set by the assembly: a frozen backbone runs under no_grad (and in eval mode)."""

    def backbone_grad(self):
        """Context for the backbone's forward: no autograd graph when frozen."""
        return torch.no_grad() if self.frozen else contextlib.nullcontext()

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def identity(self) -> str:
        raise NotImplementedError

    def fixed_window(self, audio: torch.Tensor, audio_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-pad (and mask) a batch to the encoder's fixed window of ``self.clip_samples``; a longer
        batch is an error, since the datamodule crops to ``max_seconds``."""
        missing = self.clip_samples - audio.shape[1]
        if missing > 0:
            return nn.functional.pad(audio, (0, missing)), nn.functional.pad(audio_mask, (0, missing))
        if missing < 0:
            raise ValueError(
                f"{type(self).__name__} takes at most {self.max_seconds} s ({self.clip_samples} samples); got "
                f"{audio.shape[1]}. The datamodule crops to the encoder's max_seconds."
            )
        return audio, audio_mask

    def trainable_when_frozen(self) -> list[str]:
        """Names of parameters that train even when the encoder is frozen (e.g. learned layer weights)."""
        return []


def frames_from_samples(audio_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Frame mask for features that evenly tile the padded input: a frame is valid when it starts
    inside the clip's real samples."""
    lengths = audio_mask.sum(dim=1)
    total = audio_mask.shape[1]
    starts = torch.arange(num_frames, device=audio_mask.device) * (total / num_frames)
    return starts.unsqueeze(0) < lengths.unsqueeze(1)
