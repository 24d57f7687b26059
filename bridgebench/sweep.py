"""``python -m bridgebench sweep SWEEP.yaml``: run every cell x seed of a sweep, then tabulate.

A sweep file names base config files, seeds, the metrics to report, and cells, each a config
overlay (any preset key can be swept, not only the objectives). Every cell x seed runs ``fit`` then
``test`` from its last checkpoint, each in its own process, in ``<runs>/<sweep>/<cell>/seed<k>``.
A run whose ``metrics.json`` exists is finished and skipped, so an interrupted sweep resumes where
it stopped; a failed run is reported and the others still run. The results are written as
Markdown, CSV and a PNG bar plot (mean over seeds, error bars = standard deviation).

Cells of different models (e.g. the demo's three bridges) give their own ``base`` configs, and
``needs``: names from the sweep's ``needs`` table of runs that must be fitted first (a stage-1
run whose checkpoint the cell's preset reads). A need is fitted once, with its preset's own seed,
into its preset's own ``trainer.default_root_dir`` (where the cell's preset looks for it), and is
marked done by ``fit.done`` there; a need interrupted mid-run resumes from its last checkpoint.
Config paths that do not exist relative to the working folder are looked up relative to the
repository holding the sweep file. Fit wall times are recorded per run and in the table.
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
import time
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
    if not spec or "cells" not in spec:
        raise SystemExit(f"error: sweep file {path}: missing 'cells'")
    if "base" not in spec and not all(isinstance(c, dict) and "base" in c for c in spec["cells"].values()):
        raise SystemExit(f"error: sweep file {path}: missing 'base' (or a 'base' in every cell)")
    spec.setdefault("seeds", [0])
    spec.setdefault("metrics", ["test/loss"])
    spec.setdefault("needs", {})
    base = spec.get("base") or []
    spec["base"] = [base] if isinstance(base, str) else list(base)
    return spec


def resolve_config(path: str, sweep_file: str) -> str:
    """A config path as given if it exists, else relative to the repository of the sweep file
    (``<repo>/experiments/sweeps/x.yaml``), so a sweep runs from any working folder."""
    if Path(path).exists():
        return path
    repo = Path(sweep_file).resolve().parent.parent.parent
    return str(repo / path) if (repo / path).exists() else path


def _run_stages(run_dir: Path, args: list[str], stages: list[list[str]], log_name: str) -> tuple[Optional[str], dict]:
    """Run ``python -m bridgebench <stage> args`` for each stage; (error or None, seconds per stage)."""
    seconds = {}
    with open(run_dir / log_name, "a") as log:
        for stage in stages:
            cmd = [sys.executable, "-m", "bridgebench", stage[0], *args, *stage[1:]]
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            start = time.perf_counter()
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
            seconds[stage[0]] = round(time.perf_counter() - start, 1)
            if done.returncode != 0:
                log.flush()
                tail = (run_dir / log_name).read_text().strip().splitlines()[-3:]
                return f"{stage[0]} exited {done.returncode}: " + " | ".join(tail), seconds
    return None, seconds


def run_cell(configs: list[str], run_dir: Path, overlay: dict, seed: int, extra: list[str]) -> Optional[str]:
    """Fit then test one cell x seed; returns None on success, else the failure's last lines."""
    run_dir.mkdir(parents=True, exist_ok=True)
    overlay_path = run_dir / "sweep_overlay.yaml"
    overlay_path.write_text(yaml.safe_dump({**overlay, "seed_everything": seed}))
    args = [a for c in configs + [str(overlay_path)] for a in ("--config", c)]
    args += [f"--trainer.default_root_dir={run_dir}", *extra]
    (run_dir / "sweep.log").write_text("")
    error, seconds = _run_stages(run_dir, args, [["fit"], ["test", f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]],
                                 "sweep.log")
    (run_dir / "sweep_timing.json").write_text(json.dumps(seconds) + "\n")
    return error


def run_need(name: str, configs: list[str], extra: list[str], suffix: str = "") -> tuple[Optional[str], float]:
    """Fit a prerequisite run once into its preset's own folder (+ ``suffix``, e.g. ``-tiny``, so a
    check run never takes the real run's place); (error or None, fit seconds)."""
    for arg in extra:
        if arg.startswith("--trainer.default_root_dir="):
            raise SystemExit("error: --trainer.default_root_dir cannot be passed to a sweep with needs "
                             "(each need runs in its preset's own folder)")
    run_dir = need_dir(configs, suffix, name)
    marker = run_dir / "fit.done"
    if marker.exists():
        seconds = json.loads(marker.read_text()).get("fit", 0.0)
        print(f"[sweep] need {name}: fitted earlier ({run_dir}), skipped", flush=True)
        return None, seconds
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = [f"--ckpt_path={last}"] if last.exists() else []
    print(f"[sweep] need {name}: fitting in {run_dir}" + (" (resuming)" if resume else ""), flush=True)
    args = [a for c in configs for a in ("--config", c)] + [f"--trainer.default_root_dir={run_dir}", *extra]
    # Tested too, so a cell can report its stage-1 metrics (retrieval) beside its own.
    error, seconds = _run_stages(run_dir, args, [["fit", *resume], ["test", f"--ckpt_path={last}"]], "sweep.log")
    if error is None:
        marker.write_text(json.dumps(seconds) + "\n")
    return error, seconds.get("fit", 0.0)


def need_dir(configs: list[str], suffix: str, name: str = "") -> Path:
    """The run folder of a need: its configs' last ``trainer.default_root_dir``, plus ``suffix``."""
    root = None
    for config in configs:
        root = ((yaml.safe_load(open(config)) or {}).get("trainer") or {}).get("default_root_dir") or root
    if root is None:
        raise SystemExit(f"error: need '{name}': its configs set no trainer.default_root_dir")
    return Path(root + suffix)


def _mean_std(values: list) -> tuple:
    return (statistics.mean(values) if values else None, statistics.stdev(values) if len(values) > 1 else 0.0)


def tabulate(name: str, spec: dict, runs: dict[str, dict[int, dict]], failures: dict,
             timing: Optional[dict] = None) -> tuple[str, str, list]:
    """Markdown and CSV of mean +- std over seeds per cell and metric, with trainable parameters and
    fit wall time (this run's, and its needs' once-per-sweep fits)."""
    metrics = spec["metrics"]
    timing = timing or {}
    rows = []
    for cell in spec["cells"]:
        values = {m: [r[m] for r in runs.get(cell, {}).values() if isinstance(r.get(m), (int, float))]
                  for m in metrics}
        first = next(iter(runs.get(cell, {}).values()), {})
        fit = [t for t in timing.get(cell, {}).get("fit", []) if t is not None]
        rows.append({"cell": cell, "seeds": len(runs.get(cell, {})),
                     "trainable_params": first.get("run", {}).get("trainable_params"),
                     "fit_min": _mean_std([t / 60 for t in fit]),
                     "needs_fit_min": timing.get(cell, {}).get("needs"),
                     **{m: _mean_std(v) for m, v in values.items()}})
    show_needs = any(r["needs_fit_min"] is not None for r in rows)
    header = ["cell", "seeds", "trainable params", *metrics, "fit min"] + (["needs fit min"] if show_needs else [])
    md = [f"# Sweep {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["cell", "seeds", "trainable_params"] + [x for m in metrics for x in (m, f"{m}_std")]
                    + ["fit_min"] + (["needs_fit_min"] if show_needs else []))
    for row in rows:
        cells = [row["cell"], str(row["seeds"]), str(row["trainable_params"])]
        cells += [f"{row[m][0]:.4f} ± {row[m][1]:.4f}" if row[m][0] is not None else "n/a" for m in metrics]
        cells.append(f"{row['fit_min'][0]:.1f}" if row["fit_min"][0] is not None else "n/a")
        needs = row["needs_fit_min"]
        if show_needs:
            cells.append(f"{needs:.1f}" if needs is not None else "")
        md.append("| " + " | ".join(cells) + " |")
        writer.writerow([row["cell"], row["seeds"], row["trainable_params"]]
                        + [x for m in metrics for x in row[m]] + [row["fit_min"][0]]
                        + ([needs] if show_needs else []))
    if failures:
        md += ["", "Failed runs (not in the means):"] + [f"- {k}: {v}" for k, v in failures.items()]
    md.append("")
    md.append(f"Mean ± standard deviation over seeds {spec['seeds']}. fit min: wall minutes of the cell's own "
              "fit (cached-feature runs include filling the cache when it was empty)"
              + ("; needs fit min: the stage-1 runs it starts from (fitted once, shared between cells)."
                 if show_needs else "."))
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
    parser.add_argument("--name", help="name of the run folder and tables (default: the sweep file's name)")
    parser.add_argument("--report", type=int, default=0, metavar="N",
                        help="after each run, print N held-out clips (true labels, generated caption) and its metrics")
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
    name = (opts.name or Path(opts.sweep).stem) + ("-tiny" if opts.tiny else "")
    tiny = ["experiments/tiny.yaml"] if opts.tiny else []
    resolve = lambda paths: [resolve_config(p, opts.sweep) for p in paths]  # noqa: E731
    runs: dict[str, dict[int, dict]] = {}
    failures = {}
    timing: dict[str, dict] = {}
    need_seconds: dict[str, Optional[float]] = {}
    for cell, overlay in spec["cells"].items():
        overlay = dict(overlay or {})
        base = overlay.pop("base", None)
        needs = overlay.pop("needs", None) or []
        stage1 = overlay.pop("stage1", None)
        if stage1 is not None and stage1 not in needs:
            raise SystemExit(f"error: cell '{cell}': stage1 '{stage1}' must be one of its needs {needs}")
        configs = resolve((([base] if isinstance(base, str) else base) if base else spec["base"]) + tiny)
        unknown = [n for n in needs if n not in spec.get("needs", {})]
        if unknown:
            raise SystemExit(f"error: cell '{cell}' needs {unknown}, which the sweep's 'needs' table lacks")
        failed_need = None
        for need in needs:
            if need not in need_seconds:
                paths = spec["needs"][need]
                error, seconds = run_need(need, resolve(([paths] if isinstance(paths, str) else paths) + tiny), opts.args,
                                          "-tiny" if opts.tiny else "")
                need_seconds[need] = None if error else seconds
                if error:
                    failures[f"need {need}"] = error
                    print(f"[sweep] need {need}: FAILED: {error}", flush=True)
            if need_seconds[need] is None:
                failed_need = need
        if failed_need:
            failures[cell] = f"not run: need {failed_need} failed"
            continue
        timing[cell] = {"fit": [], "needs": (sum(need_seconds[n] for n in needs) / 60 if needs else None)}
        for seed in spec["seeds"]:
            run_dir = Path(opts.runs) / name / slug(cell) / f"seed{seed}"
            metrics_file = run_dir / "metrics.json"
            if metrics_file.exists():
                print(f"[sweep] {cell} seed {seed}: finished earlier, skipped ({run_dir})", flush=True)
            else:
                print(f"[sweep] {cell} seed {seed}: running in {run_dir}", flush=True)
                error = run_cell(configs, run_dir, overlay, seed, opts.args)
                if error:
                    failures[f"{cell} seed {seed}"] = error
                    print(f"[sweep] {cell} seed {seed}: FAILED: {error}", flush=True)
                    continue
            results = json.loads(metrics_file.read_text())
            if stage1 is not None:  # the cell's own stage-1 run: its metrics as "stage1:<name>"
                paths = spec["needs"][stage1]
                stage1_file = need_dir(resolve([paths] if isinstance(paths, str) else paths),
                                       "-tiny" if opts.tiny else "", stage1) / "metrics.json"
                if stage1_file.exists():
                    results.update({f"stage1:{k}": v for k, v in json.loads(stage1_file.read_text()).items()})
            runs.setdefault(cell, {})[seed] = results
            timing_file = run_dir / "sweep_timing.json"
            if timing_file.exists():
                timing[cell]["fit"].append(json.loads(timing_file.read_text()).get("fit"))
            if opts.report:
                from bridgebench.report import report

                print(report(run_dir, opts.report), flush=True)
    md, table_csv, rows = tabulate(name, spec, runs, failures, timing)
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
