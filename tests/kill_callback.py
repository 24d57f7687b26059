"""Test helper: a callback that SIGKILLs its own process at a given step (a preempted node)."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    def __init__(self, step: int, signal_name: str = "SIGKILL"):
        self.step = step
        self.signal = getattr(signal, signal_name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Runs before ModelCheckpoint (Lightning orders checkpoint callbacks last): the newest
        # checkpoint on disk is the previous step's, as after a real kill.
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)
