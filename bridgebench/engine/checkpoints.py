"""Checkpoints: the one place that reads a checkpoint file, trainable-only saving, stage-1 loading.

- ``read_checkpoint`` checks a path for every option and command that takes one (``--ckpt_path``,
  ``model.stage1_checkpoint``, ``model.encoder_checkpoint``, ``caption --ckpt``, ``export``): a
  missing, empty, truncated or corrupt file, a folder, or a file of the wrong kind is one
  ``CheckpointError`` line naming the option and the file.
- ``AtomicCheckpointIO``: checkpoints are written whole or not at all (a temporary file, then a
  rename), so a run killed during a save never leaves a truncated ``last.ckpt``.
- ``keep_trainable`` / ``check_trainable``: a checkpoint holds the trainable weights only (frozen
  ones are rebuilt from their pretrained references), plus the random state of the step.
- ``load_stage1``: initialise a module's bridge and/or trained encoder from a stage-1 run (the keys
  it loaded are kept in ``module.loaded_from_files``, for ``export``).
"""

from __future__ import annotations

import os
import random
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from bridgebench.errors import CheckpointError, ConfigError


def checkpoint_problem(path: Optional[str], option: str,
                       hint: str = "run the command that writes it first, or fix the path") -> Optional[str]:
    """The cheap checks (no read): what is wrong with a checkpoint path, or None. ``hint`` says how
    to get the missing file."""
    if path is None:
        return None
    full = os.path.expanduser(str(path))
    if os.path.isdir(full):
        return f"{option}: '{path}' is a folder, not a checkpoint file"
    if not os.path.exists(full):
        return f"{option}: '{path}' does not exist; {hint}"
    if os.path.getsize(full) == 0:
        return f"{option}: '{path}' is empty (a save that never finished?); delete it or give another checkpoint"
    return None


def read_checkpoint(path: str, option: str, lightning: bool = True) -> dict:
    """The checkpoint at ``path``, loaded on the CPU with ``weights_only=True``. ``lightning``: it
    must be a Lightning checkpoint written by bridgebench (else a plain state dict is also accepted,
    as a source of weights)."""
    problem = checkpoint_problem(path, option)
    if problem:
        raise CheckpointError(problem)
    try:
        ckpt = torch.load(os.path.expanduser(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file gets the same one-line report
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{option}: cannot read '{path}': truncated or not a torch checkpoint "
                              f"({type(err).__name__}: {reason})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{option}: '{path}' holds a {type(ckpt).__name__}, not a checkpoint dictionary")
    if lightning:
        if "state_dict" not in ckpt or "pytorch-lightning_version" not in ckpt:
            raise CheckpointError(f"{option}: '{path}' is a plain torch file, not a Lightning checkpoint "
                                  "(give a run's checkpoints/*.ckpt)")
        if "bridgebench" not in ckpt or not ckpt.get("hyper_parameters"):
            raise CheckpointError(f"{option}: '{path}' is a Lightning checkpoint of another program, not of a "
                                  "bridgebench run")
    else:
        state = ckpt.get("state_dict", ckpt)
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{option}: '{path}' holds no weights (neither a checkpoint nor a state dict)")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, whole-or-absent on local file systems."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        path = str(path)
        if get_filesystem(path).protocol not in ("file", ("file", "local")) and "://" in path:
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote stores: as Lightning does
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(str(path), "--ckpt_path")


def rng_state() -> dict:
    """The random state of this step, so a resumed run draws the same dropout masks and negatives."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Optional[dict]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_only(checkpoint: dict, keep: set[str]) -> None:
    """Drop frozen weights from a checkpoint being saved."""
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}


def keep_trainable(module, checkpoint: dict) -> None:
    """What a bridgebench checkpoint holds (``on_save_checkpoint``): the trainable weights, the random
    state of the step, and what the run was built from (the frozen parts' identities, the tags)."""
    checkpoint["rng"] = rng_state()
    keep = module.trainable_state_keys()
    trainable_only(checkpoint, keep)
    checkpoint["bridgebench"] = {
        "trainable_keys": sorted(keep),
        "components": {"encoder": module.encoder.identity(), "llm": module.llm.identity() if module.llm else None,
                       "bridge": module.specs["bridge"].name if module.bridge is not None else None},
    }
    if module.tagger is not None:
        checkpoint["bridgebench"]["tag_vocabulary"] = module.tagger.vocabulary


def check_trainable(checkpoint: dict, keep: set[str]) -> None:
    """A checkpoint being loaded must hold every trainable weight of this model."""
    missing = sorted(keep - set(checkpoint["state_dict"]))
    if missing:
        raise ConfigError(
            f"checkpoint lacks {len(missing)} trainable weights of this model (first: {missing[0]}); "
            "it was saved from a different configuration"
        )


def load_stage1(module, path: str, parts: tuple[str, ...] = ("bridge", "encoder"),
                required: tuple[str, ...] = ("bridge",), option: str = "model.stage1_checkpoint") -> None:
    """Initialise ``module``'s bridge and/or stage-1-trained encoder from a stage-1 checkpoint (or a
    plain state dict). Stage-1 heads and text-branch weights the stage-2 bridge has no place for
    are skipped; a bridge weight of another shape or name is an error naming it."""
    ckpt = read_checkpoint(path, option, lightning=False)
    state = ckpt.get("state_dict", ckpt)
    own = module.state_dict()
    ignored = module.bridge.stage1_only_keys()
    load, skipped = {}, []
    for key, value in state.items():
        if not key.startswith(tuple(f"{p}." for p in parts)):
            skipped.append(key)  # stage-1 heads (contrastive projections, matching head, ...)
            continue
        if key not in own:
            if key.startswith("bridge.") and not any(f in key for f in ignored):
                raise ConfigError(
                    f"{option}: '{path}' has bridge weight '{key}' that this "
                    f"'{module.specs['bridge'].name}' bridge lacks; the stage-1 run used another bridge shape"
                )
            skipped.append(key)
            continue
        if own[key].shape != value.shape:
            raise ConfigError(
                f"{option}: '{key}' has shape {tuple(value.shape)} in '{path}' but "
                f"{tuple(own[key].shape)} here; match the stage-1 bridge settings (queries, widths, window)"
            )
        load[key] = value
    fresh = sorted(k for k in module.trainable_state_keys() if k.startswith("bridge.") and k not in load)
    for part in required:
        if not any(k.startswith(f"{part}.") for k in load):
            raise ConfigError(f"{option}: '{path}' holds no {part} weights")
    module.load_state_dict(load, strict=False)
    # Weights that no pretrained reference rebuilds (e.g. an encoder trained by another run): an
    # export must carry them, since its reader has neither this file nor the run that wrote it.
    module.loaded_from_files = set(getattr(module, "loaded_from_files", set())) | set(load)
    rank_zero_info(
        f"{option.removeprefix('model.')} {path}: loaded {len(load)} tensors, skipped {len(skipped)} stage-1-only, "
        f"new in stage 2: {', '.join(fresh) if fresh else 'none'}"
    )
