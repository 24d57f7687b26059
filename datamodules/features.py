"""Frozen-feature cache: encoder outputs written once, then served instead of audio.

A frozen encoder gives the same features for the same audio every epoch, so a ``cache`` pass
(``python -m bridgebench cache --config ...``, a Lightning predict loop) writes them to
``<cache>/features/<encoder key>/`` as safetensors shards, each with a small JSON index written
after it (atomic renames: a killed pass leaves whole shards or nothing). Training with
``data.features: cached`` then reads them back by key.

Keys make stale features impossible rather than unlikely:
- the folder key hashes the encoder's identity: kind, checkpoint reference, config and a
  fingerprint of its weights (a retrained or swapped encoder gets a new folder);
- each entry's key hashes the audio file's real path, size and modification time, the clip's
  start/end, the crop window and the sample rate (an edited file or changed window misses).
A missing entry is an error naming the file and the command that fills the cache.
Cached training uses the deterministic crop from the clip's start (the features exist once).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bridgebench.runtime.paths import cache_dir


def weights_fingerprint(module: torch.nn.Module) -> str:
    """Cheap fingerprint of every tensor's shape and sums (changes when any weight changes)."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, t in module.state_dict().items():
            t = t.detach().float() if t.is_floating_point() else t.detach().double()
            h.update(f"{name}:{tuple(t.shape)}:{t.double().sum().item():.9e}:{t.double().abs().sum().item():.9e}".encode())
    return h.hexdigest()[:16]


def encoder_key(identity: str, fingerprint: str) -> str:
    return hashlib.sha1(f"{identity}|{fingerprint}".encode()).hexdigest()[:20]


def example_key(audio: str, start: float, end: Optional[float], window: Optional[float], sample_rate: int) -> str:
    """Key of one clip's features: the file's identity plus everything that shapes the samples."""
    real = os.path.realpath(audio)
    st = os.stat(real)
    text = f"{real}|{st.st_size}|{st.st_mtime_ns}|{start}|{end}|{window}|{sample_rate}"
    return hashlib.sha1(text.encode()).hexdigest()


class FeatureStore:
    """Read/write access to one encoder's cached features."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._index: Optional[dict[str, str]] = None
        self._open: dict[str, object] = {}

    @classmethod
    def for_encoder(cls, key: str, base: Optional[str] = None) -> "FeatureStore":
        return cls(Path(base) if base else cache_dir() / "features" / key)

    def index(self) -> dict[str, str]:
        """Entry key -> shard file name, merged from every shard's index."""
        if self._index is None:
            index = {}
            if self.root.exists():
                for part in sorted(self.root.glob("shard-*.json")):
                    shard = part.with_suffix(".safetensors").name
                    for key in json.loads(part.read_text()):
                        index[key] = shard
            self._index = index
        return self._index

    def refresh(self) -> None:
        """Forget the index, so shards written by other processes are seen."""
        self._index = None

    def __contains__(self, key: str) -> bool:
        return key in self.index()

    def get(self, key: str) -> tuple[torch.Tensor, int]:
        """Features [T, D] and how many of the T frames are real."""
        shard = self.index()[key]
        if shard not in self._open:  # opened lazily in each worker process (memory-mapped)
            self._open[shard] = safe_open(str(self.root / shard), framework="pt")
        handle = self._open[shard]
        return handle.get_tensor(key), int(handle.get_tensor(key + ":valid")[0])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = {}  # file handles do not cross process boundaries
        return state

    def write_shard(self, entries: dict[str, tuple[torch.Tensor, int]]) -> None:
        """Write one shard ({key: (features [T, D], real frames)}) and then its index, each atomically."""
        if not entries:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}"
        tmp = self.root / f".{name}.safetensors.tmp"
        tensors = {}
        for key, (feats, valid) in entries.items():
            tensors[key] = feats.detach().contiguous().cpu()
            tensors[key + ":valid"] = torch.tensor([valid])
        save_file(tensors, str(tmp))
        os.replace(tmp, self.root / f"{name}.safetensors")
        tmp_index = self.root / f".{name}.json.tmp"
        tmp_index.write_text(json.dumps(sorted(entries)))
        os.replace(tmp_index, self.root / f"{name}.json")
        self._index = None
