"""Tests for encoders.laion_clap: LAION-CLAP HTSAT checkpoint -> transformers ClapAudioModel.

tests/fixtures/laion_htsat_tiny.pt was made outside this repo with the real ``laion_clap`` 1.1.7
package (torch 2.13): a tiny random-weight HTSAT (embed 8, depths [1,1,2,1], heads [1,2,4,8],
window 8, spec_size 256, 64 mel bins, no fusion) inside a full ``laion_clap`` CLAP model (tiny text
branch included), saved like the released files as ``{"state_dict": {"module.audio_branch...": ...},
"epoch": 1}``.  Under the extra key ``"reference"`` it carries a fixed log-mel batch
(2, 1, 1001, 64) -- the level right after LAION's ``logmel_extractor`` -- and LAION's outputs for
it in eval mode: the last Swin features after the final norm in (B, C, 2, 32) form, the
``fine_grained_embedding`` before its x32 frame repeat (B, C, 32), and the pooled ``embedding``.
"""

from pathlib import Path

import pytest
import torch
from transformers import ClapAudioModel

from encoders.laion_clap import load_laion_clap_audio

FIXTURE = Path(__file__).parent / "fixtures" / "laion_htsat_tiny.pt"
ATOL = 1e-4


@pytest.fixture(scope="module")
def raw():
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def loaded():
    return load_laion_clap_audio(FIXTURE)


def test_config_inferred_from_shapes(loaded):
    config, _ = loaded
    assert config.patch_embeds_hidden_size == 8
    assert config.hidden_size == 64
    assert list(config.depths) == [1, 1, 2, 1]
    assert list(config.num_attention_heads) == [1, 2, 4, 8]
    assert config.window_size == 8
    assert config.spec_size == 256
    assert config.num_mel_bins == 64
    assert config.patch_size == 4
    assert config.mlp_ratio == 4.0
    assert config.enable_fusion is False


def test_state_dict_covers_model_and_matches_laion(loaded, raw):
    config, state_dict = loaded
    model = ClapAudioModel(config).eval()
    # strict=True: every ClapAudioModel key is provided and nothing extra -- no exemptions needed.
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(state_dict) == set(model.state_dict())

    ref = raw["reference"]
    with torch.no_grad():
        out = model(input_features=ref["input_logmel"].float())
    last = out.last_hidden_state
    assert last.shape == ref["laion_last_hidden"].shape == (2, 64, 2, 32)
    torch.testing.assert_close(last, ref["laion_last_hidden"], atol=ATOL, rtol=0)
    # time tokens as BLAP uses them: mean over the 2 frequency rows == LAION fine_grained_embedding
    torch.testing.assert_close(last.mean(dim=2), ref["laion_fine_grained"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.pooler_output, ref["laion_embedding"], atol=ATOL, rtol=0)


def test_bare_state_dict_without_module_prefix(raw, loaded, tmp_path):
    bare = {k.removeprefix("module."): v for k, v in raw["state_dict"].items()}
    path = tmp_path / "bare.pt"
    torch.save(bare, path)
    config, state_dict = load_laion_clap_audio(path)
    assert config.to_dict() == loaded[0].to_dict()
    assert state_dict.keys() == loaded[1].keys()
    assert all(torch.equal(state_dict[k], loaded[1][k]) for k in state_dict)


def _save(tmp_path, name, state_dict):
    path = tmp_path / name
    torch.save({"state_dict": state_dict, "epoch": 1}, path)
    return path


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt") as exc:
        load_laion_clap_audio(path)
    assert "\n" not in str(exc.value)


def test_not_a_torch_checkpoint(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match=r"garbage\.pt.*not a torch checkpoint") as exc:
        load_laion_clap_audio(path)
    assert "\n" not in str(exc.value)


def test_no_audio_keys(raw, tmp_path):
    text_only = {k: v for k, v in raw["state_dict"].items() if "audio_branch." not in k}
    path = _save(tmp_path, "text_only.pt", text_only)
    with pytest.raises(ValueError, match=r"text_only\.pt.*no audio-branch keys") as exc:
        load_laion_clap_audio(path)
    assert "\n" not in str(exc.value)


def test_wrong_shape(raw, tmp_path):
    sd = dict(raw["state_dict"])
    key = "module.audio_branch.layers.0.blocks.0.mlp.fc2.weight"
    sd[key] = torch.zeros(8, 33)
    path = _save(tmp_path, "bad_shape.pt", sd)
    with pytest.raises(ValueError, match=r"bad_shape\.pt.*shape mismatch.*layers\.0\.blocks\.0\.output\.dense\.weight") as exc:
        load_laion_clap_audio(path)
    assert "\n" not in str(exc.value)


def test_unmapped_audio_key(raw, tmp_path):
    sd = dict(raw["state_dict"])
    sd["module.audio_branch.absolute_pos_embed"] = torch.zeros(1, 4096, 8)
    path = _save(tmp_path, "extra.pt", sd)
    with pytest.raises(ValueError, match=r"extra\.pt.*unmapped audio-branch key.*absolute_pos_embed"):
        load_laion_clap_audio(path)


def test_fusion_checkpoint_rejected(raw, tmp_path):
    sd = dict(raw["state_dict"])
    sd["module.audio_branch.patch_embed.mel_conv2d.weight"] = torch.zeros(8, 1, 4, 12)
    path = _save(tmp_path, "fusion.pt", sd)
    with pytest.raises(ValueError, match=r"fusion\.pt.*fusion checkpoint not supported"):
        load_laion_clap_audio(path)


def test_pickled_extras_fall_back_to_full_unpickler(raw, loaded, tmp_path):
    # LAION training checkpoints may pickle non-tensor objects next to the weights; the restricted
    # weights_only unpickler refuses those, and the loader then retries with weights_only=False.
    import argparse

    path = tmp_path / "with_args.pt"
    torch.save({"state_dict": raw["state_dict"], "args": argparse.Namespace(model="HTSAT-tiny")}, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    config, state_dict = load_laion_clap_audio(path)
    assert config.to_dict() == loaded[0].to_dict()
    assert state_dict.keys() == loaded[1].keys()
