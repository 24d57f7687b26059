"""Progress as plain lines, for logs and for the sweep: ``[progress] fit 120/250 steps, loss 0.832, ...``.

Lightning's bar redraws one terminal line; written to a file or a pipe it becomes a wall of
carriage returns. When stderr is not a terminal the CLI uses this callback instead: one line per
tenth of the work (and at least every ``every_s`` seconds), with the step, the loss, the rate and
the time left. The sweep reads these lines from its runs and shows them as one live status line.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

from lightning.pytorch.callbacks import Callback

from bridgebench.runtime.progress import PREFIX
from bridgebench.runtime.progress import seconds_text as _minutes

__all__ = ["PREFIX", "ProgressLines"]


class ProgressLines(Callback):
    def __init__(self, every_s: float = 60.0, stream=None):
        self.every_s = every_s
        self.stream = stream
        self._start = 0.0
        self._last = 0.0
        self._last_fraction = -1.0

    def _emit(self, text: str) -> None:
        print(f"{PREFIX} {text}", file=self.stream or sys.stderr, flush=True)

    def _tick(self, stage: str, done: int, total: Optional[int], extra: str = "") -> None:
        now = time.perf_counter()
        fraction = done / total if total else 0.0
        due = now - self._last >= self.every_s or int(fraction * 10) > int(self._last_fraction * 10)
        if not due and done != total:
            return
        self._last, self._last_fraction = now, fraction
        elapsed = now - self._start
        rate = elapsed / done if done else 0.0
        eta = f", ETA {_minutes(rate * (total - done))}" if total and done else ""
        of = f"/{total}" if total else ""
        self._emit(f"{stage} {done}{of}{extra}, {rate:.2f} s each{eta}")

    def _begin(self) -> None:
        self._start = self._last = time.perf_counter()
        self._last_fraction = -1.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._begin()
        self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        loss = trainer.callback_metrics.get("train/loss")
        extra = f" steps, loss {float(loss):.3f}" if loss is not None else " steps"
        if trainer.global_step > self._first_step:
            self._tick("fit", trainer.global_step, total, extra)

    def _eval_start(self, trainer, stage: str) -> None:
        self._begin()
        self._stage = stage

    def _eval_batch(self, trainer, batch_idx: int, batches) -> None:
        total = int(sum(batches)) if batches else None
        self._tick(self._stage, batch_idx + 1, total, " batches")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, "validate")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._eval_batch(trainer, batch_idx, trainer.num_val_batches)

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, batch_idx, trainer.num_test_batches)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, "predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, batch_idx, trainer.num_predict_batches)
