"""`mert` and `data2vec`: wav2vec2-family encoders from transformers, with layer selection.

Both take raw 1-D waveforms, downsample by 320 with a conv stack (75 Hz at MERT's 24 kHz, 50 Hz at
data2vec's 16 kHz) and run a transformer. ``layers`` picks what the bridge sees: the uniform mean
of all hidden states (what MusiLingo's code does, though its paper says "weighted"), learned softmax
layer weights (trained with the bridge even when the encoder is frozen), the last layer, or one
index. Padding is zeroed and the sample mask is passed as attention mask; the frame mask comes from
the conv stack's output lengths.
"""

from __future__ import annotations

import hashlib
import re

import torch
from torch import nn

from bridgebench.encoders.base import AudioEncoder
from bridgebench.runtime.references import pretrained_problem


def check_options(opts, key: str) -> list[str]:
    """Checks of ``mert``/``data2vec`` options beyond their declared ranges."""
    out = [p for p in [pretrained_problem(f"{key}.pretrained", opts.pretrained)] if p]
    if opts.layers not in ("mean", "weighted", "last") and not re.fullmatch(r"-?\d+", str(opts.layers)):
        out.append(f"{key}.layers: '{opts.layers}' is not mean, weighted, last or a layer index")
    return out


class HiddenStatesEncoder(AudioEncoder):
    """Shared body of MertEncoder and Data2VecEncoder."""

    family = "wav2vec"

    def __init__(self, model: nn.Module, pretrained: str, layers: str, normalize: bool):
        super().__init__()
        self.model = model
        self.pretrained = pretrained
        self.layers = layers
        self.normalize = normalize
        self.output_dim = model.config.hidden_size
        n_states = model.config.num_hidden_layers + 1
        if layers == "weighted":
            self.layer_weights = nn.Parameter(torch.zeros(n_states))
        elif layers not in ("mean", "last"):
            index = int(layers)
            if not -n_states <= index < n_states:
                raise ValueError(f"{self.family} layers={layers}: the model has hidden states 0..{n_states - 1}")

    def trainable_when_frozen(self) -> list[str]:
        return ["layer_weights"] if self.layers == "weighted" else []

    def forward(self, audio, audio_mask):
        audio = audio * audio_mask
        if self.normalize:
            n = audio_mask.sum(1, keepdim=True).clamp_min(1)
            mean = audio.sum(1, keepdim=True) / n
            var = ((audio - mean) * audio_mask).pow(2).sum(1, keepdim=True) / n
            audio = (audio - mean) / torch.sqrt(var + 1e-7) * audio_mask
        dtype = next(self.model.parameters()).dtype
        need_all = self.layers not in ("last",)
        with self.backbone_grad():
            out = self.model(audio.to(dtype), attention_mask=audio_mask.long(), output_hidden_states=need_all)
        if self.layers == "last":
            # The model's output; with stable layer norm it differs from hidden_states[-1].
            feats = out.last_hidden_state
        elif self.layers == "mean":
            feats = torch.stack(out.hidden_states, dim=0).mean(dim=0)
        elif self.layers == "weighted":
            w = torch.softmax(self.layer_weights.float(), dim=0).to(out.hidden_states[0].dtype)
            feats = torch.einsum("l,lbtd->btd", w, torch.stack(out.hidden_states, dim=0))
        else:
            feats = out.hidden_states[int(self.layers)]
        lengths = self.model._get_feat_extract_output_lengths(audio_mask.sum(1))
        mask = torch.arange(feats.shape[1], device=feats.device).unsqueeze(0) < lengths.unsqueeze(1)
        return feats, mask

    def identity(self) -> str:
        cfg = self.model.config.to_json_string(use_diff=False)
        digest = hashlib.sha1(cfg.encode()).hexdigest()[:12]
        return f"{self.family}:{self.pretrained}:{self.layers}:{self.normalize}:{digest}"


class MertEncoder(HiddenStatesEncoder):
    """MERT-v1 (24 kHz). On the hub it needs ``trust_remote_code``."""

    family = "mert"
    sample_rate = 24_000

    def __init__(self, pretrained: str, layers: str = "mean", normalize: bool = False, trust_remote_code: bool = True):
        from transformers import AutoModel

        model = AutoModel.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        super().__init__(model, pretrained, layers, normalize)


class Data2VecEncoder(HiddenStatesEncoder):
    """data2vec-audio (16 kHz).

    Its positional embedding is a stack of padded convolutions, and transformers zeroes the padded
    frames only before the stack: in a batch of unequal clips, padding then leaks into the last
    real frames of the shorter clips (by about 1.0 on the tiny model, 1e-3 everywhere through
    attention). A hook zeroes padded frames after every positional conv layer, so a clip's features
    do not depend on what it is batched with.
    """

    family = "data2vec"
    sample_rate = 16_000

    def __init__(self, pretrained: str, layers: str = "last", normalize: bool = True):
        from transformers import Data2VecAudioModel

        model = Data2VecAudioModel.from_pretrained(pretrained)
        super().__init__(model, pretrained, layers, normalize)
        self._frame_mask = None
        for layer in model.encoder.pos_conv_embed.layers:
            layer.register_forward_hook(self._zero_padding)

    def _zero_padding(self, module, inputs, output):
        mask = self._frame_mask
        if mask is None or mask.shape[-1] != output.shape[-1]:
            return output
        return output * mask.unsqueeze(1).to(output.dtype)  # output: [B, channels, frames]

    def forward(self, audio, audio_mask):
        lengths = self.model._get_feat_extract_output_lengths(audio_mask.sum(1))
        frames = self.model._get_feat_extract_output_lengths(torch.tensor(audio.shape[1]))
        self._frame_mask = torch.arange(int(frames), device=audio.device).unsqueeze(0) < lengths.unsqueeze(1)
        try:
            return super().forward(audio, audio_mask)
        finally:
            self._frame_mask = None
