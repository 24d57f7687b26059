"""``python -m bridgebench report RUN_DIR [-n N]``: a short, human-readable view of a test run.

Reads ``metrics.json`` and ``predictions.jsonl`` that ``test`` wrote into the run folder and prints
N held-out clips (their true labels next to the generated caption, with the attributes the caption
names marked right or wrong when the labels use the music-synth vocabulary) and the headline
metrics. Nothing is recomputed: the report shows exactly what the run measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from bridgebench.errors import ConfigError

HEADLINE = ("attr_acc_instrument", "attr_acc_genre", "attr_acc_tempo_class", "attr_acc_dynamics",
            "classify_instrument_accuracy_mean", "bleu_4", "rouge_l", "cider_d", "meteor", "spider",
            "r1_t2a", "r1_a2t", "r5_t2a", "zero_shot_acc_instrument", "loss")
SHOWN_LABELS = ("instrument", "genre", "tempo_class", "dynamics")


def report(run_dir: str | Path, n: int = 5) -> str:
    from bridgebench.evaluation.attributes import attribute_marks

    run = Path(run_dir)
    metrics_path, preds_path = run / "metrics.json", run / "predictions.jsonl"
    if not metrics_path.is_file():
        raise ConfigError(f"{metrics_path}: not found; run `test` on this run folder first")
    try:
        metrics = json.loads(metrics_path.read_text())
        rows = [json.loads(line) for line in preds_path.read_text().splitlines()] if preds_path.is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{run}: metrics.json or predictions.jsonl is not valid JSON ({err})") from None
    lines = [f"== {run} =="]
    info = metrics.get("run", {})
    if info:
        lines.append(f"model: {info.get('encoder')} -> {info.get('bridge')} -> {info.get('llm')}, "
                     f"{info.get('trainable_params'):,} trainable parameters")
    step = max(1, len(rows) // n) if rows and n else 1
    for row in rows[::step][:n]:
        labels = row.get("labels") or {}
        truth = ", ".join(f"{k}={labels[k]}" for k in SHOWN_LABELS if k in labels) or "(no labels)"
        lines.append(f"- {row['id']}  true: {truth}")
        lines.append(f"    generated: {row['prediction']!r}")
        if labels and any(k in labels for k in SHOWN_LABELS):
            lines.append(f"    named: {attribute_marks(row['prediction'], labels, SHOWN_LABELS)}")
    lines.append(f"metrics ({len(rows)} held-out predictions):")
    for name in HEADLINE:
        value = metrics.get(f"test/{name}")
        if isinstance(value, (int, float)):
            lines.append(f"  {name:26s} {value:8.2f}")
        elif isinstance(value, str):  # "unavailable: <reason>"
            lines.append(f"  {name:26s}      n/a ({value})")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridgebench report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="run folders written by `test`")
    parser.add_argument("-n", type=int, default=5, help="how many held-out clips to show (spread over the set)")
    opts = parser.parse_args(argv)
    if opts.n < 0:
        raise ConfigError(f"-n: {opts.n}; it must be >= 0")
    for run_dir in opts.run_dirs:
        print(report(run_dir, opts.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
