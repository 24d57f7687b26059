"""``python -m bridgebench sweep SWEEP.yaml``: run every cell x seed of a sweep, then tabulate.

A sweep file names base config files, seeds, the metrics to report, and cells, each a config
overlay (any preset key can be swept, not only the objectives). Every cell x seed runs ``fit`` then
``test`` from its last checkpoint, each in its own process, in ``<runs>/<sweep>/<cell>/seed<k>``.
A run whose ``metrics.json`` exists is finished and skipped, so an interrupted sweep resumes where
it stopped; a failed run is reported and the others still run. The results are written as
Markdown, CSV and a PNG bar plot (mean over seeds, error bars = standard deviation).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

import yaml


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "cell"


def load_sweep(path: str) -> dict:
    try:
        spec = yaml.safe_load(open(path))
    except OSError as err:
        raise SystemExit(f"error: sweep file {path}: {err.strerror}") from None
    for key in ("base", "cells"):
        if not spec or key not in spec:
            raise SystemExit(f"error: sweep file {path}: missing '{key}'")
    spec.setdefault("seeds", [0])
    spec.setdefault("metrics", ["test/loss"])
    spec["base"] = [spec["base"]] if isinstance(spec["base"], str) else list(spec["base"])
    return spec


def run_cell(configs: list[str], run_dir: Path, overlay: dict, seed: int, extra: list[str]) -> Optional[str]:
    """Fit then test one cell x seed; returns None on success, else the failure's last lines."""
    run_dir.mkdir(parents=True, exist_ok=True)
    overlay_path = run_dir / "sweep_overlay.yaml"
    overlay_path.write_text(yaml.safe_dump({**overlay, "seed_everything": seed}))
    args = [a for c in configs + [str(overlay_path)] for a in ("--config", c)]
    args += [f"--trainer.default_root_dir={run_dir}", *extra]
    log = open(run_dir / "sweep.log", "w")
    for stage in (["fit"], ["test", f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]):
        cmd = [sys.executable, "-m", "bridgebench", stage[0], *args, *stage[1:]]
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            log.close()
            tail = (run_dir / "sweep.log").read_text().strip().splitlines()[-3:]
            return f"{stage[0]} exited {done.returncode}: " + " | ".join(tail)
    log.close()
    return None


def tabulate(name: str, spec: dict, runs: dict[str, dict[int, dict]], failures: dict) -> tuple[str, str, list]:
    """Markdown and CSV of mean +- std over seeds per cell and metric."""
    metrics = spec["metrics"]
    rows = []
    for cell in spec["cells"]:
        values = {m: [r[m] for r in runs.get(cell, {}).values() if isinstance(r.get(m), (int, float))]
                  for m in metrics}
        first = next(iter(runs.get(cell, {}).values()), {})
        rows.append({"cell": cell, "seeds": len(runs.get(cell, {})),
                     "trainable_params": first.get("run", {}).get("trainable_params"),
                     **{m: (statistics.mean(v) if v else None, statistics.stdev(v) if len(v) > 1 else 0.0)
                        for m, v in values.items()}})
    header = ["cell", "seeds", "trainable params", *metrics]
    md = [f"# Sweep {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["cell", "seeds", "trainable_params"] + [x for m in metrics for x in (m, f"{m}_std")])
    for row in rows:
        cells = [row["cell"], str(row["seeds"]), str(row["trainable_params"])]
        cells += [f"{row[m][0]:.4f} ± {row[m][1]:.4f}" if row[m][0] is not None else "n/a" for m in metrics]
        md.append("| " + " | ".join(cells) + " |")
        writer.writerow([row["cell"], row["seeds"], row["trainable_params"]]
                        + [x for m in metrics for x in row[m]])
    if failures:
        md += ["", "Failed runs (not in the means):"] + [f"- {k}: {v}" for k, v in failures.items()]
    md.append("")
    md.append(f"Mean ± standard deviation over seeds {spec['seeds']}.")
    return "\n".join(md) + "\n", buf.getvalue(), rows


def plot(path: Path, name: str, spec: dict, rows: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = spec["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        means = [r[metric][0] if r[metric][0] is not None else 0.0 for r in rows]
        stds = [r[metric][1] for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(rows)), [r["cell"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
    fig.suptitle(f"{name} (mean ± std over {len(spec['seeds'])} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridgebench sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep file, e.g. experiments/sweeps/loss_ablation.yaml")
    parser.add_argument("--tiny", action="store_true", help="add experiments/tiny.yaml (CPU check)")
    parser.add_argument("--seeds", type=int, nargs="*", help="override the sweep's seeds")
    parser.add_argument("--cells", nargs="*", help="run only these cells")
    parser.add_argument("--runs", default="runs/sweeps", help="parent folder of the run folders")
    parser.add_argument("--results", default="results", help="folder of the tables and the plot")
    parser.epilog = "Arguments after -- are passed to every run, e.g. -- --trainer.max_steps=100"
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    opts = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    opts.args = extra
    spec = load_sweep(opts.sweep)
    if opts.seeds:
        spec["seeds"] = opts.seeds
    if opts.cells:
        unknown = set(opts.cells) - set(spec["cells"])
        if unknown:
            raise SystemExit(f"error: unknown cells {sorted(unknown)}; the sweep has {list(spec['cells'])}")
        spec["cells"] = {c: spec["cells"][c] for c in opts.cells}
    name = Path(opts.sweep).stem + ("-tiny" if opts.tiny else "")
    configs = spec["base"] + (["experiments/tiny.yaml"] if opts.tiny else [])
    runs: dict[str, dict[int, dict]] = {}
    failures = {}
    for cell, overlay in spec["cells"].items():
        for seed in spec["seeds"]:
            run_dir = Path(opts.runs) / name / slug(cell) / f"seed{seed}"
            metrics_file = run_dir / "metrics.json"
            if metrics_file.exists():
                print(f"[sweep] {cell} seed {seed}: finished earlier, skipped ({run_dir})", flush=True)
            else:
                print(f"[sweep] {cell} seed {seed}: running in {run_dir}", flush=True)
                error = run_cell(configs, run_dir, overlay or {}, seed, opts.args)
                if error:
                    failures[f"{cell} seed {seed}"] = error
                    print(f"[sweep] {cell} seed {seed}: FAILED: {error}", flush=True)
                    continue
            runs.setdefault(cell, {})[seed] = json.loads(metrics_file.read_text())
    md, table_csv, rows = tabulate(name, spec, runs, failures)
    out = Path(opts.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(md)
    (out / f"{name}.csv").write_text(table_csv)
    plot(out / f"{name}.png", name, spec, rows)
    print(md)
    print(f"[sweep] wrote {out / (name + '.md')}, .csv and .png", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
