"""What a person sees of a sweep: its runs' progress live on the console (rendering the data, each
step with its loss and the time left, the test batches), nothing of it with ``--quiet``, and a
results plot of one panel per metric that has a value, with error bars and the chance level."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from bridgebench.evaluation import sweep_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep(tmp_path, name: str, *flags: str, cache) -> subprocess.CompletedProcess:
    spec = {"seeds": [0], "metrics": ["test/loss"], "cells": {"one": {"base": ["experiments/blap_stage2.yaml"]}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "bridgebench", "sweep", str(path), "--tiny", *flags,
           "--runs", str(tmp_path / name / "runs"), "--results", str(tmp_path / name / "results"),
           "--", "--trainer.max_steps=3"]
    # A cache of its own: the music-synth set is rendered inside the sweep's fit, so its progress shows too.
    env = {**os.environ, "BRIDGEBENCH_CACHE": str(cache)}
    env.pop("BRIDGEBENCH_QUIET", None)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_the_sweep_console_shows_each_runs_progress_live_and_quiet_turns_it_off(tmp_path):
    out = _sweep(tmp_path, "loud", cache=tmp_path / "cache")
    lines = out.stdout.splitlines()
    # Not a terminal here, so each progress line of the child is one console line, labelled with the
    # cell, the seed and the command it belongs to.
    render = [ln for ln in lines if ln.startswith("[sweep] one seed 0 fit: render music-synth ")]
    assert render and re.search(r" 64/64 clips, .*, ETA ", render[-1]), lines
    steps = [ln for ln in lines if ln.startswith("[sweep] one seed 0 fit: fit ")]
    assert [re.search(r"fit (\d+)/3 steps", ln).group(1) for ln in steps] == ["1", "2", "3"], lines
    assert all(re.search(r", loss \d+\.\d{3}, [\d.]+ s each, ETA \d", ln) for ln in steps), steps
    assert any(re.match(r"\[sweep\] one seed 0 test: test 2/2 batches, .*ETA", ln) for ln in lines), lines
    assert lines.index(steps[-1]) < lines.index(next(ln for ln in lines if ln.startswith("[sweep] wrote ")))
    log_path = next((tmp_path / "loud" / "runs").rglob("sweep.log"))
    log = log_path.read_text()
    assert "[progress] fit 3/3 steps" in log  # the run's own log keeps them too

    # --quiet on the same sweep with its test step to do again (the fit is done and skipped): the
    # rerun's command shows no live line, and the run's log gains no progress lines either.
    before = len(log)
    (log_path.parent / "metrics.json").unlink()
    quiet = _sweep(tmp_path, "loud", "--quiet", cache=tmp_path / "cache")
    assert "[sweep] one seed 0: test in" in quiet.stdout  # the sweep's own lines stay
    assert not re.search(r"^\[sweep\] one seed 0 (fit|test): ", quiet.stdout, re.M), quiet.stdout
    added = log_path.read_text()[before:]
    assert "$ " in added and "[progress]" not in added


def _cells(values: dict[str, dict[int, dict]]) -> dict:
    return {cell: {"runs": runs, "chosen": {}, "tuning": [], "fit_s": [60.0] * len(runs)}
            for cell, runs in values.items()}


def test_the_plot_has_one_panel_per_metric_with_a_value_error_bars_and_chance(tmp_path, monkeypatch):
    from matplotlib.container import ErrorbarContainer
    from matplotlib.figure import Figure
    from PIL import Image

    saved = []
    original = Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    metrics = ["test/acc", "test/bleu_4", "test/spice", "test/cider_d", "stage1:test/r1"]
    spec = {"seeds": [0, 1], "metrics": metrics, "chance": {"test/acc": 8.3, "test/spice": 1.0}}
    na = "unavailable: Java is not installed"  # test/spice has no value in any run: left out
    cells = _cells({
        "linear_pool": {0: {"test/acc": 40.0, "test/bleu_4": 0.10, "test/spice": na, "test/cider_d": 0.5},
                        1: {"test/acc": 50.0, "test/bleu_4": 0.20, "test/spice": na, "test/cider_d": 0.7}},
        "qformer": {0: {"test/acc": 70.0, "test/bleu_4": 0.30, "test/spice": na, "test/cider_d": 0.9,
                        "stage1:test/r1": 3.0},
                    1: {"test/acc": 74.0, "test/bleu_4": 0.30, "test/spice": na, "test/cider_d": 1.1,
                        "stage1:test/r1": 5.0}}})
    _, _, rows = sweep_table.tabulate("demo", spec, cells, {})
    path = tmp_path / "demo.png"
    shown = sweep_table.plot(path, "demo", spec, rows)
    drawn = ["test/acc", "test/bleu_4", "test/cider_d", "stage1:test/r1"]
    assert shown == drawn
    (fig,) = saved
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == drawn  # one panel per metric with a value, in order
    acc, bleu, _, r1 = panels
    assert [t.get_text() for t in acc.get_xticklabels()] == ["linear_pool", "qformer"]
    assert [round(b.get_height(), 4) for b in acc.patches] == [45.0, 72.0]
    (errors,) = [c for c in acc.containers if isinstance(c, ErrorbarContainer)]
    segments = errors.lines[2][0].get_segments()  # one vertical segment per bar: mean ± std over the seeds
    assert [round(s[1][1] - s[0][1], 3) for s in segments] == [round(2 * 7.0711, 3), round(2 * 2.8284, 3)]
    assert [ln.get_ydata()[0] for ln in acc.get_lines() if ln.get_linestyle() == "--"] == [8.3]
    assert not [ln for ln in bleu.get_lines() if ln.get_linestyle() == "--"]  # no chance known for BLEU
    assert [t.get_text() for t in r1.get_xticklabels()] == ["qformer"]  # a cell without the metric: no bar
    # A grid sized for a page: 4 panels in 2 rows of 3, not a strip.
    width, height = Image.open(path).size
    assert (width, height) == (round(3.6 * 3 * 110), round(3.0 * 2 * 110))
    # Ten metrics (the demo sweep's count) stay page-wide: 4 rows of 3.
    ten = {"seeds": [0], "metrics": [f"m{i}" for i in range(10)]}
    rows10 = sweep_table.tabulate("ten", ten, _cells({"a": {0: {f"m{i}": float(i) for i in range(10)}}}), {})[2]
    sweep_table.plot(tmp_path / "ten.png", "ten", ten, rows10)
    assert Image.open(tmp_path / "ten.png").size == (round(3.6 * 3 * 110), round(3.0 * 4 * 110))
    # Nothing has a value: no empty figure.
    none = {"seeds": [0], "metrics": ["test/spice"]}
    assert sweep_table.plot(tmp_path / "none.png", "none", none,
                            sweep_table.tabulate("none", none, _cells({"a": {0: {"test/spice": na}}}), {})[2]) is None
    assert not (tmp_path / "none.png").exists()


def test_on_a_terminal_the_progress_is_one_line_redrawn_within_its_width(capsys, monkeypatch):
    import shutil

    from bridgebench.tools.sweep_steps import Console

    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=None: os.terminal_size((80, 24)))
    console = Console(quiet=False)
    console.say("qformer seed 1: fit + test in runs/sweeps/demo_bridges/qformer/seed1")
    for step in (25, 50):
        console.status("qformer seed 1 fit", f"[progress] fit {step}/250 steps, loss 0.8{step}, 0.41 s each, "
                       "ETA 1.5 min and a tail long enough to pass the width of the terminal")
    console.say("qformer seed 1: done")
    out = capsys.readouterr().out
    rows = out.split("\n")
    # The sweep's own lines, and between them one row redrawn in place (\r), never wrapping an 80-column terminal.
    assert rows[0].startswith("[sweep] qformer seed 1: fit + test") and rows[2] == "[sweep] qformer seed 1: done"
    redraws = rows[1].split("\r")[1:]
    assert [r[:50] for r in redraws] == ["[sweep] qformer seed 1 fit: fit 25/250 steps, loss",
                                         "[sweep] qformer seed 1 fit: fit 50/250 steps, loss"]
    assert all(len(r) == 79 for r in redraws)
    Console(quiet=True).status("x fit", "[progress] fit 1/2 steps")
    assert capsys.readouterr().out == ""


def test_the_table_says_what_its_chance_levels_are_and_a_bad_note_is_refused(tmp_path):
    from bridgebench.errors import ConfigError
    from bridgebench.tools.sweep_spec import load_sweep

    cells = _cells({"a": {0: {"test/acc": 40.0}}})
    spec = {"seeds": [0], "metrics": ["test/acc"], "chance": {"test/acc": 43.5},
            "chance_note": "always the most frequent answer."}
    md, _, _ = sweep_table.tabulate("t", spec, cells, {})
    assert "| chance |" in md and "43.5" in md and "chance: always the most frequent answer." in md
    md, _, _ = sweep_table.tabulate("t", {**spec, "chance_note": None}, cells, {})
    assert "chance: the level the sweep file gives per metric." in md
    path = tmp_path / "s.yaml"
    path.write_text("cells: {a: {base: [x.yaml]}}\nchance: {test/acc: 1}\nchance_note: 3\n")
    with pytest.raises(ConfigError, match="chance_note must be a sentence"):
        load_sweep(str(path))


def test_the_table_lists_each_seed_under_the_means():
    cells = _cells({"a": {0: {"test/acc": 40.0}, 1: {"test/acc": 60.0}}, "b": {0: {"test/acc": 10.0}, 1: {}}})
    md, _, _ = sweep_table.tabulate("t", {"seeds": [0, 1], "metrics": ["test/acc"]}, cells, {})
    assert "| a | 2 | n/a | 50 ± 14 |" in md
    per_seed = md[md.index("Per seed:"):]
    assert "| a | 0 | 40 |" in per_seed and "| a | 1 | 60 |" in per_seed and "| b | 1 | n/a |" in per_seed
    md, _, _ = sweep_table.tabulate("t", {"seeds": [0], "metrics": ["test/acc"]}, _cells({"a": {0: {"test/acc": 1.0}}}), {})
    assert "Per seed" not in md  # one seed: the means are the seeds
    assert "| a | 1 | n/a | 1 (one seed) |" in md  # no "± 0": nothing was measured of the spread
