"""An exported bridge: the self-contained folder ``python -m bridgebench export`` writes, read back.

::

    OUT/
      model.safetensors   the weights no pretrained reference rebuilds: every trainable one (bridge,
                          LoRA adapters, a trained encoder, heads) and those the run loaded from other
                          runs' checkpoints (e.g. an encoder trained by tagging)
      bridgebench.json    what a reload needs: the hyper-parameters (checkpoint options cleared, since
                          their weights are in the file), the frozen parts' references and identities,
                          the run's instruction, the tag vocabulary, where it came from
      config.yaml         the resolved config of the fit that trained it (the recipe, for people)
      README.md           a model card: what it is and how to load it

Frozen parts are not copied: ``from_pretrained`` rebuilds them from their references (a hub id, a
``pkg:`` package, ``tiny``), exactly as a run's checkpoint is reloaded. A folder on the hub (a repo
``owner/name``) is fetched with ``huggingface_hub`` first. Nothing here imports the module class;
``BridgeModule.from_pretrained`` passes itself in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from bridgebench.engine.checkpoints import check_trainable
from bridgebench.errors import CheckpointError, ConfigError
from bridgebench.runtime.io import atomic_write, file_mode, write_json
from bridgebench.runtime.references import is_hub_id

FORMAT = "bridgebench-export"
VERSION = 1
WEIGHTS = "model.safetensors"
META = "bridgebench.json"
# Options whose files' weights an export carries itself (a reader has neither those files nor the runs).
CHECKPOINT_OPTIONS = ("stage1_checkpoint", "stage1_parts", "encoder_checkpoint")


def is_export(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, META))


def frozen_references(hparams: dict) -> dict:
    """``{part: {kind, pretrained[, gguf_file]}}`` of the encoder and LLM, as the hyper-parameters name them."""
    out = {}
    for part in ("encoder", "llm"):
        spec = hparams.get(part) or {}
        kind = spec.get("name")
        options = spec.get(kind) if isinstance(spec.get(kind), dict) else {}
        if not kind or kind == "none":
            continue
        out[part] = {"kind": kind, **{k: options[k] for k in ("pretrained", "gguf_file") if options.get(k)}}
    return out


def write_export(out: Path, state: dict[str, torch.Tensor], meta: dict, config_text: Optional[str],
                 card: str) -> list[Path]:
    """Write the folder's files (each whole or absent); returns them."""
    from safetensors.torch import save_file

    weights = out / WEIGHTS
    tmp = out / f".{WEIGHTS}.tmp"
    # Contiguous copies on the CPU: safetensors refuses views and tensors that share storage (tied weights).
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(tmp),
              metadata={"format": "pt", "producer": FORMAT})
    os.chmod(tmp, file_mode())
    os.replace(tmp, weights)
    paths = [weights, write_json(out / META, meta)]
    if config_text is not None:
        paths.append(atomic_write(out / "config.yaml", config_text))
    paths.append(atomic_write(out / "README.md", card))
    return paths


def model_card(meta: dict) -> str:
    """README.md of an export (the hub shows it): what the parts are, which weights it holds, how to load it."""
    hp, weights = meta["hyper_parameters"], meta["weights"]
    trained = {k.split(".")[0] for k in weights["trained"]}
    from_runs = {k.split(".")[0] for k in weights["from_other_runs"]}
    rows = []
    for part in ("encoder", "bridge", "llm"):
        kind = (hp.get(part) or {}).get("name")
        if not kind or kind == "none":
            continue
        ref = meta["frozen"].get(part, {})
        if part in trained:
            where = "trained; in `model.safetensors`"
        elif part in from_runs:
            where = "frozen, trained by an earlier run; in `model.safetensors`"
        else:
            where = f"frozen; rebuilt from `{ref.get('pretrained', kind)}`" + (
                f" (`{ref['gguf_file']}`)" if ref.get("gguf_file") else "")
        rows.append(f"| {part} | `{kind}` | {where} |")
    source = meta.get("source", {})
    lines = [
        "---", "library_name: bridgebench", "tags: [audio, audio-language-model, bridgebench]", "---", "",
        f"# Audio-LLM bridge: {' -> '.join(r.split('`')[1] for r in rows)}", "",
        "Exported from a bridgebench run (a frozen audio encoder feeds a trained bridge, which turns audio "
        "into soft prompts for a language model).", "",
        "| part | kind | weights |", "| --- | --- | --- |", *rows, "",
        f"{weights['parameters']:,} parameters in `model.safetensors`; trained for {source.get('global_step')} "
        f"steps. `bridgebench.json` holds what a reload needs, `config.yaml` the training recipe.", "",
        "```bash", "python -m bridgebench caption song.wav --ckpt <this folder or hub repo>", "```", "",
        "```python", "from bridgebench import BridgeModule", "",
        'module = BridgeModule.from_pretrained("<this folder or hub repo>")', "```", "",
        f"Default instruction: {meta.get('instruction')!r}.", "",
    ]
    return "\n".join(lines)


def local_folder(path: str, option: str) -> Path:
    """The export folder at ``path``, or a hub repo ``owner/name`` downloaded into the hub cache."""
    if os.path.isdir(path):
        if not is_export(path):
            raise CheckpointError(f"{option}: '{path}' is a folder but not an exported bridge (no {META} inside)")
        return Path(path)
    if not is_hub_id(path):
        raise CheckpointError(f"{option}: '{path}' does not exist (give an exported bridge's folder or a hub repo id)")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id=path, allow_patterns=[WEIGHTS, META, "config.yaml", "README.md"]))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, no access: one line each
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{option}: '{path}' is neither a folder here nor a hub repo that can be fetched "
                              f"({reason})") from None
    if not is_export(folder):
        raise CheckpointError(f"{option}: hub repo '{path}' holds no exported bridge (no {META})")
    return folder


def read_export(path: str, option: str = "from_pretrained") -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(metadata, weights, folder) of an exported bridge; a wrong or damaged folder is one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = local_folder(path, option)
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{option}: cannot read '{folder / META}': {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("hyper_parameters"), dict):
        raise CheckpointError(f"{option}: '{folder / META}' is not a bridgebench export description")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{option}: '{folder}' is export version {meta['version']}; this bridgebench reads "
                              f"up to {VERSION} (update bridgebench)")
    try:
        state = load_file(str(folder / WEIGHTS))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{option}: cannot read '{folder / WEIGHTS}': {str(err).splitlines()[0][:160]}") from None
    return meta, state, folder


def load_exported(cls, path: str, option: str = "from_pretrained", **overrides: Any):
    """An instance of ``cls`` (the LightningModule) rebuilt from an export, in eval mode."""
    meta, state, _ = read_export(path, option)
    return build_exported(cls, meta, state, path, option, **overrides)


def build_exported(cls, meta: dict, state: dict[str, torch.Tensor], path: str, option: str, **overrides: Any):
    """``cls`` built from an export's hyper-parameters (frozen parts from their references), then its
    weights loaded, each of which must have its place; in eval mode. The run's speed switches
    (compile, FP8: how its steps ran on its GPU) are off unless ``overrides`` give them."""
    module = cls.from_hparams(meta["hyper_parameters"], **{"speed": {}, **overrides})
    vocabulary = meta.get("tag_vocabulary")
    if vocabulary and module.tagger is None:  # the tag head is built from the training data in a run
        from bridgebench.encoders.tagging import TagHead

        module.tagger = TagHead(module.encoder.output_dim, vocabulary)
    own = module.state_dict()
    for key, value in state.items():
        if key not in own:
            raise CheckpointError(f"{option}: '{path}' has weight '{key}' that the model it describes lacks; "
                                  "the export was written by another version of bridgebench or edited")
        if own[key].shape != value.shape:
            raise CheckpointError(f"{option}: '{key}' has shape {tuple(value.shape)} in '{path}' but "
                                  f"{tuple(own[key].shape)} in the model it describes")
    try:
        check_trainable({"state_dict": state}, module.trainable_state_keys())
    except ConfigError as err:  # names the first missing weight
        raise CheckpointError(f"{option}: '{path}': {err}") from None
    module.load_state_dict(state, strict=False)
    return module.eval()
