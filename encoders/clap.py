"""`clap`: the LAION-CLAP HTS-AT audio branch, through transformers' ClapAudioModel.

Assumes 48 kHz mono input and the non-fusion LAION setting: 10 s windows, 1024-point STFT with hop
480, 64 Slaney mel bands from 50 Hz to 14 kHz, power in dB. The mel front-end is computed here in
torch (batched, on the model's device) instead of the numpy ClapFeatureExtractor; a test checks the
two agree. Output = the time tokens BLAP feeds its Q-Former: the last Swin stage after its
LayerNorm, averaged over the two frequency groups, i.e. 32 tokens per 10 s clip.

Weights load from a transformers CLAP checkpoint (hub id or folder; a full ClapModel checkpoint
works too) or from a LAION-CLAP ``.pt`` file through our own key mapping (``laion_clap.py``).
"""

from __future__ import annotations

import hashlib
import math
import os

import torch
from torch import nn

from bridgebench.encoders.base import AudioEncoder, frames_from_samples
from bridgebench.runtime.references import pretrained_problem


def check_options(opts, key: str) -> list[str]:
    """Checks of ``clap`` options beyond their declared ranges."""
    return [p for p in [pretrained_problem(f"{key}.pretrained", opts.pretrained)] if p]


class LogMel(nn.Module):
    """Log-mel spectrogram matching ClapFeatureExtractor's non-fusion path."""

    def __init__(self, sample_rate: int = 48_000, n_fft: int = 1024, hop: int = 480, n_mels: int = 64,
                 fmin: float = 50.0, fmax: float = 14_000.0):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        fb = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=fmin,
                             max_frequency=fmax, sampling_rate=sample_rate, norm="slaney", mel_scale="slaney")
        self.register_buffer("filters", torch.tensor(fb, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.n_fft, self.hop = n_fft, hop

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio[B, S] -> log-mel[B, frames, n_mels] (float32, as the features need the range)."""
        spec = torch.stft(audio.float(), self.n_fft, self.hop, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        power = spec.abs().pow(2).transpose(1, 2)  # [B, frames, freq]
        mel = power @ self.filters
        return 10.0 * torch.log10(mel.clamp_min(1e-10))


class ClapEncoder(AudioEncoder):
    """HTS-AT audio branch of CLAP -> 32 time tokens per 10 s."""

    sample_rate = 48_000

    def __init__(self, pretrained: str, clip_seconds: float = 10.0, sample_rate: int = 48_000):
        super().__init__()
        from transformers import ClapAudioModel

        self.sample_rate = sample_rate
        self.pretrained = pretrained
        if os.path.isfile(pretrained):
            from bridgebench.encoders.laion_clap import load_laion_clap_audio

            config, state = load_laion_clap_audio(pretrained)
            self.model = ClapAudioModel(config)
            self.model.load_state_dict(state, strict=True)
        else:
            self.model = ClapAudioModel.from_pretrained(pretrained)
        # Scale the STFT with the rate so 10 s still give 1001 frames (LAION: 1024 / 480 at 48 kHz).
        scale = sample_rate / 48_000
        n_fft = 2 ** round(math.log2(1024 * scale))
        self.mel = LogMel(sample_rate=sample_rate, n_fft=n_fft, hop=round(480 * scale),
                          n_mels=self.model.config.num_mel_bins, fmax=min(14_000.0, sample_rate / 2))
        cfg = self.model.config
        self.output_dim = cfg.patch_embeds_hidden_size * 2 ** (len(cfg.depths) - 1)
        self.max_seconds = clip_seconds
        self.clip_samples = int(round(clip_seconds * self.sample_rate))

    def forward(self, audio, audio_mask):
        audio, audio_mask = self.fixed_window(audio, audio_mask)
        dtype = next(self.model.parameters()).dtype
        with self.backbone_grad():
            mel = self.mel(audio).to(dtype).unsqueeze(1)  # [B, 1, frames, mels]
            hidden = self.model(input_features=mel).last_hidden_state  # [B, C, freq_groups, time]
        tokens = hidden.mean(dim=2).transpose(1, 2)  # [B, time, C]
        return tokens, frames_from_samples(audio_mask, tokens.shape[1])

    def identity(self) -> str:
        cfg = self.model.config.to_json_string(use_diff=False)
        digest = hashlib.sha1(cfg.encode()).hexdigest()[:12]
        return f"clap:{self.pretrained}:{self.max_seconds}:{self.sample_rate}:{digest}"
