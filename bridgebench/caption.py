"""``python -m bridgebench caption AUDIO... --ckpt RUN [--instruction "..."]``: a trained run on your audio.

RUN is a run folder (its ``checkpoints/last.ckpt`` is used) or a checkpoint file. The model is
rebuilt from the hyper-parameters stored in the checkpoint (frozen parts from their pretrained
references, trainable weights from the checkpoint); each file is decoded, mixed to mono, resampled
to the encoder's rate and cut to the encoder's window (or ``--seconds``, from the start). Prints one
``file<TAB>text`` line per file. Without ``--instruction`` the run's caption instruction is used.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import torch
import yaml

from bridgebench.config import (
    BridgeSpec,
    ConfigError,
    EncoderSpec,
    EvalSpec,
    GenerationSpec,
    LLMSpec,
    OptimSpec,
    Stage1Spec,
    spec_from_dict,
)

SPECS = {"encoder": EncoderSpec, "bridge": BridgeSpec, "llm": LLMSpec, "optimizer": OptimSpec,
         "generation": GenerationSpec, "stage1": Stage1Spec, "evaluation": EvalSpec}


def checkpoint_path(ref: str) -> str:
    path = os.path.join(ref, "checkpoints", "last.ckpt") if os.path.isdir(ref) else ref
    if not os.path.isfile(path):
        raise ConfigError(f"--ckpt: no checkpoint at '{path}' (give a run folder or a .ckpt file)")
    return path


def load_run(ref: str, device: str = "cpu"):
    """The trained module of a run, and the run's default instruction (None if unknown)."""
    from bridgebench.module import BridgeModule

    path = checkpoint_path(ref)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters")
    if not hp:
        raise ConfigError(f"--ckpt: '{path}' has no bridgebench hyper-parameters")
    kwargs = {k: spec_from_dict(cls, hp[k]) for k, cls in SPECS.items() if k in hp}
    # Frozen weights are not in the checkpoint: a frozen encoder trained in stage 1 comes back from
    # the stage-1 checkpoint the run started from (its path is in the hyper-parameters).
    extra = {k: hp[k] for k in ("stage1_checkpoint", "stage1_parts", "encoder_checkpoint", "prompt_init",
                                 "check_finite") if hp.get(k) is not None}
    # Captioning only generates: the run's evaluation dtype, where it set one.
    dtype = hp.get("eval_frozen_dtype") or hp.get("frozen_dtype", "auto")
    module = BridgeModule(**kwargs, objectives=hp.get("objectives"), frozen_dtype=dtype, **extra)
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=False)
    module.eval().to(device)
    config = os.path.join(os.path.dirname(os.path.dirname(path)), "config.yaml")
    instruction = None
    if os.path.isfile(config):
        data = (yaml.safe_load(open(config)) or {}).get("data") or {}
        instruction = (data.get("instructions") or [None])[0]
    return module, instruction


def audio_batch(module, files: list[str], seconds: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded, mono, resampled clips cut to the encoder's window (or ``seconds``) from the start,
    right-padded: (wave [B, S], mask [B, S])."""
    from bridgebench.datamodules.audio import load_audio
    from bridgebench.datamodules.datamodule import _pad

    window = min(s for s in (seconds, module.encoder.max_seconds, 1e9) if s)
    rate = module.encoder.sample_rate
    return _pad([torch.from_numpy(load_audio(f, rate)[: int(window * rate)]) for f in files])


@torch.no_grad()
def caption_files(module, files: list[str], instruction, seconds: Optional[float] = None,
                  batch_size: int = 8) -> list[str]:
    """The run's answer for each file: to ``instruction`` (one for all, or one per file)."""
    if module.llm is None:
        raise ConfigError("this run has no language model (a stage-1 run); caption needs a stage-2 run")
    instructions = [instruction] * len(files) if isinstance(instruction, str) else list(instruction)
    if len(instructions) != len(files):
        raise ValueError(f"caption_files: {len(files)} files but {len(instructions)} instructions")
    out = []
    for start in range(0, len(files), batch_size):
        part = files[start:start + batch_size]
        wave, mask = audio_batch(module, part, seconds)
        text = module.data_contract().text(instructions[start:start + batch_size])
        batch = {"id": part, "audio": wave.to(module.device), "audio_mask": mask.to(module.device),
                 "text": {k: v.to(module.device) for k, v in text.items()}}
        out += module.generate(batch)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    from bridgebench.cli import quiet_libraries

    parser = argparse.ArgumentParser(prog="python -m bridgebench caption", description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    parser.add_argument("--ckpt", required=True, help="run folder or checkpoint file")
    parser.add_argument("--instruction", help="a question or instruction (default: the run's caption instruction)")
    parser.add_argument("--seconds", type=float, help="use at most this many seconds from the start")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    quiet_libraries()
    module, default = load_run(args.ckpt, args.device)
    instruction = args.instruction or default or "Generate an objective music description."
    for path, text in zip(args.audio, caption_files(module, args.audio, instruction, args.seconds), strict=True):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
