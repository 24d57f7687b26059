"""The command line: ``python -m bridgebench fit|validate|test|predict --config experiments/<name>.yaml``,
plus the commands in ``COMMANDS`` (cache, results, data, caption, sweep).

One config system, LightningCLI (jsonargparse): presets are YAML files, later ``--config`` files
and ``--key=value`` flags override earlier ones, and ``--help`` prints every option with its
docstring. Configuration mistakes (unknown component, missing checkpoint or manifest) end the run
with one ``error:`` line before any model is built.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bridgebench.config import ConfigError, validate_model_section
from bridgebench.datamodules import AudioTextDataModule, ManifestError
from bridgebench.datamodules.audio import AudioError
from bridgebench.datamodules.datamodule import FeatureCacheMiss
from bridgebench.module import BridgeModule


def quiet_libraries() -> None:
    """Progress bars and advisory warnings of the model libraries drown the run log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class BridgeCLI(LightningCLI):
    """LightningCLI with bridgebench's defaults: the run folder is ``trainer.default_root_dir``
    (CSV logs, checkpoints/, predictions.jsonl and the resolved config all land there)."""

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        # Checked right after parsing: before seeding, data or any model is touched.
        model = config.model.as_dict()
        validate_model_section(model)
        data = config.data.as_dict() if config.get("data") else {}
        bridge = (model.get("bridge") or {}).get("name")
        instructions = data.get("instructions") or ["Generate an objective music description."]
        if bridge == "bridgenet" and data.get("task", "caption") == "caption" and not any(i.strip() for i in instructions):
            raise ConfigError("data.instructions: the bridgenet bridge reads the instruction, but every instruction "
                              "is empty; give instruction templates, use task: qa, or use the qformer bridge")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or os.path.join("runs", "default")
        config.trainer.default_root_dir = root
        from jsonargparse import Namespace

        if config.trainer.logger in (None, True):
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.CSVLogger",
                init_args=Namespace(save_dir=root, name="", version=""),
            )
        if not config.trainer.plugins:  # checkpoints are written whole or not at all
            config.trainer.plugins = [Namespace(class_path="bridgebench.checkpointing.AtomicCheckpointIO")]


    def _fill_feature_cache(self) -> None:
        """``data.features: auto``: encode the clips missing from the cache, then serve the cache."""
        if getattr(self.datamodule, "features", None) != "auto":
            return
        import torch

        from bridgebench.cache import fill_cache

        # The cache pass must not move the run's random streams (its loader draws a worker seed).
        state = torch.get_rng_state()
        fill_cache(self.model, self.datamodule, self.trainer)
        torch.set_rng_state(state)

    def before_fit(self) -> None:
        self._fill_feature_cache()

    def before_validate(self) -> None:
        self._fill_feature_cache()

    def before_test(self) -> None:
        self._fill_feature_cache()

    def before_predict(self) -> None:
        self._fill_feature_cache()


# Commands beside Lightning's fit/validate/test/predict: name -> module with main(argv).
COMMANDS = {
    "cache": "bridgebench.cache",  # fill the frozen-feature cache of a config
    "results": "bridgebench.metrics",  # aggregate run folders into a Markdown/CSV table
    "data": "bridgebench.data_cli",  # convert published metadata; render the music-synth set
    "caption": "bridgebench.caption",  # caption / answer questions about audio files with a trained run
    "sweep": "bridgebench.sweep",  # run a sweep file's cells x seeds, then tabulate and plot
    "captions": "bridgebench.captions",  # caption data: from tags (LP-MusicCaps), refine (AudioSetCaps), eval
    "report": "bridgebench.report",  # print held-out clips with their generated captions, and the metrics
}


def run(args: Optional[list[str]] = None) -> BridgeCLI:
    """Run the CLI in-process (tests use this); ``args`` as on the command line."""
    quiet_libraries()
    return BridgeCLI(
        BridgeModule,
        AudioTextDataModule,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(argv: Optional[list[str]] = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        if words and words[0] in COMMANDS:
            import importlib

            return importlib.import_module(COMMANDS[words[0]]).main(words[1:])
        run(argv)  # None: LightningCLI reads sys.argv itself
    except SIGTERMException:
        # Lightning stops cleanly on SIGTERM (preemption) with a SystemExit of code 0, which would
        # look like a finished run to a scheduler or a script.
        print("error: stopped by SIGTERM; rerun the same command with --ckpt_path=last to continue", file=sys.stderr)
        return 143
    except (ConfigError, ManifestError, AudioError, FeatureCacheMiss) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
