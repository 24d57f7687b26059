"""Which loggers a command gets, and what they record besides the metrics.

Every ``fit``/``validate``/``test``/``predict`` logs into its own folder of the run folder,
``logs/NN-<command>/`` (``run_folder.py``):

- by default to CSV (``metrics.csv``: what ``fit_history``, ``results`` and the sweep read) and to
  TensorBoard (an event file beside it), so ``tensorboard --logdir runs/<name>/logs`` shows each
  command of a run as its own run;
- ``trainer.logger: <a Lightning logger or a list>`` in a config logs to those (W&B, MLflow, Comet,
  ...) beside the CSV one, which the run folder needs; a logger whose ``save_dir`` is left at its
  default writes into the command's folder too (W&B offline: ``logs/NN-fit/wandb/``), and a listed
  ``TensorBoardLogger`` with ``save_dir: ${trainer.default_root_dir}`` writes where the default one does;
- ``trainer.logger: false`` logs nothing (the run folder still keeps the config and the results).

Lightning logs the module's hyper-parameters to every logger (TensorBoard: the HPARAMS tab).
``RunDescription`` adds, as TensorBoard text, the component table (what is frozen, what trains) and the
command's resolved config (the data settings are not hyper-parameters of the module).
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

CSV = "lightning.pytorch.loggers.CSVLogger"
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


def _folder_logger(class_path: str, root: str, folder: str) -> Namespace:
    return Namespace(class_path=class_path, init_args=Namespace(save_dir=root, name="logs", version=folder))


def _default_save_dir(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        parameter = inspect.signature(getattr(importlib.import_module(module), name)).parameters.get("save_dir")
    except (ImportError, AttributeError, ValueError, TypeError):
        return inspect.Parameter.empty
    return inspect.Parameter.empty if parameter is None else parameter.default


def command_loggers(configured: Any, root: str, folder: str) -> Any:
    """The ``trainer.logger`` value for a command writing into ``<root>/logs/<folder>``: CSV and
    TensorBoard when none is configured, the configured ones beside the CSV logger otherwise, and
    ``False`` kept as no logger at all."""
    if configured is False:
        return False
    if configured in (None, True):
        return [_folder_logger(CSV, root, folder), _folder_logger(TENSORBOARD, root, folder)]
    chosen = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    own = os.path.join(root, "logs", folder)
    for logger in chosen:
        args = logger.get("init_args")
        if args is None or "save_dir" not in args:
            continue
        if (logger.class_path in (CSV, TENSORBOARD) and args.get("version") is None
                and os.path.normpath(str(args.save_dir)) == os.path.normpath(root)):
            args.name, args.version = "logs", folder  # `save_dir: ${trainer.default_root_dir}`: the default place
        elif args.save_dir is None or args.save_dir == _default_save_dir(logger.class_path):
            # A save_dir left at the class default (W&B's ".", MLflow's "./mlruns") would scatter a
            # run's logs over the working folder; the command's folder keeps them with the rest.
            args.save_dir = own
    if not any(lg.class_path == CSV and lg.init_args.save_dir == root and lg.init_args.version == folder
               for lg in chosen):
        chosen.insert(0, _folder_logger(CSV, root, folder))  # first: trainer.log_dir is the first logger's
    return chosen


def _code_block(text: str) -> str:
    """Text that TensorBoard's markdown shows as it is (a 4-space indented block)."""
    return "\n".join("    " + line for line in text.splitlines())


class RunDescription(Callback):
    """The component table and the resolved config, as text in each TensorBoard logger, once per command."""

    def __init__(self) -> None:
        self._written = False

    def _write(self, trainer, pl_module) -> None:
        boards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if self._written or not boards or not trainer.is_global_zero:
            return
        self._written = True
        components = _code_block("\n".join(pl_module.component_report()))
        config = Path(trainer.log_dir or "") / "config.yaml"
        for board in boards:
            board.experiment.add_text("components", components, global_step=trainer.global_step)
            if config.is_file():
                board.experiment.add_text("config", _code_block(config.read_text()), global_step=trainer.global_step)
            board.experiment.flush()

    def on_fit_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)
