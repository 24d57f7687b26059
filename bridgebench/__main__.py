"""``python -m bridgebench <command>``: the one command table, and errors -> exit codes.

Lightning's ``fit``/``validate``/``test``/``predict`` run the LightningCLI; every other command is a
module with ``main(argv)``. A ``BridgebenchError`` prints as ``error:`` lines (one per problem) with
no traceback and exits with its code (2); an OSError on a path prints one line naming it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

LIGHTNING = ("fit", "validate", "test", "predict")
COMMANDS = {
    "cache": "bridgebench.tools.cache",  # fill the frozen-feature cache of a config
    "results": "bridgebench.tools.results",  # aggregate run folders into a Markdown/CSV table
    "report": "bridgebench.tools.report",  # print held-out clips with their generated captions, and the metrics
    "caption": "bridgebench.tools.caption",  # caption / answer questions about audio files with a trained run
    "export": "bridgebench.tools.export",  # a trained bridge as a shareable folder (safetensors + config), --push-to-hub
    "data": "bridgebench.tools.data",  # convert published metadata; render the music-synth set
    "sweep": "bridgebench.tools.sweep",  # run a sweep file's cells x seeds, then tabulate and plot
    "captions": "bridgebench.captiondata.cli",  # caption data: from tags (LP-MusicCaps), refine (AudioSetCaps), eval
}
USAGE = ("usage: python -m bridgebench {" + ",".join(LIGHTNING + tuple(COMMANDS)) + "} ...\n"
         "  fit/validate/test/predict --config experiments/<preset>.yaml [--key=value ...]   (--help for every option)")


def main(argv: Optional[list[str]] = None) -> int:
    from bridgebench.errors import BridgebenchError, error_lines

    words = list(sys.argv[1:] if argv is None else argv)
    try:
        if words and words[0] in COMMANDS:
            return importlib.import_module(COMMANDS[words[0]]).main(words[1:]) or 0
        if words and words[0] not in LIGHTNING and not words[0].startswith("-"):
            print(f"error: unknown command '{words[0]}'\n{USAGE}", file=sys.stderr)
            return 2
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from bridgebench.engine.lightning_cli import run

        try:
            run(argv)  # None: LightningCLI reads sys.argv itself
        except SIGTERMException:
            # Lightning stops cleanly on SIGTERM (preemption) with a SystemExit of code 0, which would
            # look like a finished run to a scheduler or a script.
            print("error: stopped by SIGTERM; rerun the same command with --ckpt_path=last to continue",
                  file=sys.stderr)
            return 143
    except BridgebenchError as err:
        print("\n".join(error_lines(err)), file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.filename is None:
            raise
        print(f"error: cannot use '{err.filename}': {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
