"""``python -m bridgebench cache --config ...``: fill the frozen-feature cache of a config.

Runs the config's frozen encoder alone over every clip of the train/val/test splits not yet cached
(see ``bridgebench.engine.feature_cache``); an interrupted pass resumes. Then train with
``--data.features=cached`` (or keep ``auto``, which fills what is missing before each command).
"""

from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    from bridgebench.engine.feature_cache import fill_cache
    from bridgebench.engine.lightning_cli import BridgeCLI, config_file_problems
    from bridgebench.datamodules import AudioTextDataModule
    from bridgebench.engine.module import BridgeModule
    from bridgebench.runtime.env import quiet_libraries

    from bridgebench.errors import ConfigProblems

    quiet_libraries()
    found = config_file_problems(list(sys.argv[1:] if argv is None else argv))
    if found:
        raise ConfigProblems(found)
    cli = BridgeCLI(BridgeModule, AudioTextDataModule, run=False, args=argv, auto_configure_optimizers=False,
                    save_config_callback=None)
    fill_cache(cli.model, cli.datamodule, cli.trainer.strategy.root_device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
