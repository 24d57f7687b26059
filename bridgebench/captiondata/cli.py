"""``python -m bridgebench captions from-tags|refine|eval``: caption data from language models.

``from-tags``: LP-MusicCaps (``from_tags.py``); ``refine``: AudioSetCaps (its released pipeline,
``audiosetcaps.py``, or ``--mode gated``, ``refine.py``); ``eval``:
LP-MusicCaps' table-2 scores of generated manifests against their source captions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from bridgebench.captiondata import from_tags as lpmc
from bridgebench.errors import ConfigError


def _positive(name: str, value, low: float = 1) -> None:
    if value is not None and value < low:
        raise ConfigError(f"--{name}: {value}; it must be >= {low:g}")


def main(argv: Optional[list[str]] = None) -> int:
    from bridgebench.captiondata import refine
    from bridgebench.evaluation.results import markdown_table

    parser = argparse.ArgumentParser(prog="python -m bridgebench captions", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("from-tags", help="generate captions from each row's tags")
    gen.add_argument("manifest", help="input manifest (JSONL rows with 'tags'), or builtin:music-synth")
    gen.add_argument("out", help="output manifest (JSONL); appended to and resumed")
    gen.add_argument("--method", required=True, choices=lpmc.METHODS)
    gen.add_argument("--model", help="LM: hub id, folder, pkg:<package>, or tiny (a tiny random LLaMA, for "
                     "trying the pipeline); needed by the four instructions")
    gen.add_argument("--gguf-file", help="GGUF file inside --model (e.g. SmolLM2-135M-Instruct.Q4_1.gguf)")
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument("--max-new-tokens", type=int, default=96)
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--prompts", choices=lpmc.PROMPT_SETS, default="code",
                     help="instruction wording: code (their generate.py, which made the released captions: "
                     "lower case, singular variants, 'instruction \\n tags') or paper (§2.2)")
    gen.add_argument("--seed", type=int, default=0,
                     help="sampling seed of the LM; for the baselines, the seed of each row's tag shuffle")
    gen.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                     help="baselines: keep the stored tag order (their eval.py shuffles each clip's tags)")
    gen.add_argument("--repetition-penalty", type=float, default=1.0,
                     help="> 1 discourages repeats (small LMs loop under greedy decoding)")
    gen.add_argument("--limit", type=int, help="stop after this many rows in total (written earlier included)")
    gen.add_argument("--splits", nargs="*", help="only rows of these splits")
    ev = sub.add_parser("eval", help="score a generated manifest against its source captions (LP-MusicCaps table 2)")
    ev.add_argument("generated", nargs="+", help="manifests written by from-tags")
    # One comma-separated value: a list option would swallow the file names that follow it.
    ev.add_argument("--modes", type=lambda v: [m.strip() for m in v.split(",") if m.strip()],
                    default=["lp-musiccaps"], help="metric modes, comma-separated (standard, musilingo, lp-musiccaps)")
    ev.add_argument("--train-manifest", help="manifest of the training split (its rows with split 'train', or all): "
                    "vocabulary and novelty are counted against its captions, as LP-MusicCaps' table 2 does")
    ref = sub.add_parser("refine", help="AudioSetCaps: captions from an audio-language model's answers, "
                                        "merged by an LLM and refined against the labels with a contrastive scorer")
    refine.add_arguments(ref)
    opts = parser.parse_args(argv)
    if opts.command == "refine":
        from bridgebench.runtime.env import quiet_libraries

        quiet_libraries()
        if opts.mode == "released":
            from bridgebench.captiondata import audiosetcaps

            print(json.dumps(audiosetcaps.run_from_args(opts)))
        else:
            print(json.dumps(refine.run_from_args(opts)))
        return 0
    if opts.command == "from-tags":
        _positive("batch-size", opts.batch_size)
        _positive("max-new-tokens", opts.max_new_tokens)
        _positive("limit", opts.limit)
        captioner = None
        if opts.method in lpmc.INSTRUCTIONS:
            if not opts.model:
                raise ConfigError(f"--method {opts.method} needs --model")
            from bridgebench.captiondata.generator import TagCaptioner

            captioner = TagCaptioner(opts.model, opts.gguf_file, opts.max_new_tokens, opts.do_sample,
                                     opts.temperature, opts.top_p, opts.seed, opts.repetition_penalty)
        counts = lpmc.from_tags(opts.manifest, opts.out, opts.method, captioner, opts.batch_size, opts.limit,
                                opts.splits, prompts=opts.prompts, seed=opts.seed, shuffle=opts.shuffle)
        print(json.dumps(counts))
        return 0
    from bridgebench.evaluation.text import MODES

    unknown = [m for m in opts.modes if m not in MODES]
    if unknown or not opts.modes:
        raise ConfigError(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    table = []
    for path in opts.generated:
        scores = lpmc.evaluate(path, tuple(opts.modes), opts.train_manifest)
        table.append((Path(path).name, scores))
        print(json.dumps({"file": path, **scores}))
    keys = [k for k in table[0][1] if isinstance(table[0][1][k], (int, float))]
    rows = [[name] + [f"{scores.get(k):.4g}" if isinstance(scores.get(k), (int, float)) else str(scores.get(k))
                      for k in keys] for name, scores in table]
    print("\n".join(markdown_table(["file"] + keys, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
