"""Encoders: CLAP front-end and time tokens, LAION .pt loading, wav2vec-style layer selection and masks."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bridgebench.encoders import ClapEncoder, Data2VecEncoder, MertEncoder
from bridgebench.encoders.clap import LogMel
from bridgebench.runtime.tiny import tiny_checkpoint

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "laion_htsat_tiny.pt")


def test_clap_log_mel_matches_transformers_feature_extractor():
    from transformers import ClapFeatureExtractor

    rng = np.random.default_rng(0)
    t = np.arange(480_000) / 48_000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    fe = ClapFeatureExtractor(frequency_min=50, frequency_max=14_000, truncation="rand_trunc", padding="pad")
    ref = fe(wave, sampling_rate=48_000, return_tensors="np")["input_features"][0, 0]
    ours = LogMel()(torch.from_numpy(wave)[None])[0].numpy()
    assert ours.shape == ref.shape == (1001, 64)
    np.testing.assert_allclose(ours, ref, atol=2e-3)  # dB; float32 STFT vs numpy float64


def test_clap_gives_32_time_tokens_per_ten_seconds_and_masks_padding():
    enc = ClapEncoder(str(tiny_checkpoint("clap"))).eval()
    audio = torch.randn(2, 480_000) * 0.1
    mask = torch.ones(2, 480_000, dtype=torch.bool)
    mask[1, 240_000:] = False
    feats, fmask = enc(audio * mask, mask)
    assert feats.shape == (2, 32, enc.output_dim)
    assert fmask[0].all() and fmask[1].sum() == 16
    # A short clip is padded to the 10 s window, not rejected.
    short, smask = enc(torch.randn(1, 48_000), torch.ones(1, 48_000, dtype=torch.bool))
    assert short.shape[1] == 32 and smask.sum() == 4
    with pytest.raises(ValueError, match="at most 10.0 s"):
        enc(torch.randn(1, 480_001), torch.ones(1, 480_001, dtype=torch.bool))


def test_clap_encoder_loads_a_laion_checkpoint_file():
    enc = ClapEncoder(FIXTURE).eval()
    ref = torch.load(FIXTURE, map_location="cpu", weights_only=True)["reference"]
    with torch.no_grad():
        hidden = enc.model(input_features=ref["input_logmel"].float()).last_hidden_state
    torch.testing.assert_close(hidden.mean(dim=2), ref["laion_fine_grained"].float(), rtol=0, atol=1e-4)
    feats, _ = enc(torch.zeros(1, 480_000), torch.ones(1, 480_000, dtype=torch.bool))
    assert feats.shape == (1, 32, enc.output_dim)


@pytest.mark.parametrize("cls,family", [(MertEncoder, "mert"), (Data2VecEncoder, "data2vec")])
def test_layer_selection(cls, family):
    path = str(tiny_checkpoint(family))
    audio, mask = torch.randn(1, 16_000), torch.ones(1, 16_000, dtype=torch.bool)
    mean = cls(path, layers="mean", normalize=False).eval()
    with torch.no_grad():
        out = mean.model(audio, attention_mask=mask.long(), output_hidden_states=True)
        states = out.hidden_states
        torch.testing.assert_close(mean(audio, mask)[0], torch.stack(states).mean(0))
        torch.testing.assert_close(cls(path, layers="1", normalize=False).eval()(audio, mask)[0], states[1])
        torch.testing.assert_close(cls(path, layers="last", normalize=False).eval()(audio, mask)[0],
                                   out.last_hidden_state)
    weighted = cls(path, layers="weighted", normalize=False).eval()
    weighted.requires_grad_(False)
    weighted.layer_weights.requires_grad_(True)
    feats, _ = weighted(audio, mask)
    torch.testing.assert_close(feats.detach(), torch.stack(states).mean(0))  # zero init = uniform mean
    feats.sum().backward()
    assert weighted.layer_weights.grad is not None
    assert all(p.grad is None for n, p in weighted.named_parameters() if n != "layer_weights")
    with pytest.raises(ValueError, match="hidden states"):
        cls(path, layers="9")


@pytest.mark.parametrize("cls,family", [(MertEncoder, "mert"), (Data2VecEncoder, "data2vec")])
def test_frame_mask_follows_the_conv_stack_and_padding_is_ignored(cls, family):
    enc = cls(str(tiny_checkpoint(family)), layers="last").eval()
    short = torch.randn(1, 8_000)
    batch = torch.zeros(2, 16_000)
    batch[0, :8_000] = short[0]
    batch[1] = torch.randn(16_000)
    mask = torch.zeros(2, 16_000, dtype=torch.bool)
    mask[0, :8_000] = True
    mask[1] = True
    with torch.no_grad():
        feats, fmask = enc(batch, mask)
        alone, amask = enc(short, torch.ones(1, 8_000, dtype=torch.bool))
    n = int(enc.model._get_feat_extract_output_lengths(torch.tensor(8_000)))
    assert int(fmask[0].sum()) == n == amask.shape[1] and fmask[1].all()
    torch.testing.assert_close(feats[0, :n], alone[0], rtol=1e-4, atol=1e-4)


def test_frozen_encoder_runs_without_autograd_graph():
    enc = MertEncoder(str(tiny_checkpoint("mert")), layers="mean").eval()
    enc.frozen = True
    feats, _ = enc(torch.randn(1, 4_000), torch.ones(1, 4_000, dtype=torch.bool))
    assert not feats.requires_grad
    enc.frozen = False
    feats, _ = enc(torch.randn(1, 4_000), torch.ones(1, 4_000, dtype=torch.bool))
    assert feats.requires_grad


def test_cnn_encoder_gives_125_tokens_per_ten_seconds_and_round_trips_its_weights(tmp_path):
    from bridgebench.encoders import ConvEncoder

    enc = ConvEncoder("tiny").eval()
    assert enc.output_dim == 32  # 4 base channels, doubled three times
    audio = torch.randn(2, 160_000) * 0.1
    mask = torch.ones(2, 160_000, dtype=torch.bool)
    mask[1, 80_000:] = False
    feats, fmask = enc(audio * mask, mask)
    assert feats.shape == (2, 125, 32)
    assert fmask[0].all() and fmask[1].sum() == 63  # tokens starting inside the first 5 s
    short, smask = enc(torch.randn(1, 16_000), torch.ones(1, 16_000, dtype=torch.bool))
    assert short.shape == (1, 125, 32) and smask.sum() == 13
    with pytest.raises(ValueError, match="at most 10.0 s"):
        enc(torch.randn(1, 170_000), torch.ones(1, 170_000, dtype=torch.bool))

    # A saved state dict loads back as `pretrained` and gives the same tokens; the identity names the file.
    trained = ConvEncoder(channels=4)
    for p in trained.model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    path = tmp_path / "cnn.pt"
    torch.save(trained.model.state_dict(), path)
    loaded = ConvEncoder(str(path), channels=4).eval()
    trained.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio, mask)[0], trained(audio, mask)[0])
    assert loaded.identity() != ConvEncoder(channels=4).identity()


def test_cnn_encoder_bad_weights_reference_is_one_config_line():
    from bridgebench.engine import validate
    from bridgebench.errors import ConfigError
    from bridgebench.specs import EncoderSpec, LLMSpec

    spec = EncoderSpec(name="cnn")
    spec.cnn.pretrained = "/nonexistent/cnn.pt"
    with pytest.raises(ConfigError, match="model.encoder.cnn.pretrained: '/nonexistent/cnn.pt' is not scratch, tiny"):
        validate.check({"encoder": spec, "llm": LLMSpec(name="none"), "objectives": {"atc": 1.0}})
