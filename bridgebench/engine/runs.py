"""A trained run as a Python object: rebuilt from its checkpoint, fed audio files.

``load_run`` rebuilds the module from the hyper-parameters stored in the checkpoint (frozen parts
from their pretrained references, trainable weights from the checkpoint) and finds the run's
caption instruction in the config of the fit that trained it. ``audio_batch`` decodes files the
way the data path does (mono, the encoder's rate, its window).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import yaml

from bridgebench.engine import run_folder
from bridgebench.engine.checkpoints import read_checkpoint
from bridgebench.engine.module import BridgeModule
from bridgebench.errors import CheckpointError, ConfigError


def checkpoint_file(ref: str, option: str = "--ckpt") -> str:
    """A run folder's ``checkpoints/last.ckpt``, or the file given."""
    if os.path.isdir(ref) and not os.path.isdir(os.path.join(ref, "checkpoints")):
        raise CheckpointError(f"{option}: '{ref}' is a folder but not a run folder (no checkpoints/ inside); give a "
                              "run folder or a .ckpt file")
    return os.path.join(ref, "checkpoints", "last.ckpt") if os.path.isdir(ref) else ref


def run_instruction(run_dir: Path) -> Optional[str]:
    """The first caption instruction of the fit that trained a run (None if unknown)."""
    fit = run_folder.latest(run_dir, "fit")
    for config in ([fit / "config.yaml"] if fit else []) + [run_dir / "config.yaml"]:
        if config.is_file():
            data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
            return (data.get("instructions") or [None])[0]
    return None


def load_run(ref: str, device: str = "cpu", option: str = "--ckpt") -> tuple[BridgeModule, Optional[str]]:
    """The trained module of a run (a run folder or a checkpoint file), in eval mode on ``device``,
    and the run's default instruction. Generation uses the run's evaluation dtype, where it set one."""
    path = checkpoint_file(ref, option)
    ckpt = read_checkpoint(path, option)
    hp = dict(ckpt["hyper_parameters"])
    precision = dict(hp.get("precision") or {})
    if precision.get("frozen_eval"):
        precision["frozen"] = precision["frozen_eval"]
    module = BridgeModule.from_hparams(hp, precision=precision)
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=False)
    module.eval().to(device)
    return module, run_instruction(Path(path).parent.parent)


def audio_batch(module, files: list[str], seconds: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded, mono, resampled clips cut to the encoder's window (or ``seconds``) from the start,
    right-padded: (wave [B, S], mask [B, S])."""
    from bridgebench.datamodules.audio import load_audio
    from bridgebench.datamodules.datamodule import pad_batch

    window = min(s for s in (seconds, module.encoder.max_seconds, 1e9) if s)
    rate = module.encoder.sample_rate
    waves = []
    for f in files:
        wave = load_audio(f, rate)[: int(window * rate)]
        if len(wave) == 0:
            raise ConfigError(f"{f}: no samples in the first {window:g} s at {rate} Hz; give a longer --seconds")
        waves.append(torch.from_numpy(wave))
    return pad_batch(waves)


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
