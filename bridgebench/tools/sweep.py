"""``python -m bridgebench sweep SWEEP.yaml``: run a sweep's cells x seeds under one protocol, then tabulate.

A sweep file (``experiments/sweeps/*.yaml``) names:

- ``needs``: runs that cells start from (an encoder trained by tagging, a stage-1 Q-Former), each
  ``{configs: [...], overlay: {...}, per_seed: bool, inputs: {...}}``. A need is fitted (and tested,
  so its metrics can be reported) once, or once per seed with ``per_seed``, into
  ``<runs>/_needs/<name>[/seed<k>]``, and is recorded there (``need.json``): a sweep that names the
  same need with other settings is refused instead of reusing the wrong run.
- ``cells``: ``{base: [...], inputs: {...}, tune: {...}, <any config keys>}``. ``inputs`` maps a
  config key to a need whose ``checkpoints/last.ckpt`` it receives on the command line
  (``model.stage1_checkpoint: demo_stage1``), so the hand-off is explicit (``--tiny`` too). An
  ablation row names the cell it ablates: ``setting_of: X`` (X's configs, inputs, overlay and the
  setting the protocol chose for X, plus its own keys; fitted and tested) or ``test_of: X`` (X's
  fitted runs tested again under its own keys, e.g. a data option, in a folder of its own). A cell
  marked ``optional`` runs only when named (``--cells``, or a file that ``extends`` this one and
  shares its run folders: ``bridgebench.tools.sweep_spec``).
- ``overlay`` (optional): config keys every cell gets before its own (the protocol's shared
  budget: steps, batch size, schedule), so the budget is written once.
- ``protocol`` (optional): ``tune`` (a grid of dotted config keys, the same for every cell; a
  cell's own ``tune`` adds entries), ``select`` (``val/loss``, lower is better, or
  ``{metric, mode: max}``), ``tune_seed`` and ``tune_overlay`` (keys only the grid's fits get, e.g. a
  shorter proxy budget). Each grid point is fitted with the tune seed and validated on the
  validation split; the best point is then fitted with every seed and tested (the tune seed's grid
  run is reused as its seed run unless a ``tune_overlay`` made it differ).
  Test data is never used to choose.
- ``seeds``, ``metrics`` (``stage1:<metric>`` reads the need a cell got as
  ``model.stage1_checkpoint``), ``chance`` (chance level per metric, drawn and printed).

Every fit/validate/test runs in its own process, in its own run folder; a finished step is never
run again (a rerun resumes an interrupted sweep), and a failed run is reported while the others
go on. Live progress of the running command is one status line (``--quiet``: none). Results:
``<results>/<name>.md``, ``.csv`` and ``.png`` (mean ± std over seeds, chance levels, what was tuned).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from bridgebench.errors import ConfigError
from bridgebench.tools.sweep_spec import grid, load_sweep, merge, nested, point_name, resolve_config, slug
from bridgebench.tools.sweep_steps import (
    Console,
    NotRunYet,
    claim,
    config_args,
    last_ckpt,
    run_commands,
    step_done,
    write_overlay,
)


class Sweep:
    def __init__(self, spec: dict, opts, console: Console):
        self.spec, self.opts, self.console = spec, opts, console
        self.suffix = "-tiny" if opts.tiny else ""
        self.tiny = ["experiments/tiny.yaml"] if opts.tiny else []
        self.runs = Path(opts.runs)
        self.failures: dict[str, str] = {}
        self.need_runs: dict[tuple, Optional[Path]] = {}
        self.results: dict[str, dict] = {}
        self.folders: dict[Path, None] = {}  # every run folder this sweep used, in order (for its compute time)

    def configs(self, paths: list[str]) -> list[str]:
        return [resolve_config(p, self.opts.sweep) for p in paths + self.tiny]

    # --- needs ---

    def need(self, name: str, seed: int) -> Optional[Path]:
        """The run folder of need ``name`` for ``seed`` (fitted and tested now if not yet); None if it failed."""
        need = self.spec["needs"][name]
        seed = seed if need["per_seed"] else None
        key = (name, seed)
        if key in self.need_runs:
            return self.need_runs[key]
        run_dir = self.runs / "_needs" / slug(name + self.suffix) / (f"seed{seed}" if seed is not None else "")
        label = f"need {name}" + (f" seed {seed}" if seed is not None else "")
        self.need_runs[key] = None
        args, error = self.input_args(need["inputs"], seed if seed is not None else self.spec["protocol"]["tune_seed"])
        if error is None:
            overlay = merge(need["overlay"], {"seed_everything": seed} if seed is not None else {})
            error = self.claimed(run_dir, {"configs": need["configs"], "overlay": overlay, "inputs": need["inputs"],
                                           "tiny": bool(self.tiny)}, label,
                                 lambda: self.fit_and(run_dir, self.configs(need["configs"]), overlay, args, ["test"], label))
        if error:
            self.fail(label, error)
            return None
        self.need_runs[key] = run_dir
        return run_dir

    def input_args(self, inputs: dict, seed: int) -> tuple[list[str], Optional[str]]:
        """``--key=<need>/checkpoints/last.ckpt`` for each input, fitting the needs first."""
        args = []
        for key, name in inputs.items():
            run_dir = self.need(name, seed)
            if run_dir is None:
                return [], f"not run: need {name} " + ("has not finished" if self.opts.table_only else "failed")
            args.append(f"--{key}={last_ckpt(run_dir)}")
        return args, None

    def fail(self, label: str, error: str) -> None:
        self.failures[label] = error
        self.console.say(f"{label}: {'not in the table' if self.opts.table_only else 'FAILED'}: {error}")

    @staticmethod
    def not_run(run_dir: Path, todo: list[str]) -> str:
        """``--table-only``: the error the last attempt of the first step left (as a sweep run would
        report it), else NotRunYet (never started, or interrupted)."""
        from bridgebench.engine.run_folder import read_history

        ended = [r for r in read_history(run_dir) if r.get("command") == todo[0] and r.get("event") != "started"]
        if ended and ended[-1].get("event") != "ok":
            return f"{todo[0]} failed earlier: {ended[-1].get('error') or ended[-1].get('event')}"
        raise NotRunYet(f"not run yet ({' + '.join(todo)} left)")

    def claim(self, run_dir: Path, identity: dict, label: str) -> None:
        claim(run_dir, identity, label, create=not self.opts.table_only)

    def claimed(self, run_dir: Path, identity: dict, label: str, step) -> Optional[str]:
        """Claim ``run_dir`` for ``identity``, then run ``step``; its error, or why it has not run yet
        (``--table-only``)."""
        try:
            self.claim(run_dir, identity, label)
            return step()
        except NotRunYet as err:
            return str(err)

    # --- runs ---

    def fit_and(self, run_dir: Path, configs: list[str], overlay: dict, args: list[str], after: list[str],
                label: str) -> Optional[str]:
        """Fit (resuming an interrupted fit) unless done, then the ``after`` commands not yet done."""
        self.folders[run_dir] = None
        todo = []
        if not step_done(run_dir, "fit"):
            todo.append(["fit", "--ckpt_path=last"])
        todo += [[c, f"--ckpt_path={last_ckpt(run_dir)}"] for c in after if not step_done(run_dir, c)]
        if not todo:
            self.console.say(f"{label}: done earlier ({run_dir})")
            return None
        if self.opts.table_only:
            return self.not_run(run_dir, [c[0] for c in todo])
        overlay_path = write_overlay(run_dir, overlay)
        common = config_args(configs, overlay_path) + [f"--trainer.default_root_dir={run_dir}", *args, *self.opts.args]
        self.console.say(f"{label}: {' + '.join(c[0] for c in todo)} in {run_dir}")
        env = {"BRIDGEBENCH_QUIET": "1"} if self.opts.quiet else {}
        error, seconds = run_commands(run_dir, common, todo, self.console, label, env)
        if "fit" in seconds:  # wall time of the fit, summed over resumed attempts
            path = run_dir / "sweep_timing.json"
            fit = (json.loads(path.read_text()).get("fit", 0.0) if path.is_file() else 0.0) + seconds["fit"]
            path.write_text(json.dumps({"fit": fit}) + "\n")
        return error

    def val_metric(self, run_dir: Path) -> Optional[float]:
        from bridgebench.engine.run_folder import latest

        folder = latest(run_dir, "validate")
        path = folder / "metrics.json" if folder else None
        if path is None or not path.is_file():
            return None
        value = json.loads(path.read_text()).get(self.spec["protocol"]["select"]["metric"])
        return float(value) if isinstance(value, (int, float)) else None

    # --- cells ---

    def cell(self, name: str) -> dict:
        """Tune (if the protocol has a grid), then fit and test every seed at the chosen setting.
        Returns {"runs": {seed: metrics}, "tuning": [...], "chosen": {...}, "fit_s": [...]}."""
        cell = self.spec["cells"][name]
        protocol = self.spec["protocol"]
        configs = self.configs(cell["base"])
        cell_dir = self.runs / self.opts.runs_name / slug(name)
        out = {"runs": {}, "tuning": [], "chosen": {}, "fit_s": [], "run_dirs": {}}
        tune_seed = protocol["tune_seed"]
        chosen_dir = None
        if cell["setting_of"]:
            # A tuned cell whose every point failed has chosen nothing: the ablation would silently run at
            # its preset's rate, so it is reported as not run instead. An untuned cell has nothing to choose.
            tuned = bool(self.spec["cells"][cell["setting_of"]]["tune"])
            other = (self.results.get(cell["setting_of"]) or self.load_protocol(cell["setting_of"])
                     if tuned else {"chosen": {}})
            if other is None or (tuned and not other["chosen"]):
                self.failures[name] = f"not run: cell {cell['setting_of']} has chosen no setting yet; run it first"
                return out
            out["chosen"] = other["chosen"]
        if cell["tune"]:
            args, error = self.input_args(cell["inputs"], tune_seed)
            if error:
                self.failures[name] = error
                return out
            for point in grid(cell["tune"]):
                run_dir = cell_dir / "tune" / point_name(point)
                label = f"{name} tune {point_name(point)}"
                overlay = merge(merge(merge(cell["overlay"], nested(point)), protocol["tune_overlay"]),
                                {"seed_everything": tune_seed})
                try:
                    self.claim(run_dir, self.identity(cell, overlay, tune_seed), label)
                    error = self.fit_and(run_dir, configs, overlay, args, ["validate"], label)
                except NotRunYet as err:  # no choice from part of the grid
                    self.fail(name, f"tuning not finished: {label}: {err}")
                    return out
                value = None if error else self.val_metric(run_dir)
                if error:
                    self.fail(label, error)
                out["tuning"].append({"point": point, "value": value, "run": str(run_dir)})
            scored = [t for t in out["tuning"] if t["value"] is not None]
            if not scored:
                self.failures[name] = "no tuning run finished; nothing to choose from"
                return out
            pick = max if protocol["select"].get("mode", "min") == "max" else min
            best = pick(scored, key=lambda t: t["value"])
            out["chosen"] = best["point"]
            chosen_dir = None if protocol["tune_overlay"] else Path(best["run"])
            if not self.opts.table_only:
                (cell_dir / "protocol.json").write_text(json.dumps({
                    "select": protocol["select"], "tune_seed": tune_seed, "chosen": out["chosen"],
                    "grid": [{"point": t["point"], "value": t["value"]} for t in out["tuning"]]}, indent=1) + "\n")
            self.console.say(f"{name}: chose {point_name(best['point'])} "
                             f"({protocol['select']['metric']} {best['value']:.4f} on the validation split)")
        for seed in self.spec["seeds"]:
            label = f"{name} seed {seed}"
            args, error = self.input_args(cell["inputs"], seed)
            overlay = merge(merge(cell["overlay"], nested(out["chosen"])), {"seed_everything": seed})
            run_dir = chosen_dir if chosen_dir is not None and seed == tune_seed else cell_dir / f"seed{seed}"
            if error is None and cell["test_of"]:  # test the other cell's fitted run, in a folder of its own
                source = (self.results.get(cell["test_of"]) or {}).get("run_dirs", {}).get(seed)
                if source is None:
                    error = (f"not run: cell {cell['test_of']} has no fitted seed {seed} in this command"
                             + ("" if cell["test_of"] in self.results else f" (name it too: --cells {cell['test_of']} {name})"))
                else:
                    args.append(f"--ckpt_path={last_ckpt(source)}")
                    error = self.claimed(run_dir, {**self.identity(cell, overlay, seed), "test_of": str(source)}, label,
                                         lambda: self.test_only(run_dir, configs, overlay, args, label))
            elif error is None:
                error = self.claimed(run_dir, self.identity(cell, overlay, seed), label,
                                     lambda: self.fit_and(run_dir, configs, overlay, args, ["test"], label))
            if error:
                self.fail(label, error)
                continue
            results = json.loads((run_dir / "metrics.json").read_text())
            stage1 = cell["inputs"].get("model.stage1_checkpoint")
            if stage1 is not None:  # the stage-1 run this seed started from: its metrics as "stage1:<name>"
                need_dir = self.need(stage1, seed)
                if need_dir is not None and (need_dir / "metrics.json").is_file():
                    results.update({f"stage1:{k}": v for k, v in json.loads((need_dir / "metrics.json").read_text()).items()})
            out["runs"][seed], out["run_dirs"][seed] = results, run_dir
            timing = run_dir / "sweep_timing.json"
            if timing.is_file():
                out["fit_s"].append(json.loads(timing.read_text()).get("fit"))
            if self.opts.report:
                from bridgebench.tools.report import report

                print(report(run_dir, self.opts.report), flush=True)
        return out

    def test_only(self, run_dir: Path, configs: list[str], overlay: dict, args: list[str], label: str) -> Optional[str]:
        self.folders[run_dir] = None
        if step_done(run_dir, "test"):
            self.console.say(f"{label}: done earlier ({run_dir})")
            return None
        if self.opts.table_only:
            return self.not_run(run_dir, ["test"])
        self.console.say(f"{label}: test in {run_dir}")
        common = config_args(configs, write_overlay(run_dir, overlay)) + [f"--trainer.default_root_dir={run_dir}",
                                                                          *args, *self.opts.args]
        env = {"BRIDGEBENCH_QUIET": "1"} if self.opts.quiet else {}
        return run_commands(run_dir, common, [["test"]], self.console, label, env)[0]

    def compute(self) -> dict:
        """Wall minutes of every command the sweep's results rest on (needs, tuning runs, seeds), from
        the run folders' histories: what a clean run of the whole sweep costs, however many times it
        was resumed."""
        from bridgebench.engine.run_folder import command_seconds

        total: dict[str, float] = {}
        interrupted = 0
        for run_dir in self.folders:
            seconds, killed = command_seconds(run_dir)
            interrupted += killed
            part = "needs" if run_dir.is_relative_to(self.runs / "_needs") else "cells"
            for command, s in seconds.items():
                total[f"{part} {command}"] = total.get(f"{part} {command}", 0.0) + s / 60
        return {"minutes": total, "interrupted": interrupted}

    def load_protocol(self, name: str) -> Optional[dict]:
        path = self.runs / self.opts.runs_name / slug(name) / "protocol.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def identity(self, cell: dict, overlay: dict, seed: int) -> dict:
        inputs = {k: f"{v}/seed{seed}" if self.spec["needs"][v]["per_seed"] else v for k, v in cell["inputs"].items()}
        return {"configs": cell["base"], "overlay": overlay, "inputs": inputs, "tiny": bool(self.tiny),
                "args": list(self.opts.args)}


def keep_previous_table(out: Path, name: str, md: str) -> Optional[Path]:
    """Move ``<name>.md/.csv/.png`` aside (``<name>.<their time>.*``) when the new table differs: a
    sweep file whose grid or cells changed tabulates other runs, and the table it replaces could no
    longer be made from the current file. Returns the kept ``.md``, or None (no table, or the same)."""
    old = out / f"{name}.md"
    if not old.exists() or old.read_text(encoding="utf-8") == md:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(old.stat().st_mtime))
    for ext in (".md", ".csv", ".png"):
        src = out / f"{name}{ext}"
        if src.exists():
            os.replace(src, out / f"{name}.{stamp}{ext}")
    return out / f"{name}.{stamp}.md"


def main(argv: Optional[list[str]] = None) -> int:
    from bridgebench.evaluation.sweep_table import plot, tabulate
    from bridgebench.runtime.io import atomic_write, ensure_dir

    parser = argparse.ArgumentParser(prog="python -m bridgebench sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep file, e.g. experiments/sweeps/demo_bridges.yaml")
    parser.add_argument("--tiny", action="store_true", help="add experiments/tiny.yaml (CPU check)")
    parser.add_argument("--seeds", type=int, nargs="*", help="override the sweep's seeds")
    parser.add_argument("--cells", nargs="*",
                        help="run only these cells, optional ones included (default: every cell not marked optional)")
    parser.add_argument("--runs", default="runs/sweeps", help="parent folder of the run folders")
    parser.add_argument("--results", default="results", help="folder of the tables and the plot")
    parser.add_argument("--name", help="name of the run folder and tables (default: the sweep file's name for the "
                        "tables, and for the run folder its runs_name, e.g. that of the sweep it extends)")
    parser.add_argument("--report", type=int, default=0, metavar="N",
                        help="after each run, print N held-out clips (true labels, generated caption) and its metrics")
    parser.add_argument("--quiet", action="store_true", help="no live progress (only the sweep's own lines)")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: tabulate the runs that are finished (the others are listed as not run "
                        "yet), e.g. while the sweep runs elsewhere or after its chance levels or metrics changed")
    parser.epilog = "Arguments after -- are passed to every run, e.g. -- --trainer.max_steps=100"
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    opts = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    opts.args = extra
    for arg in extra:
        if arg.startswith("--trainer.default_root_dir"):
            raise ConfigError("--trainer.default_root_dir cannot be passed to a sweep (each run has its own folder)")
    spec = load_sweep(opts.sweep)
    if opts.seeds:
        spec["seeds"] = opts.seeds
    if opts.cells:
        unknown = sorted(set(opts.cells) - set(spec["cells"]))
        if unknown:
            raise ConfigError(f"--cells: unknown {unknown}; the sweep has {list(spec['cells'])}")
    # spec["cells"] stays whole: a setting_of row named alone reads the setting its cell chose (from the
    # cell's protocol.json); a test_of row needs its cell run in the same command.
    to_run = [c for c in spec["cells"] if c in (opts.cells or spec["default_cells"])]
    suffix = "-tiny" if opts.tiny else ""
    # Run folders under the file's runs_name (a file that extends another shares its runs), tables
    # under the file's own name; --name names both.
    opts.runs_name = (opts.name or spec.get("runs_name") or Path(opts.sweep).stem) + suffix
    opts.name = (opts.name or Path(opts.sweep).stem) + suffix
    out = ensure_dir(opts.results, "--results")
    if not opts.table_only:
        ensure_dir(opts.runs, "--runs")
    console = Console(opts.quiet)
    sweep = Sweep(spec, opts, console)
    for name in to_run:
        sweep.results[name] = sweep.cell(name)
    cells = sweep.results
    md, table_csv, rows = tabulate(opts.name, spec, cells, sweep.failures, sweep.compute())
    kept = keep_previous_table(out, opts.name, md)
    if kept:
        console.say(f"the previous table differs: kept as {kept}, .csv and .png")
    atomic_write(out / f"{opts.name}.md", md)
    atomic_write(out / f"{opts.name}.csv", table_csv)
    plot(out / f"{opts.name}.png", opts.name, spec, rows)
    console.say(f"wrote {out / (opts.name + '.md')}, .csv and .png")
    print(md)
    return 1 if sweep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
