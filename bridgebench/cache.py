"""``python -m bridgebench cache --config ...``: fill the frozen-feature cache of a config.

Runs the config's frozen encoder over every clip of the train/val/test splits (deterministic crop
from each clip's start, the crop cached training uses) in a Lightning predict loop, so it runs on
GPUs and under DDP like training. Clips already cached are skipped, so an interrupted pass resumes.
Then train with ``--data.features=cached``.
"""

from __future__ import annotations

import sys
from typing import Optional

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset

from bridgebench.config import ConfigError
from bridgebench.datamodules.datamodule import Collate
from bridgebench.datamodules.features import FeatureStore


class FeatureCacheWriter(BasePredictionWriter):
    """Writes the predict loop's {key: (features, valid)} outputs as shards of ``shard_size`` clips."""

    def __init__(self, store: FeatureStore, shard_size: int = 256):
        super().__init__(write_interval="batch")
        self.store = store
        self.shard_size = shard_size
        self.pending: dict = {}
        self.written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.pending.update(prediction)
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        self.store.write_shard(self.pending)
        self.written += len(self.pending)
        self.pending = {}

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self.flush()


def fill_cache(module, datamodule, trainer, roles=("train", "val", "test")) -> dict[str, int]:
    """Cache the encoder outputs of every clip in ``roles``; returns counts per role."""
    if module.encoder_cache_key() is None:
        raise ConfigError("cache: the encoder trains (model.encoder.trainable or layers: weighted); "
                          "only a frozen encoder's features can be cached")
    saved = datamodule.features, datamodule.train_crop
    datamodule.features, datamodule.train_crop = "audio", "start"
    datamodule.connect(module.data_contract())
    datamodule.setup()
    store = datamodule.store()
    writer = FeatureCacheWriter(store)
    trainer.callbacks.append(writer)
    module.feature_mode = True
    limit, trainer.limit_predict_batches = trainer.limit_predict_batches, 1.0  # every clip, whatever the config
    counts = {}
    try:
        for role in roles:
            try:
                dataset = datamodule.dataset(role)
            except ValueError:
                continue  # a split the manifest does not have
            seen, todo = set(), []
            for i, ex in enumerate(dataset.examples):
                key = dataset.cache_key(ex.clip)
                if key not in store and key not in seen:  # qa sets repeat clips
                    seen.add(key)
                    todo.append(i)
            counts[role] = len(todo)
            if todo:
                loader = DataLoader(Subset(dataset, todo), batch_size=datamodule.eval_batch_size, shuffle=False,
                                    num_workers=datamodule.num_workers, collate_fn=Collate(datamodule.contract.text))
                trainer.predict(module, dataloaders=loader, return_predictions=False)
    finally:
        datamodule.features, datamodule.train_crop = saved
        module.feature_mode = False
        trainer.limit_predict_batches = limit
        trainer.callbacks.remove(writer)
    rank_zero_info(f"feature cache {store.root}: wrote {writer.written} clip(s) "
                   f"({', '.join(f'{r}: {n} new' for r, n in counts.items())})")
    return counts


def main(argv: Optional[list[str]] = None) -> int:
    from bridgebench.cli import BridgeCLI, quiet_libraries
    from bridgebench.datamodules import AudioTextDataModule
    from bridgebench.module import BridgeModule

    quiet_libraries()
    cli = BridgeCLI(BridgeModule, AudioTextDataModule, run=False, args=argv, auto_configure_optimizers=False,
                    save_config_callback=None)
    fill_cache(cli.model, cli.datamodule, cli.trainer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
