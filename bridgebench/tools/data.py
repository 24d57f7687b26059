"""``python -m bridgebench data ...``: data preparation commands.

- ``data convert FORMAT SOURCE OUTPUT [--audio-root DIR] [--audio-pattern P] [--split S] [-o KEY=VALUE]``:
  a published metadata file (MusicCaps CSV, Clotho CSV, MusicQA JSON, ...) -> a bridgebench manifest.
- ``data music-synth [--clips N] [--seconds S] [--sample-rate R] [--seed K]``: render the built-in
  music set into the cache (done automatically on first use of ``builtin:music-synth``) and print
  its manifest path.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from bridgebench.errors import ConfigError


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:
        from bridgebench.datamodules.convert import main as convert_main

        return convert_main(argv[1:])
    if argv[:1] == ["music-synth"]:
        from bridgebench.datamodules.music_synth import music_synth_manifest

        parser = argparse.ArgumentParser(prog="python -m bridgebench data music-synth")
        parser.add_argument("--clips", type=int, default=2000)
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--sample-rate", type=int, default=16000)
        parser.add_argument("--seed", type=int, default=0)
        args = parser.parse_args(argv[1:])
        for name in ("clips", "seconds", "sample_rate"):
            if not getattr(args, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')}: {getattr(args, name)}; it must be > 0")
        print(music_synth_manifest(args.clips, args.seconds, args.sample_rate, args.seed))
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2
