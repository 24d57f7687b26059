"""Test helper: a Lightning logger chosen by config, with a ``save_dir`` default as W&B's (``.``)."""

import json
import os

from lightning.pytorch.loggers import Logger


class RecordingLogger(Logger):
    """Appends every hyper-parameter and metrics call to ``<save_dir>/recorded.jsonl``."""

    def __init__(self, save_dir: str = ".", label: str = "recorder"):
        super().__init__()
        self._save_dir, self.label = save_dir, label

    @property
    def name(self):
        return self.label

    @property
    def version(self):
        return 0

    @property
    def save_dir(self):
        return self._save_dir

    def _write(self, row: dict) -> None:
        os.makedirs(self._save_dir, exist_ok=True)
        with open(os.path.join(self._save_dir, "recorded.jsonl"), "a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    def log_hyperparams(self, params, *args, **kwargs):
        self._write({"hparams": sorted(dict(params))})

    def log_metrics(self, metrics, step=None):
        self._write({"step": step, "metrics": metrics})
