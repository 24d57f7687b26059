"""Results files and tables: a test's ``metrics.json`` + ``predictions.jsonl``, and the one Markdown /
CSV table writer that ``results``, ``sweep`` and ``captions eval`` share."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

from bridgebench.runtime.io import write_json, write_jsonl

UNAVAILABLE = "unavailable: "


def unavailable(reason: str) -> str:
    return UNAVAILABLE + reason


def is_unavailable(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(UNAVAILABLE)


def write_results(run_dir: str | os.PathLike, metrics: dict[str, Any], predictions: list[dict]) -> tuple[Path, Path]:
    """Write ``<run_dir>/metrics.json`` and ``<run_dir>/predictions.jsonl`` (one JSON object per line),
    each whole or not at all, predictions first (a reader that sees the metrics sees their predictions)."""
    run = Path(run_dir)
    preds_path = write_jsonl(run / "predictions.jsonl", predictions)
    metrics_path = write_json(run / "metrics.json", metrics)
    return metrics_path, preds_path


def read_metrics(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8"))


def format_value(value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(header: list[str], rows: Iterable[list[str]], align_numbers: bool = False) -> list[str]:
    """Lines of a Markdown table ('|' in cells escaped); ``align_numbers`` right-aligns columns 2+."""
    esc = lambda cell: str(cell).replace("|", "\\|")  # noqa: E731
    rule = ["---"] + (["---:"] if align_numbers else ["---"]) * (len(header) - 1)
    lines = ["| " + " | ".join(esc(c) for c in header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def csv_table(header: list[str], rows: Iterable[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def results_table(run_dirs: list[str]) -> tuple[str, str]:
    """One row per run (its folder name), the union of metric columns in first-seen order.

    Markdown: numbers to 4 decimals, unavailable metrics as ``n/a[k]`` with reason k in a footnote,
    absent metrics empty. CSV: full-precision numbers, ``n/a`` for unavailable, empty for absent."""
    rows: list[tuple[str, dict[str, Any]]] = []
    columns: list[str] = []
    for run_dir in run_dirs:
        metrics = read_metrics(run_dir)
        name = Path(run_dir).resolve().name or str(run_dir)
        rows.append((name, metrics))
        columns.extend(k for k in metrics if k not in columns)
    names = [n for n, _ in rows]
    if len(set(names)) < len(names):  # same folder name twice: show the paths as given
        rows = [(str(d), m) for d, (_, m) in zip(run_dirs, rows)]

    reasons: list[str] = []
    md_rows, csv_rows = [], []
    for name, metrics in rows:
        md_cells, csv_cells = [name], [name]
        for col in columns:
            value = metrics.get(col)
            if value is None:
                md_cells.append("")
                csv_cells.append("")
            elif is_unavailable(value):
                reason = value[len(UNAVAILABLE):]
                if reason not in reasons:
                    reasons.append(reason)
                md_cells.append(f"n/a[{reasons.index(reason) + 1}]")
                csv_cells.append("n/a")
            else:
                md_cells.append(format_value(value))
                csv_cells.append(repr(value) if isinstance(value, float) else str(value))
        md_rows.append(md_cells)
        csv_rows.append(csv_cells)
    header = ["run"] + columns
    lines = markdown_table(header, md_rows, align_numbers=True)
    if reasons:
        lines.append("")
        lines += [f"[{i}] {reason}  " for i, reason in enumerate(reasons, start=1)]
    return "\n".join(lines) + "\n", csv_table(header, csv_rows)
