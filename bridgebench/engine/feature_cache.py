"""Fill the frozen-feature cache with a pass of the encoder alone, before training starts.

Runs the frozen encoder over every clip of the train/val/test splits not yet cached
(deterministic crop from each clip's start, the crop cached training uses) and writes shards of
``shard_size`` clips (each shard and its index atomic, so an interrupted pass resumes). No LLM, no
bridge and nothing of the run's trainer is touched: the run's random streams, callbacks and
precision stay as they were. Under a multi-process launch (``WORLD_SIZE`` > 1) each rank encodes
its share of the clips and then waits until every rank's shards are written.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset

from bridgebench.datamodules.datamodule import Collate
from bridgebench.errors import ConfigError, ManifestError
from bridgebench.runtime.progress import Tenths


def _world() -> tuple[int, int]:
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)) or 0)
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)) or 1)
    return rank, world


@torch.no_grad()
def encode_batch(encoder, batch: dict, device: torch.device) -> dict:
    """{cache key: (features [T, D], real frames)} of one audio batch. A fixed-window encoder (CLAP)
    keeps all its frames, so cached batches have the shape encoded ones have; others keep the
    clip's real frames."""
    feats, mask = encoder(batch["audio"].to(device), batch["audio_mask"].to(device))
    valid = mask.sum(1)
    keep = [feats.shape[1] if encoder.max_seconds else int(n) for n in valid]
    return {key: (feats[i, : keep[i]].cpu(), int(valid[i])) for i, key in enumerate(batch["cache_key"])}


def fill_cache(module, datamodule, device: Optional[torch.device] = None, roles=("train", "val", "test"),
               shard_size: int = 256, progress: bool = True) -> dict[str, int]:
    """Cache the encoder outputs of every clip in ``roles`` not yet cached; returns new clips per role."""
    if module.encoder_cache_key() is None:
        raise ConfigError("cache: the encoder trains (model.encoder.trainable or layers: weighted); "
                          "only a frozen encoder's features can be cached")
    saved = datamodule.features, datamodule.train_crop
    datamodule.features, datamodule.train_crop = "audio", "start"
    datamodule.connect(module.data_contract())
    rank, world = _world()
    encoder = module.encoder
    device = torch.device(device or "cpu")
    was = next(encoder.parameters()).device
    encoder.to(device)
    counts: dict[str, int] = {}
    try:
        store = datamodule.store()
        for role in roles:
            try:
                dataset = datamodule.dataset(role)
            except ManifestError:
                continue  # a split the manifest does not have
            seen, todo = set(), []
            for i, ex in enumerate(dataset.examples):
                key = dataset.cache_key(ex.clip)
                if key not in store and key not in seen:  # qa sets repeat clips
                    seen.add(key)
                    todo.append(i)
            counts[role] = len(todo)
            mine = todo[rank::world]
            if not mine:
                continue
            loader = DataLoader(Subset(dataset, mine), batch_size=datamodule.eval_batch_size, shuffle=False,
                                num_workers=datamodule.num_workers, collate_fn=Collate(datamodule.contract.text))
            pending: dict = {}
            done = 0
            lines = Tenths(f"feature cache {role}", len(mine), "clips", enabled=None if progress else False)
            for batch in loader:
                pending.update(encode_batch(encoder, batch, device))
                done += len(batch["id"])
                if len(pending) >= shard_size:
                    store.write_shard(pending)
                    pending = {}
                lines.update(done)
            store.write_shard(pending)
        if world > 1:
            _wait_for(store, datamodule, roles)
    finally:
        datamodule.features, datamodule.train_crop = saved
        encoder.to(was)
    written = sum(len(range(rank, n, world)) for n in counts.values())
    rank_zero_info(f"feature cache {store.root}: wrote {written} clip(s) "
                   f"({', '.join(f'{r}: {n} new' for r, n in counts.items())})")
    return counts


def _wait_for(store, datamodule, roles, timeout: float = 6 * 3600) -> None:
    """Poll the store until every clip of ``roles`` is cached (the other ranks' shares)."""
    keys = set()
    for role in roles:
        try:
            dataset = datamodule.dataset(role)
        except ManifestError:
            continue
        keys |= {dataset.cache_key(ex.clip) for ex in dataset.examples}
    deadline = time.time() + timeout
    while True:
        store.refresh()  # re-read the shard indexes the other ranks wrote
        if all(k in store for k in keys):
            return
        if time.time() > deadline:
            raise RuntimeError(f"feature cache {store.root}: other ranks did not finish within {timeout:.0f} s")
        time.sleep(5)
