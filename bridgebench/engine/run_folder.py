"""A run folder keeps everything its commands wrote: nothing a later command does replaces it.

::

    runs/<name>/
      checkpoints/last.ckpt          fit's checkpoint (whole or absent; a resumed fit continues it)
      history.jsonl                  one line per command as it starts and as it ends (status, error)
      logs/01-fit/                   config.yaml, metrics.csv, TensorBoard events of that command
      logs/02-test/                  ... plus its metrics.json and predictions.jsonl
      logs/03-fit/                   a resumed fit: its own config and the rows it added
      metrics.json, predictions.jsonl   the newest successful test's results (what results/report read)
      skipped_audio.jsonl            clips skipped as bad audio, each row naming its stage

Each ``fit``/``validate``/``test``/``predict`` gets the next numbered folder under ``logs/``, made
with an atomic ``mkdir`` (two commands never share one). Under DDP the launching rank passes its
folder to the others through ``BRIDGEBENCH_INVOCATION``. The fit history of a resumed run is its
fit folders' ``metrics.csv`` in order (``fit_history``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import Callback

from bridgebench.evaluation.results import write_results
from bridgebench.runtime.io import append_jsonl, ensure_dir, write_json

ENV = "BRIDGEBENCH_INVOCATION"
_NAME = re.compile(r"^(\d+)-([a-z_]+)$")


def invocations(root: str | os.PathLike) -> list[Path]:
    """The command folders of a run, oldest first."""
    logs = Path(root) / "logs"
    if not logs.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in logs.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def new_invocation(root: str | os.PathLike, command: str) -> str:
    """Create ``logs/NN-<command>`` (the next free number) and return its name. A DDP rank started
    by the launching one reuses the launcher's folder."""
    inherited = os.environ.get(ENV)
    if inherited and _rank() > 0:
        return inherited
    logs = ensure_dir(Path(root) / "logs", "trainer.default_root_dir")
    number = max([int(_NAME.match(p.name).group(1)) for p in invocations(root)] + [0]) + 1
    while True:
        name = f"{number:02d}-{command}"
        try:
            os.mkdir(logs / name)
            break
        except FileExistsError:
            number += 1
    os.environ[ENV] = name
    return name


def _rank() -> int:
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


class History:
    """``history.jsonl``: what each command was, and how it ended."""

    def __init__(self, root: str | os.PathLike, name: str, command: str):
        self.path = Path(root) / "history.jsonl"
        self.name, self.command = name, command
        self.started = time.time()

    def begin(self, argv: list[str], ckpt_path: Optional[str]) -> None:
        if _rank() == 0:
            append_jsonl(self.path, [{"folder": f"logs/{self.name}", "command": self.command, "event": "started",
                                      "time": _stamp(self.started), "argv": argv, "ckpt_path": ckpt_path}])

    def end(self, status: str, error: Optional[str] = None) -> None:
        if _rank() != 0:
            return
        row = {"folder": f"logs/{self.name}", "command": self.command, "event": status, "time": _stamp(time.time()),
               "seconds": round(time.time() - self.started, 1)}
        if error:
            row["error"] = error
        try:
            append_jsonl(self.path, [row])
        except OSError:
            pass  # the run folder became unwritable; the command's own error says so


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


_current: Optional[History] = None


def begin_command(root: str, command: str, ckpt_path: Optional[str]) -> str:
    """Start a command's record in run folder ``root``; returns its ``logs/`` folder name."""
    global _current
    name = new_invocation(root, command)
    _current = History(root, name, command)
    _current.begin(sys.argv[1:], ckpt_path)
    return name


def end_command(status: str, error: Optional[str] = None) -> None:
    global _current
    if _current is not None:
        _current.end(status, error)
    _current = None
    os.environ.pop(ENV, None)


def write_test_results(trainer, metrics: dict, predictions: list[dict]) -> None:
    """A test's results into its own command folder, then (whole files) into the run folder, where
    ``results``, ``report`` and the sweep read the newest successful test."""
    from lightning.pytorch.utilities import rank_zero_info

    own = Path(trainer.log_dir or trainer.default_root_dir)
    paths = write_results(own, metrics, predictions)
    root = Path(trainer.default_root_dir)
    if own.resolve() != root.resolve():
        for path in paths:
            tmp = root / f".{path.name}.copy"
            shutil.copyfile(path, tmp)
            os.replace(tmp, root / path.name)
    rank_zero_info(f"wrote {paths[0]} and {len(predictions)} predictions to {paths[1]} (newest copy in {root})")


class ValidateResults(Callback):
    """A ``validate`` command writes its metrics to its own folder's ``metrics.json`` (the sweep's
    tuning protocol reads the validation loss there)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate" and trainer.is_global_zero and trainer.log_dir:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            write_json(Path(trainer.log_dir) / "metrics.json", metrics)


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether a command of ours has run in ``path`` (it keeps a history.jsonl)."""
    return (Path(path) / "history.jsonl").is_file()


def latest(root: str | os.PathLike, command: str) -> Optional[Path]:
    """The newest folder of ``command`` that ended ok (per history.jsonl)."""
    ok = {r["folder"] for r in read_history(root) if r.get("event") == "ok" and r.get("command") == command}
    for path in reversed(invocations(root)):
        if f"logs/{path.name}" in ok:
            return path
    return None


def read_history(root: str | os.PathLike) -> list[dict]:
    path = Path(root) / "history.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line from a crash
    return rows


def command_seconds(root: str | os.PathLike) -> tuple[dict[str, float], int]:
    """Wall seconds each command of the run took, summed over its attempts (a resumed fit counts every
    part), and how many commands started without an end on record (killed: their time is unknown)."""
    seconds: dict[str, float] = {}
    started, ended = set(), set()
    for row in read_history(root):
        if row.get("event") == "started":
            started.add(row.get("folder"))
        elif isinstance(row.get("seconds"), (int, float)):
            ended.add(row.get("folder"))
            seconds[row.get("command", "?")] = seconds.get(row.get("command", "?"), 0.0) + float(row["seconds"])
    return seconds, len(started - ended)


def fit_history(root: str | os.PathLike) -> list[dict]:
    """Every metrics row of the run's fit commands, in order (a resumed fit's rows follow the first's),
    each with the ``folder`` it came from."""
    rows = []
    for folder in invocations(root):
        if folder.name.endswith("-fit") and (folder / "metrics.csv").is_file():
            with open(folder / "metrics.csv", newline="") as f:
                rows += [{**r, "folder": folder.name} for r in csv.DictReader(f)]
    return rows
