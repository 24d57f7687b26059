"""``python -m bridgebench fit|validate|test|predict --config experiments/<name>.yaml``: LightningCLI.

One config system, LightningCLI (jsonargparse): presets are YAML files, later ``--config`` files
and ``--key=value`` flags override earlier ones, and ``--help`` prints every option with its
docstring. Right after parsing, one validation pass reports every problem of the config (values,
kinds, checkpoint files, the run folder) as ``error:`` lines, before seeding, data or any model.
Each command then writes into its own folder of the run folder (``run_folder.py``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Optional

import torch
from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch.cli import LightningCLI
from omegaconf.errors import OmegaConfBaseException

from bridgebench.datamodules import AudioTextDataModule
from bridgebench.engine import loggers, run_folder, validate
from bridgebench.engine.checkpoints import checkpoint_problem, read_checkpoint
from bridgebench.engine.module import BridgeModule
from bridgebench.errors import ConfigError, ConfigProblems, OutputError
from bridgebench.runtime.env import quiet_libraries
from bridgebench.runtime.io import ensure_dir

CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"


def interpolation_problem(err: Exception) -> str:
    """One line for a ${...} that cannot be resolved: the key it is in and what is wrong."""

    def unnested(key: str) -> str:  # the parser nests a file under the subcommand; the user never wrote that
        head, _, rest = key.partition(".")
        return rest if head in LightningCLI.subcommands() else key

    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    target = re.search(r"resolved to '([^']+)'", reason)
    if target:
        reason = f"key '{unnested(target.group(1))}' not found"
    return (f"{unnested(getattr(err, 'full_key', None) or '') or 'config'}: cannot resolve ${{...}}: {reason} "
            "(keys are absolute from the top of the config, e.g. ${data.batch_size}; ${...} works in --config "
            "files, not in --key=value flags)")


def resolve_ckpt_path(value: Optional[str], root: str, subcommand: str) -> tuple[Optional[str], list[str]]:
    """(the path to load, problems): ``last`` is the run folder's ``checkpoints/last.ckpt``; a fit
    with ``last`` and no checkpoint yet starts from scratch (a requeued job's first start)."""
    if value is None:
        return None, []
    if value == "last":
        path = os.path.join(root, "checkpoints", "last.ckpt")
        if not os.path.exists(path):
            if subcommand == "fit":
                return None, []
            return None, [f"--ckpt_path=last: no checkpoint at '{path}'; fit this run first (or give a .ckpt file)"]
        value = path
    problem = checkpoint_problem(value, "--ckpt_path", "fit this run first, or fix the path")
    return value, [problem] if problem else []


class BridgeCLI(LightningCLI):
    """LightningCLI with bridgebench's defaults: the run folder is ``trainer.default_root_dir``;
    checkpoints go to its ``checkpoints/``, each command's logs (CSV and TensorBoard, or the loggers
    ``trainer.logger`` names; ``loggers.py``) and config to ``logs/NN-<command>/``."""

    def __init__(self, *args_, args=None, **kwargs):
        argv = sys.argv[1:] if args is None else args
        # Attribute docstrings (each spec field's docstring in specs.py is its --help text) make
        # jsonargparse read the source of every class it builds arguments for, Trainer's included:
        # about 3x the parser's build time on every command. Only --help shows them.
        self._attribute_docs = isinstance(argv, (list, tuple)) and any(a in ("-h", "--help") for a in argv)
        super().__init__(*args_, args=args, **kwargs)

    def init_parser(self, **kwargs):
        # ${...} interpolation (omegaconf), resolved on the whole config after every --config file and
        # --key=value flag ("omegaconf+"; plain "omegaconf" resolves each file alone, so a tied value
        # would not follow a later override): `eval_batch_size: ${data.batch_size}` follows
        # --data.batch_size=8. Paths in a file are absolute from its top (`${data.batch_size}`), as
        # the file reads, though the parser nests it under the subcommand.
        set_parsing_settings(omegaconf_absolute_to_relative_paths=True,
                             docstring_parse_attribute_docstrings=self._attribute_docs)
        kwargs.setdefault("parser_mode", "omegaconf+")
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except OmegaConfBaseException as err:
            raise ConfigError(interpolation_problem(err)) from None
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        root = config.trainer.default_root_dir or os.path.join("runs", "default")
        model = config.model.as_dict()
        data = config.data.as_dict() if config.get("data") else {}
        found = validate.problems(model, data)
        ckpt, ckpt_problems = resolve_ckpt_path(config.get("ckpt_path"), root, subcommand or "")
        found += ckpt_problems
        try:
            ensure_dir(root, "trainer.default_root_dir")
        except OutputError as err:
            found.append(str(err))
        last = Path(root) / "checkpoints" / "last.ckpt"
        if subcommand == "fit" and ckpt is None and config.get("ckpt_path") is None and last.exists():
            found.append(f"trainer.default_root_dir: '{root}' already holds a fitted run ({last}); resume it with "
                         "--ckpt_path=last, or fit into another folder (nothing there is replaced)")
        if found:
            raise ConfigProblems(found)
        if subcommand:
            config.ckpt_path = ckpt
        config.trainer.default_root_dir = root

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the checkpoint's hyper-parameters into the model section; the file is read
        through ``read_checkpoint``, so a bad one is one line naming ``--ckpt_path``."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path:
            return
        hparams = dict(read_checkpoint(path, "--ckpt_path")["hyper_parameters"])
        hparams.pop("_instantiator", None)
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir
        if not self.subcommand:  # built without running (the cache command, scripts)
            config.trainer.logger = False
            return
        folder = run_folder.begin_command(root, self.subcommand, config.get("ckpt_path"))
        config.trainer.logger = loggers.command_loggers(config.trainer.logger, root, folder)
        callbacks = list(config.trainer.callbacks or [])
        checkpointing = [c for c in callbacks if getattr(c, "class_path", "") == CHECKPOINT]
        for callback in checkpointing:  # shared by the run's commands, not inside one command's folder
            given = callback.init_args.get("dirpath")
            owner = os.path.dirname(os.path.normpath(given)) if given else None
            if owner and os.path.abspath(owner) != os.path.abspath(root) and run_folder.is_run_folder(owner):
                # A config saved by another run (logs/*/config.yaml) carries that run's checkpoints
                # folder; writing there would replace its weights.
                print(f"note: ModelCheckpoint dirpath {given} is the run folder {owner}'s; this run's checkpoints "
                      f"go to {os.path.join(root, 'checkpoints')}", file=sys.stderr)
                given = None
            if given is None:
                callback.init_args.dirpath = os.path.join(root, "checkpoints")
        if not checkpointing and config.trainer.get("enable_checkpointing", True) is not False:
            callbacks.append(Namespace(class_path=CHECKPOINT, init_args=Namespace(
                dirpath=os.path.join(root, "checkpoints"), save_last=True, save_top_k=0,
                enable_version_counter=False)))
        if config.trainer.get("enable_progress_bar", True) is not False and not sys.stderr.isatty():
            # Logs and the sweep get plain progress lines instead of a redrawn terminal bar.
            config.trainer.enable_progress_bar = False
            if not os.environ.get("BRIDGEBENCH_QUIET"):
                callbacks.append(Namespace(class_path="bridgebench.engine.progress.ProgressLines"))
        callbacks.append(Namespace(class_path="bridgebench.engine.run_folder.ValidateResults"))
        if config.trainer.logger:
            callbacks.append(Namespace(class_path="bridgebench.engine.loggers.RunDescription"))
        config.trainer.callbacks = callbacks
        if not config.trainer.plugins:  # checkpoints are written whole or not at all
            config.trainer.plugins = [Namespace(class_path="bridgebench.engine.checkpoints.AtomicCheckpointIO")]

    def _fill_feature_cache(self) -> None:
        """``data.features: auto``: encode the clips missing from the cache, then serve the cache."""
        if getattr(self.datamodule, "features", None) != "auto":
            return
        from bridgebench.engine.feature_cache import fill_cache

        # The cache pass must not move the run's random streams (its loader draws a worker seed).
        state = torch.get_rng_state()
        fill_cache(self.model, self.datamodule, self.trainer.strategy.root_device,
                   progress=not os.environ.get("BRIDGEBENCH_QUIET"))
        torch.set_rng_state(state)

    def before_fit(self) -> None:
        self._fill_feature_cache()

    def before_validate(self) -> None:
        self._fill_feature_cache()

    def before_test(self) -> None:
        self._fill_feature_cache()

    def before_predict(self) -> None:
        self._fill_feature_cache()


def config_file_problems(args: list[str]) -> list[str]:
    """One line per ``--config`` file that is missing, a folder or not YAML, naming the file and the
    line (jsonargparse would print its usage and a multi-line message that does not name the file)."""
    import yaml

    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    out = []
    for path in paths:
        if not os.path.exists(path):
            out.append(f"--config {path}: no such file")
        elif os.path.isdir(path):
            out.append(f"--config {path}: is a folder, not a YAML file")
        else:
            try:
                with open(path, encoding="utf-8") as f:
                    yaml.safe_load(f)
            except UnicodeDecodeError:
                out.append(f"--config {path}: not UTF-8 text")
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
                out.append(f"--config {path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}")
    return out


def run(args: Optional[list[str]] = None, **kwargs) -> BridgeCLI:
    """Run the CLI in-process (tests use this); ``args`` as on the command line. The command's
    record in the run folder's history is closed here, ok or failed."""
    quiet_libraries()
    found = config_file_problems(list(sys.argv[1:] if args is None else args))
    if found:
        raise ConfigProblems(found)
    try:
        cli = BridgeCLI(BridgeModule, AudioTextDataModule, auto_configure_optimizers=False,
                        save_config_kwargs={"overwrite": True}, args=args, **kwargs)
    except BaseException as err:
        run_folder.end_command("failed", f"{type(err).__name__}: {err}".splitlines()[0][:300])
        raise
    run_folder.end_command("ok")
    return cli
