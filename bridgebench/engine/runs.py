"""A trained run as a Python object: rebuilt from its checkpoint, fed audio files.

``load_run`` rebuilds the module from the hyper-parameters stored in the checkpoint (frozen parts
from their pretrained references, trainable weights from the checkpoint) and finds the run's
caption instruction in the config of the fit that trained it; it reads an exported bridge too.
``export_run`` writes a run as that self-contained folder (``exported.py``). ``audio_batch`` decodes files the
way the data path does (mono, the encoder's rate, its window).
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path
from typing import Optional

import torch
import yaml

from bridgebench.engine import exported, run_folder
from bridgebench.engine.checkpoints import read_checkpoint
from bridgebench.engine.module import BridgeModule
from bridgebench.errors import CheckpointError, ConfigError, OutputError
from bridgebench.runtime.io import ensure_dir, jsonable
from bridgebench.runtime.references import is_hub_id, looks_local


def checkpoint_file(ref: str, option: str = "--ckpt", exports: bool = False) -> str:
    """A run folder's ``checkpoints/last.ckpt``, or the file given (``exports``: the option takes an
    exported bridge too, which the message then names)."""
    if os.path.isdir(ref) and not os.path.isdir(os.path.join(ref, "checkpoints")):
        if exports:
            raise CheckpointError(f"{option}: '{ref}' is a folder but not a run folder (no checkpoints/ inside) nor "
                                  f"an exported bridge (no {exported.META}); give a run folder, a .ckpt file or an "
                                  "export")
        raise CheckpointError(f"{option}: '{ref}' is a folder but not a run folder (no checkpoints/ inside); give a "
                              "run folder or a .ckpt file")
    return os.path.join(ref, "checkpoints", "last.ckpt") if os.path.isdir(ref) else ref


def run_data(run_dir: Path) -> dict:
    """The ``data:`` settings of the fit that trained a run ({} if unknown)."""
    fit = run_folder.latest(run_dir, "fit")
    for config in ([fit / "config.yaml"] if fit else []) + [run_dir / "config.yaml"]:
        if config.is_file():
            return (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    return {}


def run_instruction(run_dir: Path) -> Optional[str]:
    """The first caption instruction of the fit that trained a run (None if unknown)."""
    return (run_data(run_dir).get("instructions") or [None])[0]


def _eval_precision(hparams: dict) -> dict:
    """The run's precision section with its evaluation dtype as the frozen parts' dtype, where it set one."""
    precision = dict(hparams.get("precision") or {})
    if precision.get("frozen_eval"):
        precision["frozen"] = precision["frozen_eval"]
    return precision


def _is_exported(ref: str) -> bool:
    return exported.is_export(ref) or (not os.path.exists(os.path.expanduser(ref)) and is_hub_id(ref))


def load_run(ref: str, device: str = "cpu", option: str = "--ckpt") -> tuple[BridgeModule, Optional[str]]:
    """The trained module of a run (a run folder, a checkpoint file, or an exported bridge: its folder
    or hub repo), in eval mode on ``device``, and the run's default instruction. Generation uses the
    run's evaluation dtype, where it set one."""
    if _is_exported(ref):
        meta, state, _ = exported.read_export(ref, option)
        module = exported.build_exported(BridgeModule, meta, state, ref, option,
                                         precision=_eval_precision(meta["hyper_parameters"]))
        return module.to(device), meta.get("instruction")
    path = checkpoint_file(ref, option, exports=True)
    module = _from_checkpoint(read_checkpoint(path, option))
    return module.to(device), run_instruction(Path(path).parent.parent)


def _from_checkpoint(ckpt: dict, precision: Optional[dict] = None) -> BridgeModule:
    hp = dict(ckpt["hyper_parameters"])
    # speed={}: a run that compiled or used FP8 on its GPU is read anywhere, in plain eager mode.
    module = BridgeModule.from_hparams(hp, precision=precision or _eval_precision(hp), speed={})
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=False)
    return module.eval()


def export_run(ref: str, out: str) -> tuple[list[Path], list[str]]:
    """Write run ``ref`` (a run folder or a checkpoint file) as an exported bridge into ``out``, a new
    or empty folder (see ``exported.py``). Returns the files written and notes for the person sharing it."""
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputError(f"OUT: '{out}' already exists and is not an empty folder; give a new one (an export "
                          "never replaces files)")
    path = checkpoint_file(ref, "RUN")
    ckpt = read_checkpoint(path, "RUN")
    ensure_dir(target, "OUT")  # before the model is built: a bad OUT is found in a second, not a minute
    run_dir = Path(path).parent.parent
    # Frozen parts in float32: weights the run loaded from other runs are stored as those runs saved
    # them, not at the bf16 a run may keep its frozen parts in (a reader casts them as its run says).
    module = _from_checkpoint(ckpt, {**(ckpt["hyper_parameters"].get("precision") or {}), "frozen": "float32",
                                     "frozen_eval": None})
    # The trained weights, plus those the run loaded from other runs' checkpoints (an encoder trained
    # by tagging, a frozen stage-1 part): the reader has neither those files nor the runs.
    own = module.state_dict()
    from_runs = sorted(k for k in getattr(module, "loaded_from_files", set()) if k in own)
    state = {**{k: own[k] for k in from_runs}, **ckpt["state_dict"]}
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    hp.update({k: None for k in exported.CHECKPOINT_OPTIONS})
    saved = ckpt.get("bridgebench", {})
    references = exported.frozen_references(hp)
    for part, identity in (saved.get("components") or {}).items():
        if part in references:
            references[part]["identity"] = identity
    meta = {"format": exported.FORMAT, "version": exported.VERSION, "hyper_parameters": jsonable(hp),
            "instruction": run_instruction(run_dir), "frozen": references,
            "weights": {"file": exported.WEIGHTS, "tensors": len(state),
                        "parameters": sum(v.numel() for v in state.values()),
                        "trained": sorted(ckpt["state_dict"]), "from_other_runs": [k for k in from_runs
                                                                                    if k not in ckpt["state_dict"]]},
            "source": {"run": str(run_dir.resolve()), "checkpoint": str(Path(path).resolve()),
                       "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step"),
                       "bridgebench": version("bridgebench")}}
    if saved.get("tag_vocabulary"):
        meta["tag_vocabulary"] = saved["tag_vocabulary"]
    fit = run_folder.latest(run_dir, "fit")
    config = fit / "config.yaml" if fit else run_dir / "config.yaml"
    notes = [f"{part} '{ref['pretrained']}' is a path on this machine; whoever loads the export needs it at "
             "the same path (or use a hub id or pkg: reference)"
             for part, ref in references.items() if ref.get("pretrained") and looks_local(ref["pretrained"])
             and not ref["pretrained"].startswith("pkg:")]
    files = exported.write_export(target, state, meta, config.read_text() if config.is_file() else None,
                                  exported.model_card(meta))
    return files, notes


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
