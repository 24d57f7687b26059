"""``python -m bridgebench caption AUDIO... --ckpt RUN [--instruction "..."]``: a trained run on your audio.

RUN is a run folder (its ``checkpoints/last.ckpt`` is used), a checkpoint file, or an exported bridge
(``python -m bridgebench export``: its folder, or the hub repo it was pushed to). The model is
rebuilt from the hyper-parameters stored in the checkpoint (frozen parts from their pretrained
references, trainable weights from the checkpoint); each file is decoded, mixed to mono, resampled
to the encoder's rate and cut to the encoder's window (or ``--seconds``, from the start). Prints one
``file<TAB>text`` line per file. Without ``--instruction`` the run's caption instruction is used.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import torch

from bridgebench.errors import ConfigError


def main(argv: Optional[list[str]] = None) -> int:
    from bridgebench.engine.runs import caption_files, load_run
    from bridgebench.runtime.env import quiet_libraries

    parser = argparse.ArgumentParser(prog="python -m bridgebench caption", description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    parser.add_argument("--ckpt", required=True, help="run folder, checkpoint file, or exported bridge (folder or hub repo)")
    parser.add_argument("--instruction", help="a question or instruction (default: the run's caption instruction)")
    parser.add_argument("--seconds", type=float, help="use at most this many seconds from the start")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.seconds is not None and not args.seconds > 0:
        raise ConfigError(f"--seconds: {args.seconds}; it must be > 0")
    quiet_libraries()
    module, default = load_run(args.ckpt, args.device)
    instruction = args.instruction or default or "Generate an objective music description."
    for path, text in zip(args.audio, caption_files(module, args.audio, instruction, args.seconds), strict=True):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
