"""``python -m bridgebench results RUN... [--out FILE.md]``: the runs' test metrics as one table.

Reads each run folder's ``metrics.json`` (its newest successful test) and prints a Markdown table;
``--out`` also writes FILE.md and FILE.csv.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from bridgebench.errors import ConfigError


def main(argv: Optional[list[str]] = None) -> int:
    from bridgebench.evaluation.results import results_table
    from bridgebench.runtime.io import atomic_write, ensure_file_target

    parser = argparse.ArgumentParser(prog="python -m bridgebench results",
                                     description="Join the metrics.json of several run folders into one table.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders holding metrics.json")
    parser.add_argument("--out", metavar="FILE.md", help="also write FILE.md and FILE.csv")
    args = parser.parse_args(argv)
    for run in args.runs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise ConfigError(f"{path}: not found (not a run folder, or the run has not been tested yet)")
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not a valid metrics file ({err})") from None
    md_path = None
    if args.out:
        out = Path(args.out)
        md_path = out if out.suffix == ".md" else out.with_name(out.name + ".md")
        ensure_file_target(md_path, "--out")
    markdown, csv_text = results_table(args.runs)
    print(markdown, end="")
    if md_path is not None:
        atomic_write(md_path, markdown)
        atomic_write(md_path.with_suffix(".csv"), csv_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
