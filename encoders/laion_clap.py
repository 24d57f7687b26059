"""Load the audio branch of a LAION-CLAP checkpoint into transformers' ``ClapAudioModel``.

LAION publishes its CLAP models (``630k-audioset-best.pt``, ``music_audioset_epoch_15_esc_90.14.pt``,
HTSAT-tiny / HTSAT-base audio branches, ...) as torch ``.pt`` files whose state dict uses the key names
of the ``laion_clap`` package.  ``laion_clap`` itself cannot be used at run time (it pins numpy<2 and
downloads roberta-base), so this module maps the audio-branch keys onto
``transformers.models.clap.modeling_clap.ClapAudioModel`` (keys ``audio_encoder.*``) and infers a
matching ``ClapAudioConfig`` from the tensor shapes alone.

Assumptions (all hold for LAION's released HTSAT checkpoints):

* The file holds ``{"state_dict": {...}, ...}`` or a bare state dict; keys may carry a ``module.``
  prefix (DistributedDataParallel) and the audio branch lives under ``audio_branch.``.  A bare
  audio-branch state dict (``patch_embed.*``, ``layers.*`` at the top level) is accepted too.
* The audio branch is HTSAT (a Swin transformer); PANN (CNN14) branches are rejected.
* No feature fusion (``enable_fusion=False``): fusion checkpoints ("…fusion…" files with
  ``mel_conv2d``/``fusion_model`` weights) are rejected.
* Square spectrogram "image"; patch stride equals the patch-embedding kernel size (LAION always uses
  4x4 / stride 4).  ``spec_size`` is read from a shifted-window ``attn_mask`` buffer when the file has
  one, otherwise LAION's 256 is assumed.
* Ignored because ClapAudioModel has no place for them: the STFT / log-mel front-end buffers
  (``spectrogram_extractor``, ``logmel_extractor``: HF computes features outside the model), the
  AudioSet head (``tscam_conv``, ``head``), the precomputed ``attn_mask`` buffers (HF rebuilds them),
  and everything outside the audio branch (text branch, ``audio_projection``/``audio_transform``,
  logit scales).

``ClapAudioModel`` consumes ``input_features`` of shape (B, 1, T, n_mels) = LAION's log-mel right
after its ``logmel_extractor`` (before ``bn0``, which is HF's ``audio_encoder.batch_norm``).  Its
``last_hidden_state`` is (B, C, 2, T'); ``mean(dim=2)`` equals LAION's ``fine_grained_embedding``
before the x32 frame repeat, and ``pooler_output`` equals LAION's ``embedding``.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections import defaultdict

import torch
import transformers
from transformers import ClapAudioConfig

__all__ = ["load_laion_clap_audio"]

# Sub-module names inside an HTSAT audio branch that ClapAudioModel has no counterpart for.
_IGNORED_AUDIO_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.", "tscam_conv.", "head.")
# Weights that only exist in feature-fusion checkpoints.
_FUSION_MARKERS = ("fusion_model.", "mel_conv2d.", "mel_conv1d.")

# Per-block renames: LAION SwinTransformerBlock -> HF ClapAudioLayer ("qkv" is split separately).
_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
    "attn.relative_position_index": "attention.self.relative_position_index",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_BLOCK_RE = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_DOWNSAMPLE_RE = re.compile(r"^layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$")


def _fail(path, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}")


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise _fail(path, f"not a torch checkpoint ({_one_line(exc)})") from None
    except Exception as exc:  # zip/magic-number/EOF errors: not something torch.save wrote
        raise _fail(path, f"not a torch checkpoint ({_one_line(exc)})") from None
    # Fallback: LAION's training script saves extra pickled objects next to "state_dict" (e.g. the
    # optimizer state and, in some releases, numpy scalars / argparse values) that the restricted
    # weights_only unpickler refuses.  Only then do we use the full unpickler -- which can run code
    # from the file, so only load LAION checkpoints from a trusted source.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise _fail(path, f"not a torch checkpoint ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def _audio_branch(path: str, obj) -> dict[str, torch.Tensor]:
    """Return the audio-branch tensors with the ``[module.]audio_branch.`` prefix removed."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise _fail(path, f"no state dict found (file holds {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise _fail(path, "no state dict found (no tensors in the file)")
    stripped = {}
    for key, value in tensors.items():
        stripped[key[len("module."):] if key.startswith("module.") else key] = value
    audio = {k[len("audio_branch."):]: v for k, v in stripped.items() if k.startswith("audio_branch.")}
    if not audio and any(k.startswith("layers.") for k in stripped) and "patch_embed.proj.weight" in stripped:
        audio = stripped  # a bare HTSAT audio-branch state dict
    if not audio:
        raise _fail(path, "no audio-branch keys (expected '[module.]audio_branch.*'); is this a LAION-CLAP checkpoint?")
    return audio


def _window_from_table(path, key: str, table: torch.Tensor) -> int:
    side = math.isqrt(table.shape[0])
    if table.dim() != 2 or side * side != table.shape[0] or side % 2 == 0:
        raise _fail(path, f"shape mismatch for audio_branch.{key}: {tuple(table.shape)} is not ((2*window-1)**2, heads)")
    return (side + 1) // 2


def _infer_config(path, audio: dict[str, torch.Tensor]) -> ClapAudioConfig:
    proj = audio["patch_embed.proj.weight"]
    if proj.dim() != 4:
        raise _fail(path, f"shape mismatch for audio_branch.patch_embed.proj.weight: {tuple(proj.shape)} is not 4-D")
    embed_dim, in_chans, patch_h, patch_w = proj.shape
    if in_chans != 1:
        raise _fail(path, f"fusion checkpoint not supported (patch_embed.proj takes {in_chans} channels: channel_map fusion)")
    if patch_h != patch_w:
        raise _fail(path, f"non-square patch kernel {patch_h}x{patch_w} not supported")
    if "bn0.weight" not in audio:
        raise _fail(path, "audio-branch key bn0.weight missing; cannot infer the number of mel bins")
    num_mel_bins = audio["bn0.weight"].shape[0]

    depth_of = defaultdict(int)
    heads_of: dict[int, int] = {}
    windows: dict[int, int] = {}
    for key, value in audio.items():
        m = _BLOCK_RE.match(key)
        if not m:
            continue
        stage, block = int(m.group(1)), int(m.group(2))
        depth_of[stage] = max(depth_of[stage], block + 1)
        if m.group(3) == "attn.relative_position_bias_table":
            heads_of.setdefault(stage, value.shape[-1])
            windows.setdefault(stage, _window_from_table(path, key, value))
    stages = sorted(depth_of)
    if stages != list(range(len(stages))) or any(s not in heads_of for s in stages):
        raise _fail(path, "audio branch is not an HTSAT Swin transformer (missing layers.N.blocks.M.attn.relative_position_bias_table)")
    depths = [depth_of[s] for s in stages]
    num_heads = [heads_of[s] for s in stages]
    window_size = windows[0]
    patch_stride = int(patch_h)  # assumption: stride == kernel (LAION: 4 / 4)

    fc1 = audio.get("layers.0.blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / fc1.shape[1] if fc1 is not None and fc1.dim() == 2 else 4.0

    # spec_size: a shifted block's attn_mask is (num_windows, w*w, w*w) with
    # num_windows = (res / w)**2 and res = spec_size / patch_stride / 2**stage.
    spec_size = 256
    for key, value in audio.items():
        m = _BLOCK_RE.match(key)
        if m and m.group(3) == "attn_mask" and value.dim() == 3:
            per_side = math.isqrt(value.shape[0])
            if per_side * per_side == value.shape[0]:
                spec_size = per_side * windows[int(m.group(1))] * 2 ** int(m.group(1)) * patch_stride
                break

    num_classes = 527
    if "tscam_conv.weight" in audio:
        num_classes = int(audio["tscam_conv.weight"].shape[0])

    return ClapAudioConfig(
        window_size=window_size,
        num_mel_bins=int(num_mel_bins),
        spec_size=int(spec_size),
        patch_size=int(patch_h),
        patch_stride=[patch_stride, patch_stride],
        num_classes=num_classes,
        hidden_size=int(embed_dim) * 2 ** (len(depths) - 1),
        patch_embeds_hidden_size=int(embed_dim),
        depths=depths,
        num_attention_heads=num_heads,
        num_hidden_layers=len(depths),
        enable_fusion=False,
        fusion_type=None,
        patch_embed_input_channels=1,
        enable_patch_layer_norm="patch_embed.norm.weight" in audio,
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in audio,
        mlp_ratio=mlp_ratio,
        hidden_act="gelu",  # LAION Mlp uses nn.GELU (exact)
        layer_norm_eps=1e-5,  # nn.LayerNorm default in LAION
        hidden_dropout_prob=0.0,  # LAION HTSAT drop_rate=0 (irrelevant in eval mode)
        drop_path_rate=0.0,
    )


def _map_keys(path, audio: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Return (HF state dict, LAION keys nothing was mapped for)."""
    out: dict[str, torch.Tensor] = {}
    leftover: list[str] = []
    for key, value in audio.items():
        if key.startswith(_IGNORED_AUDIO_PREFIXES):
            continue
        if key.startswith("bn0."):
            out["audio_encoder.batch_norm." + key[len("bn0."):]] = value
            continue
        if key.startswith("patch_embed.") or key.startswith("norm."):
            out["audio_encoder." + key] = value
            continue
        m = _DOWNSAMPLE_RE.match(key)
        if m:
            out[f"audio_encoder.layers.{m.group(1)}.downsample.{m.group(2)}"] = value
            continue
        m = _BLOCK_RE.match(key)
        if m:
            prefix = f"audio_encoder.layers.{m.group(1)}.blocks.{m.group(2)}."
            rest = m.group(3)
            if rest == "attn_mask":
                continue  # HF recomputes the shifted-window mask in forward
            if rest in ("attn.qkv.weight", "attn.qkv.bias"):
                if value.shape[0] % 3:
                    raise _fail(path, f"shape mismatch for audio_branch.{key}: {tuple(value.shape)} is not (3*dim, ...)")
                kind = rest.rsplit(".", 1)[1]
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{prefix}attention.self.{name}.{kind}"] = part.clone()
                continue
            if rest in _BLOCK_RENAMES:  # parameters/buffers renamed as a whole
                out[prefix + _BLOCK_RENAMES[rest]] = value
                continue
            module, _, param = rest.rpartition(".")
            if module in _BLOCK_RENAMES:  # sub-module renamed, parameter name kept
                out[f"{prefix}{_BLOCK_RENAMES[module]}.{param}"] = value
                continue
        leftover.append(key)
    return out, leftover


def load_laion_clap_audio(path) -> tuple[transformers.ClapAudioConfig, dict[str, torch.Tensor]]:
    """Read a LAION-CLAP .pt checkpoint; return a ClapAudioConfig inferred from tensor shapes
    (hidden_size/patch_embeds_hidden_size, depths, num_attention_heads, window_size, spec_size, num_mel_bins, etc.;
    fusion disabled) and a state dict keyed for transformers' ClapAudioModel (keys like `audio_encoder.…`).

    The returned state dict covers every ClapAudioModel key, so
    ``ClapAudioModel(config).load_state_dict(sd, strict=True)`` succeeds.  Raises
    ``FileNotFoundError`` / ``ValueError`` with a one-line message naming the file and the problem.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: LAION-CLAP checkpoint file not found")
    audio = _audio_branch(path, _torch_load(path))

    fusion = sorted(k for k in audio if k.startswith(_FUSION_MARKERS) or any("." + f in k for f in _FUSION_MARKERS))
    if fusion:
        raise _fail(path, f"fusion checkpoint not supported (found audio_branch.{fusion[0]}); use a non-fusion LAION-CLAP model")
    if "patch_embed.proj.weight" not in audio:
        raise _fail(path, "audio branch is not HTSAT (no audio_branch.patch_embed.proj.weight; PANN branches are not supported)")

    config = _infer_config(path, audio)
    state_dict, leftover = _map_keys(path, audio)
    if leftover:
        raise _fail(path, f"{len(leftover)} unmapped audio-branch key(s), e.g. audio_branch.{leftover[0]}")

    # Compare against the model the config describes (built on the meta device: no memory, no init).
    with torch.device("meta"):
        reference = transformers.ClapAudioModel(config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    for key, value in state_dict.items():
        if key not in expected:
            raise _fail(path, f"mapped key {key} does not exist in ClapAudioModel for the inferred config")
        if tuple(value.shape) != expected[key]:
            raise _fail(path, f"shape mismatch for {key}: checkpoint {tuple(value.shape)} vs ClapAudioModel {expected[key]}")
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise _fail(path, f"{len(missing)} ClapAudioModel key(s) not provided by the checkpoint, e.g. {missing[0]}")
    return config, state_dict
