"""A sweep's results as a table and a plot: mean ± std over seeds per cell, chance levels, and what
the protocol tuned (pure presentation: no Lightning, no runs)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Optional

from bridgebench.evaluation.results import csv_table, markdown_table


def mean_std(values: list[float]) -> tuple[Optional[float], float]:
    return (statistics.mean(values) if values else None, statistics.stdev(values) if len(values) > 1 else 0.0)


def _point(point: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()) or "preset"


def _numbers(runs: dict, metric: str) -> list[float]:
    return [r[metric] for r in runs.values() if isinstance(r.get(metric), (int, float))
            and not isinstance(r.get(metric), bool) and math.isfinite(r[metric])]


def shared_stage1(spec: dict, cell: str) -> bool:
    """Whether every seed of ``cell`` starts from one stage-1 run (a need without ``per_seed``)."""
    need = ((spec.get("cells") or {}).get(cell, {}).get("inputs") or {}).get("model.stage1_checkpoint")
    return need is not None and not (spec.get("needs") or {}).get(need, {}).get("per_seed", False)


def _edges(row: dict) -> str:
    """A warning for each tuned value chosen at the end of its grid (the best may lie beyond it)."""
    out = []
    for key, chosen in (row["chosen"] or {}).items():
        grid = sorted({t["point"][key] for t in row["tuning"] if key in t["point"]})
        if len(grid) > 1 and chosen in (grid[0], grid[-1]):
            out.append(f"{key.split('.')[-1]}={chosen} is the grid's {'lowest' if chosen == grid[0] else 'highest'} value")
    return f" ({'; '.join(out)}: the best may lie beyond the grid)" if out else ""


def _value(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def _grid_text(tune) -> str:
    if isinstance(tune, list):  # points tried as given, not combined
        return "points " + "; ".join(_point(p) for p in tune)
    return str({k: v for k, v in (tune or {}).items()})


def _compute_text(compute: dict) -> str:
    minutes = compute.get("minutes") or {}
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(minutes.items()) if v > 0)
    text = (f"Compute: {sum(minutes.values()):.1f} wall minutes of commands in all ({parts}), summed over "
            "resumed attempts; the sweep's own bookkeeping between commands is not counted.")
    if compute.get("interrupted"):
        text += (f" {compute['interrupted']} command(s) have no end (killed with a stopped session, or still "
                 "running when the table was made); their time is not known and not counted.")
    return text


def tabulate(name: str, spec: dict, cells: dict[str, dict], failures: dict,
             compute: Optional[dict] = None) -> tuple[str, str, list[dict]]:
    """Markdown, CSV and the rows (for the plot) of a finished sweep; ``compute``: the wall minutes of
    its commands (``Sweep.compute``), noted under the table."""
    metrics, chance = spec["metrics"], spec.get("chance") or {}
    protocol = spec.get("protocol") or {}
    rows = []
    for cell, result in cells.items():
        runs = result["runs"]
        first = next(iter(runs.values()), {})
        fit = [t / 60 for t in result.get("fit_s", []) if t]
        rows.append({"cell": cell, "seeds": sorted(runs), "chosen": result.get("chosen") or {},
                     "tuning": result.get("tuning") or [],
                     "trainable_params": first.get("run", {}).get("trainable_params"),
                     "fit_min": mean_std(fit)[0],
                     **{m: mean_std(_numbers(runs, m)) for m in metrics}})
    tuned = any(r["tuning"] for r in rows)
    header = ["cell", "seeds"] + (["chosen (val)"] if tuned else []) + ["trainable params", *metrics, "fit min"]
    md_rows, csv_rows = [], []
    for row in rows:
        cells_md = [row["cell"], str(len(row["seeds"]))] + ([_point(row["chosen"])] if tuned else [])
        cells_md.append(f"{row['trainable_params'] / 1e6:.2f}M" if row["trainable_params"] else "n/a")
        one_stage1 = shared_stage1(spec, row["cell"])
        for m in metrics:
            mean, std = row[m]
            if mean is None:
                cells_md.append("n/a")
            elif one_stage1 and m.startswith("stage1:"):
                cells_md.append(f"{mean:.4g} (one run)")  # the seeds share it: no spread to show
            elif len(row["seeds"]) == 1:
                cells_md.append(f"{mean:.4g} (one seed)")  # "± 0" would read as a spread that was measured
            else:
                cells_md.append(f"{mean:.4g} ± {std:.2g}")
        cells_md.append(f"{row['fit_min']:.1f}" if row["fit_min"] is not None else "n/a")
        md_rows.append(cells_md)
        csv_rows.append([row["cell"], len(row["seeds"])] + ([_point(row["chosen"])] if tuned else [])
                        + [row["trainable_params"]] + [x for m in metrics for x in row[m]] + [row["fit_min"]])
    if chance:
        md_rows.append(["chance", ""] + ([""] if tuned else []) + [""]
                       + [f"{chance[m]:.4g}" if m in chance else "" for m in metrics] + [""])
    md = [f"# Sweep {name}", ""] + markdown_table(header, md_rows)
    notes = [f"Mean ± standard deviation over seeds {spec['seeds']} (cells list the seeds that finished); "
             "fit min: wall minutes of one seed's fit."]
    if tuned:
        select = protocol.get("select", {})
        grid = {k: v for r in rows for k, v in (r["chosen"] or {}).items()}
        notes.append(f"Protocol: for every cell, {', '.join(sorted(grid))} chosen from the grid "
                     f"{_grid_text(protocol.get('tune'))} (plus any cell-specific entries) by "
                     f"{select.get('metric')} ({select.get('mode', 'min')}) on the validation split at seed "
                     f"{protocol.get('tune_seed')}, with the same data, encoder, LLM and step budget; the test split "
                     "is never used to choose."
                     + (" The grid's fits ran with " + ", ".join(f"{k}={v}" for k, v in _dotted(protocol["tune_overlay"]).items())
                        + " on top of the shared settings (a proxy), then every seed was fitted at the chosen point "
                        "with the shared settings." if protocol.get("tune_overlay") else "")
                     + " Grid values per cell:")
        for row in rows:
            cell = (spec.get("cells") or {}).get(row["cell"]) or {}
            parent = cell.get("setting_of") or cell.get("test_of")
            if parent and not row["tuning"]:
                notes.append(f"- {row['cell']}: not tuned, the setting chosen for {parent}")
                continue
            values = ", ".join(f"{_point(t['point'])}: {t['value']:.4f}" if t["value"] is not None
                               else f"{_point(t['point'])}: failed" for t in row["tuning"])
            notes.append(f"- {row['cell']}: {values}{_edges(row)}")
    if spec.get("overlay"):
        notes.append("Shared by every cell (the sweep's overlay): " + ", ".join(
            f"{k}={v}" for k, v in _dotted(spec["overlay"]).items()) + ".")
    if any(shared_stage1(spec, r["cell"]) for r in rows) and any(m.startswith("stage1:") for m in metrics):
        notes.append("stage1: columns are the cell's stage-1 run; \"(one run)\": every seed's stage 2 started "
                     "from that one run, so the spread of the other columns is stage 2's.")
    if chance:
        notes.append("chance: " + (spec.get("chance_note") or "the level the sweep file gives per metric."))
    if compute and compute.get("minutes"):
        notes.append(_compute_text(compute))
    seeds = [[cell, str(seed)] + [_value(result["runs"][seed].get(m)) for m in metrics]
             for cell, result in cells.items() for seed in sorted(result["runs"])]
    if any(len(r["seeds"]) > 1 for r in rows):  # the spread's makings, so one bad seed is seen as one
        notes += ["", "Per seed:", ""] + markdown_table(["cell", "seed", *metrics], seeds)
    if failures:
        notes += ["", "Runs not in the means (failed, or not run yet):"] + [f"- {k}: {v}" for k, v in failures.items()]
    csv_header = ["cell", "seeds"] + (["chosen"] if tuned else []) + ["trainable_params"] + \
        [x for m in metrics for x in (m, f"{m}_std")] + ["fit_min"]
    if chance:
        csv_rows.append(["chance", ""] + ([""] if tuned else []) + [""]
                        + [x for m in metrics for x in (chance.get(m, ""), "")] + [""])
    return "\n".join(md + [""] + notes) + "\n", csv_table(csv_header, csv_rows), rows


def plot(path: Path, name: str, spec: dict, rows: list[dict], columns: int = 3) -> Optional[list[str]]:
    """One panel per metric that has a value (n/a metrics are left out), in a grid sized for a page;
    bars are means, error bars the standard deviation over seeds, the dashed line the chance level.
    Returns the metrics drawn (None when none had a value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chance = spec.get("chance") or {}
    shown = [m for m in spec["metrics"] if any(r[m][0] is not None for r in rows)]
    if not shown:
        return None
    ncols = min(columns, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, shown):
        drawn = [r for r in rows if r[metric][0] is not None]
        ax.bar(range(len(drawn)), [r[metric][0] for r in drawn], yerr=[r[metric][1] for r in drawn], capsize=4,
               color="#4c72b0")
        if metric in chance:
            ax.axhline(chance[metric], color="#c44e52", linestyle="--", linewidth=1, label="chance")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xticks(range(len(drawn)), [r["cell"] for r in drawn], rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    seeds = max((len(r["seeds"]) for r in rows), default=0)
    fig.suptitle(f"{name}: mean ± std over {seeds} seed(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return shown


def _dotted(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
