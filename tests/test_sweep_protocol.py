"""The sweep's protocol, with the commands replaced by a stand-in that writes what real runs write:
each cell's grid point chosen on the validation metric only, seeds at the chosen setting (the tune
seed reusing its tuning run), ablation rows at the setting of the cell they ablate, test-only rows
on that cell's checkpoints, and a run folder made for other settings never reused."""

from __future__ import annotations

import json

import pytest
import yaml

from bridgebench.errors import ConfigError
from bridgebench.tools import sweep as sweep_cli

VAL = {1e-4: 2.0, 1e-3: 1.5, 1e-2: 3.0}  # validation loss per learning rate: 1e-3 must be chosen
TEST = {1e-4: 90.0, 1e-3: 10.0, 1e-2: 50.0}  # test scores that would pick another rate if they were used


def fake_commands(calls):
    def run(run_dir, args, commands, console, label, env=None):
        overlay, lr = None, None
        for i, a in enumerate(args):
            if a == "--config" and args[i + 1].endswith("sweep_overlay.yaml"):
                overlay = yaml.safe_load(open(args[i + 1]))
                lr = ((overlay.get("model") or {}).get("optimizer") or {}).get("lr", 1e-2)
        logs = run_dir / "logs"
        for command in commands:
            calls.append((label, command[0], [a for a in args if a.startswith("--ckpt_path")] + command[1:],
                          overlay.get("data") if overlay else None))
            n = len(list(logs.glob("*"))) + 1 if logs.exists() else 1
            folder = logs / f"{n:02d}-{command[0]}"
            folder.mkdir(parents=True)
            with open(run_dir / "history.jsonl", "a") as f:
                f.write(json.dumps({"folder": f"logs/{folder.name}", "command": command[0], "event": "ok",
                                    "seconds": 60.0}) + "\n")
            if command[0] == "fit":
                (run_dir / "checkpoints").mkdir(exist_ok=True)
                (run_dir / "checkpoints" / "last.ckpt").write_text("x")
            if command[0] == "validate":
                (folder / "metrics.json").write_text(json.dumps({"val/loss": VAL[lr]}))
            if command[0] == "test":
                (run_dir / "metrics.json").write_text(json.dumps({"test/score": TEST[lr], "run": {}}))
        return None, {c[0]: 1.0 for c in commands}
    return run


def fake_step_done(run_dir, command):
    """What the stand-in runs wrote: a test's metrics, or a fit/validate in the run's history."""
    if command == "test":
        return (run_dir / "metrics.json").is_file()
    history = run_dir / "history.jsonl"
    return history.is_file() and any(json.loads(x)["command"] == command and json.loads(x)["event"] == "ok"
                                     for x in history.read_text().splitlines())


def test_the_protocol_chooses_on_validation_and_ablation_rows_follow_their_cell(tmp_path, monkeypatch, capsys):
    spec = {"seeds": [0, 1], "metrics": ["test/score"], "chance": {"test/score": 8.3},
            "protocol": {"tune": {"model.optimizer.lr": [1e-4, 1e-3, 1e-2]}, "select": "val/loss", "tune_seed": 0},
            "cells": {"a": {"base": ["experiments/demo_linear_pool.yaml"]},
                      "a_blind": {"setting_of": "a", "data": {"bridge_instruction": ""}},
                      "a_blind_test": {"test_of": "a", "data": {"bridge_instruction": ""}}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    calls = []
    monkeypatch.setattr(sweep_cli, "run_commands", fake_commands(calls))
    monkeypatch.setattr("bridgebench.tools.sweep.step_done", fake_step_done)
    args = [str(path), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert sweep_cli.main(args) == 0
    cell = tmp_path / "runs" / "s" / "a"
    protocol = json.loads((cell / "protocol.json").read_text())
    assert protocol["chosen"] == {"model.optimizer.lr": 1e-3}
    # Seed 0 is the tuning run at the chosen rate (tested, not fitted again); seed 1 is fitted anew.
    assert [c[1] for c in calls if c[0] == "a seed 0"] == ["test"]
    assert [c[1] for c in calls if c[0] == "a seed 1"] == ["fit", "test"]
    # The ablation row: no tuning of its own, the chosen rate, its own data key.
    blind = yaml.safe_load((tmp_path / "runs" / "s" / "a_blind" / "seed0" / "sweep_overlay.yaml").read_text())
    assert blind["model"]["optimizer"]["lr"] == 1e-3 and blind["data"]["bridge_instruction"] == ""
    assert not (tmp_path / "runs" / "s" / "a_blind" / "tune").exists()
    # The test-only row tests a's checkpoints, never fits.
    tested = [c for c in calls if c[0].startswith("a_blind_test")]
    assert [c[1] for c in tested] == ["test", "test"]
    assert str(cell / "tune" / "lr=0.001" / "checkpoints" / "last.ckpt") in tested[0][2][0]
    table = (tmp_path / "results" / "s.md").read_text()
    assert "| a | 2 | lr=0.001 |" in table and "| chance |" in table
    assert "a: lr=0.0001: 2.0000, lr=0.001: 1.5000, lr=0.01: 3.0000\n" in table  # chosen inside the grid
    assert "- a_blind: not tuned, the setting chosen for a\n" in table
    assert "- a_blind_test: not tuned, the setting chosen for a\n" in table
    # Every command the table rests on, a minute each: 3 tuning fits + validations, seed 0's test, seed 1's
    # fit + test, the ablation row's 2 fits + 2 tests, the test-only row's 2 tests.
    assert "Compute: 15.0 wall minutes of commands in all (cells fit 6.0, cells test 6.0, cells validate 3.0)" in table
    # A changed cell never reuses a folder made for other settings.
    spec["cells"]["a"]["data"] = {"batch_size": 4}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="made with other settings"):
        sweep_cli.main(args)


def test_the_shared_overlay_reaches_every_cell_and_a_cell_may_override_it(tmp_path):
    from bridgebench.tools.sweep_spec import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "overlay": {"trainer": {"max_steps": 7}, "data": {"batch_size": 8}},
        "cells": {"a": {"base": ["x.yaml"]},
                  "b": {"base": ["x.yaml"], "data": {"batch_size": 4}},
                  "a_ablation": {"setting_of": "a", "model": {"stage1_checkpoint": None}}}}))
    cells = load_sweep(str(path))["cells"]
    assert cells["a"]["overlay"] == {"trainer": {"max_steps": 7}, "data": {"batch_size": 8}}
    assert cells["b"]["overlay"]["data"] == {"batch_size": 4} and cells["b"]["overlay"]["trainer"] == {"max_steps": 7}
    # An ablation row keeps its cell's budget (already shared) and adds its own keys.
    assert cells["a_ablation"]["overlay"] == {"trainer": {"max_steps": 7}, "data": {"batch_size": 8},
                                              "model": {"stage1_checkpoint": None}}
    path.write_text(yaml.safe_dump({"overlay": [1], "cells": {"a": {"base": ["x.yaml"]}}}))
    with pytest.raises(ConfigError, match="'overlay' must be a mapping"):
        load_sweep(str(path))


def test_a_shared_stage1_need_is_fitted_once_and_every_seed_starts_from_it(tmp_path, monkeypatch):
    spec = {"seeds": [0, 1], "metrics": ["test/score", "stage1:test/score"],
            "needs": {"s1": {"configs": ["experiments/demo_stage1.yaml"], "per_seed": False}},
            "cells": {"a": {"base": ["experiments/demo_qformer.yaml"], "inputs": {"model.stage1_checkpoint": "s1"}}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    calls, args_of = [], {}
    fake = fake_commands(calls)

    def run(run_dir, args, commands, console, label, env=None):
        args_of[label] = args
        return fake(run_dir, args, commands, console, label, env)

    monkeypatch.setattr(sweep_cli, "run_commands", run)
    monkeypatch.setattr("bridgebench.tools.sweep.step_done", lambda run_dir, c: False)
    assert sweep_cli.main([str(path), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]) == 0
    assert [c[1] for c in calls if c[0] == "need s1"] == ["fit", "test"]  # once, not once per seed
    shared = tmp_path / "runs" / "_needs" / "s1" / "checkpoints" / "last.ckpt"
    for seed in (0, 1):
        assert f"--model.stage1_checkpoint={shared}" in args_of[f"a seed {seed}"]
    table = (tmp_path / "results" / "s.md").read_text()
    assert "| a | 2 |" in table and "50 (one run)" in table and "the spread of the other columns is stage 2's" in table


def test_the_table_warns_when_the_chosen_value_is_at_the_end_of_its_grid():
    from bridgebench.evaluation.sweep_table import tabulate

    grid = [{"point": {"model.optimizer.lr": lr}, "value": v} for lr, v in ((1e-4, 2.0), (1e-3, 1.5), (1e-2, 1.0))]
    spec = {"seeds": [0], "metrics": ["m"], "protocol": {"tune": {"model.optimizer.lr": [1e-4, 1e-3, 1e-2]},
                                                         "select": {"metric": "val/loss"}, "tune_seed": 0}}
    cells = {"top": {"runs": {0: {"m": 1.0}}, "chosen": {"model.optimizer.lr": 1e-2}, "tuning": grid},
             "mid": {"runs": {0: {"m": 1.0}}, "chosen": {"model.optimizer.lr": 1e-3}, "tuning": grid},
             "low": {"runs": {0: {"m": 1.0}}, "chosen": {"model.optimizer.lr": 1e-4}, "tuning": grid}}
    md = tabulate("s", spec, cells, {})[0]
    line = {c: next(ln for ln in md.splitlines() if ln.startswith(f"- {c}:")) for c in cells}
    assert "lr=0.01 is the grid's highest value" in line["top"] and "beyond the grid" in line["top"]
    assert "lr=0.0001 is the grid's lowest value" in line["low"]
    assert "grid's" not in line["mid"]


def test_a_grid_given_as_points_is_tried_as_given_and_the_chosen_point_reaches_every_seed(tmp_path, monkeypatch):
    from bridgebench.tools.sweep_spec import load_sweep

    # Settings that move together: a body rate and an output-layer scale keeping the output layer at 1e-2.
    points = [{"model.optimizer.lr": lr, "model.optimizer.lr_scale.projection": 1e-2 / lr} for lr in (1e-4, 1e-3, 1e-2)]
    spec = {"seeds": [0, 1], "metrics": ["test/score"],
            "protocol": {"tune": points, "select": "val/loss", "tune_seed": 0},
            "cells": {"a": {"base": ["experiments/demo_linear_pool.yaml"]},
                      "b": {"base": ["experiments/demo_linear_pool.yaml"], "tune": points[:2]}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    cells = load_sweep(str(path))["cells"]
    assert cells["a"]["tune"] == points and cells["b"]["tune"] == points[:2]  # a cell's list replaces, not merges
    calls = []
    monkeypatch.setattr(sweep_cli, "run_commands", fake_commands(calls))
    monkeypatch.setattr("bridgebench.tools.sweep.step_done", lambda run_dir, c: False)
    assert sweep_cli.main([str(path), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]) == 0
    assert len([c for c in calls if c[0].startswith("a tune")]) == 3 * 2  # 3 points (fit + validate), not 9
    assert len([c for c in calls if c[0].startswith("b tune")]) == 2 * 2
    protocol = json.loads((tmp_path / "runs" / "s" / "a" / "protocol.json").read_text())
    assert protocol["chosen"] == points[1]
    seed1 = yaml.safe_load((tmp_path / "runs" / "s" / "a" / "seed1" / "sweep_overlay.yaml").read_text())
    assert seed1["model"]["optimizer"]["lr"] == 1e-3 and seed1["model"]["optimizer"]["lr_scale"]["projection"] == 10.0
    table = (tmp_path / "results" / "s.md").read_text()
    assert "from the grid points lr=0.0001, projection=100.0; lr=0.001, projection=10.0;" in table
    # Every problem of a points list at once.
    spec["protocol"]["tune"] = [{"model.optimizer.lr": 1e-3}, {"model.optimizer.lr_scale.projection": 10.0}]
    spec["cells"]["b"]["tune"] = [{}]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        load_sweep(str(path))
    assert "cell 'a' tune: every point must set the same keys" in str(err.value)
    assert "cell 'b' tune: a list of points must hold non-empty mappings" in str(err.value)


def test_a_tune_overlay_reaches_the_grid_only_and_every_seed_is_fitted_at_the_full_budget(tmp_path, monkeypatch):
    # The grid may run as a shorter proxy: its fits get protocol.tune_overlay, the seeds do not, so the
    # tune seed's grid run (200 steps) must not stand in for its 600-step seed run.
    spec = {"seeds": [0, 1], "metrics": ["test/score"], "overlay": {"trainer": {"max_steps": 600}},
            "protocol": {"tune": {"model.optimizer.lr": [1e-4, 1e-3]}, "select": "val/loss", "tune_seed": 0,
                         "tune_overlay": {"trainer": {"max_steps": 200}}},
            "cells": {"a": {"base": ["experiments/demo_linear_pool.yaml"]}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    calls = []
    monkeypatch.setattr(sweep_cli, "run_commands", fake_commands(calls))
    monkeypatch.setattr("bridgebench.tools.sweep.step_done", fake_step_done)
    assert sweep_cli.main([str(path), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]) == 0
    cell = tmp_path / "runs" / "s" / "a"
    steps = {d.relative_to(cell).as_posix(): yaml.safe_load((d / "sweep_overlay.yaml").read_text())["trainer"]["max_steps"]
             for d in [*cell.glob("tune/*"), *cell.glob("seed*")]}
    assert steps == {"tune/lr=0.0001": 200, "tune/lr=0.001": 200, "seed0": 600, "seed1": 600}
    assert [c[1] for c in calls if c[0] == "a seed 0"] == ["fit", "test"]
    for seed in (0, 1):
        overlay = yaml.safe_load((cell / f"seed{seed}" / "sweep_overlay.yaml").read_text())
        assert overlay["model"]["optimizer"]["lr"] == 1e-3 and overlay["seed_everything"] == seed
    assert "The grid's fits ran with trainer.max_steps=200" in (tmp_path / "results" / "s.md").read_text()
    spec["protocol"]["tune_overlay"] = ["trainer.max_steps"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="protocol.tune_overlay must be a mapping"):
        sweep_cli.main([str(path), "--runs", str(tmp_path / "runs")])


def test_command_seconds_sums_resumed_attempts_and_counts_killed_commands(tmp_path):
    from bridgebench.engine.run_folder import command_seconds

    rows = [{"folder": "logs/01-fit", "command": "fit", "event": "started"},
            {"folder": "logs/01-fit", "command": "fit", "event": "failed", "seconds": 30.0},
            {"folder": "logs/02-fit", "command": "fit", "event": "started"},
            {"folder": "logs/02-fit", "command": "fit", "event": "ok", "seconds": 90.0},
            {"folder": "logs/03-test", "command": "test", "event": "started"}]  # killed: no end
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert command_seconds(tmp_path) == ({"fit": 120.0}, 1)


def test_an_ablation_row_is_not_run_when_its_cell_chose_nothing(tmp_path, monkeypatch):
    # Every grid point of "a" fails: "a" has no setting, so its ablation row must not be fitted at the
    # preset's own rate (a silent default) but reported as not run.
    spec = {"seeds": [0], "metrics": ["test/score"], "chance": {"test/score": 8.3},
            "protocol": {"tune": {"model.optimizer.lr": [1e-4, 1e-3]}, "select": "val/loss", "tune_seed": 0},
            "cells": {"a": {"base": ["experiments/demo_linear_pool.yaml"]},
                      "a_blind": {"setting_of": "a", "data": {"bridge_instruction": ""}}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    calls = []

    def failing(run_dir, args, commands, console, label, env=None):
        calls.append(label)
        return "fit failed: loss is nan", {}
    monkeypatch.setattr(sweep_cli, "run_commands", failing)
    monkeypatch.setattr("bridgebench.tools.sweep.step_done", lambda run_dir, c: False)
    code = sweep_cli.main([str(path), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    assert code != 0
    assert calls and all(label.startswith("a ") for label in calls), calls
    assert not (tmp_path / "runs" / "s" / "a_blind").exists()
    assert "a_blind" in (tmp_path / "results" / "s.md").read_text()


def test_an_optional_row_runs_only_when_named_and_an_extending_file_reuses_the_runs(tmp_path, monkeypatch):
    # demo_bridges marks its no-stage-1 row optional (it is not in the 3-hour comparison);
    # demo_stage1_effect extends it with that row and must reuse, not refit, the qformer runs.
    spec = {"seeds": [0, 1], "metrics": ["test/score"],
            "protocol": {"tune": {"model.optimizer.lr": [1e-4, 1e-3, 1e-2]}, "select": "val/loss", "tune_seed": 0},
            "cells": {"a": {"base": ["experiments/demo_linear_pool.yaml"]},
                      "b": {"base": ["experiments/demo_linear_pool.yaml"], "data": {"batch_size": 4}},
                      "a_ablation": {"setting_of": "a", "optional": True, "data": {"num_workers": 0}}}}
    (tmp_path / "main.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "effect.yaml").write_text(yaml.safe_dump({"extends": "main.yaml", "cells": ["a", "a_ablation"]}))
    calls = []
    monkeypatch.setattr(sweep_cli, "run_commands", fake_commands(calls))
    monkeypatch.setattr("bridgebench.tools.sweep.step_done", fake_step_done)
    where = ["--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert sweep_cli.main([str(tmp_path / "main.yaml"), *where]) == 0
    assert {c[0].split()[0] for c in calls} == {"a", "b"}
    assert "a_ablation" not in (tmp_path / "results" / "main.md").read_text()
    calls.clear()
    assert sweep_cli.main([str(tmp_path / "effect.yaml"), *where]) == 0
    # a is done earlier (same settings, the main sweep's folders); only the optional row is fitted, at a's rate.
    assert [c[:2] for c in calls] == [("a_ablation seed 0", "fit"), ("a_ablation seed 0", "test"),
                                      ("a_ablation seed 1", "fit"), ("a_ablation seed 1", "test")]
    row = yaml.safe_load((tmp_path / "runs" / "main" / "a_ablation" / "seed1" / "sweep_overlay.yaml").read_text())
    assert row["model"]["optimizer"]["lr"] == 1e-3 and not (tmp_path / "runs" / "effect").exists()
    table = (tmp_path / "results" / "effect.md").read_text()
    assert "| a | 2 | lr=0.001 |" in table and "| a_ablation | 2 |" in table and "| b |" not in table
    # An extending file that changes a shared setting is refused, not run into the main sweep's folders:
    # when it loads, and (had it named the folders itself) by the folders' record of their settings.
    changed = {"extends": "main.yaml", "cells": ["a", "a_ablation"], "overlay": {"trainer": {"max_steps": 5}}}
    (tmp_path / "effect.yaml").write_text(yaml.safe_dump(changed))
    with pytest.raises(ConfigError, match=r"\['overlay'\] would change the runs it shares with .*main.yaml"):
        sweep_cli.main([str(tmp_path / "effect.yaml"), *where])
    (tmp_path / "effect.yaml").write_text(yaml.safe_dump({**changed, "runs_name": "main"}))
    with pytest.raises(ConfigError, match="made with other settings"):
        sweep_cli.main([str(tmp_path / "effect.yaml"), *where])


def test_a_row_named_alone_runs_at_its_cells_setting_or_says_what_to_add(tmp_path, monkeypatch):
    # No grid: the cell a row follows has nothing to choose, so the row runs without it having run.
    spec = {"seeds": [0], "metrics": ["test/score"],
            "cells": {"a": {"base": ["experiments/demo_linear_pool.yaml"], "model": {"optimizer": {"lr": 1e-3}}},
                      "a_row": {"setting_of": "a", "data": {"num_workers": 0}},
                      "a_test": {"test_of": "a", "data": {"num_workers": 0}}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    calls = []
    monkeypatch.setattr(sweep_cli, "run_commands", fake_commands(calls))
    monkeypatch.setattr("bridgebench.tools.sweep.step_done", fake_step_done)
    where = [str(tmp_path / "s.yaml"), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert sweep_cli.main([*where, "--cells", "a_row"]) == 0
    assert [c[:2] for c in calls] == [("a_row seed 0", "fit"), ("a_row seed 0", "test")]
    assert sweep_cli.main([*where, "--cells", "a_test"]) == 1
    assert "name it too: --cells a a_test" in (tmp_path / "results" / "s.md").read_text()


def test_extends_and_optional_are_checked_with_every_problem_named(tmp_path):
    from bridgebench.errors import ConfigProblems
    from bridgebench.tools.sweep_spec import load_sweep

    (tmp_path / "main.yaml").write_text(yaml.safe_dump({"cells": {
        "a": {"base": ["x.yaml"], "optional": True}, "a_row": {"setting_of": "a"}, "c": {"base": ["x.yaml"], "optional": "yes"}}}))
    with pytest.raises(ConfigProblems) as err:
        load_sweep(str(tmp_path / "main.yaml"))
    assert "'a_row' follows optional cell 'a'" in str(err.value) and "'c' optional must be true or false" in str(err.value)
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({"cells": {"a": {"base": ["x.yaml"]}, "z": {"base": ["x.yaml"], "optional": True}}}))
    assert load_sweep(str(tmp_path / "ok.yaml"))["default_cells"] == ["a"]
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"extends": "ok.yaml", "cells": ["z", "nope"]}))
    with pytest.raises(ConfigError, match=r"cells \['nope'\] are not cells of .*ok.yaml"):
        load_sweep(str(tmp_path / "child.yaml"))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"extends": "missing.yaml", "cells": ["a"]}))
    with pytest.raises(ConfigError, match="extends .*missing.yaml"):
        load_sweep(str(tmp_path / "child.yaml"))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"extends": "ok.yaml", "cells": ["z"], "seeds": [3]}))
    child = load_sweep(str(tmp_path / "child.yaml"))
    assert child["default_cells"] == ["z"] and child["runs_name"] == "ok" and child["seeds"] == [3]
    (tmp_path / "row.yaml").write_text(yaml.safe_dump({"cells": {"a": {"base": ["x.yaml"]},
                                                                 "a_row": {"setting_of": "a", "optional": True}}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"extends": "row.yaml", "cells": ["a_row"]}))
    with pytest.raises(ConfigError, match="cell 'a_row' follows cell 'a' of .*row.yaml; add 'a' to this file's cells"):
        load_sweep(str(tmp_path / "child.yaml"))


@pytest.mark.parametrize("name,cells", [("demo_stage1_effect", ["qformer", "qformer_no_stage1"]),
                                        ("demo_budget", ["qformer", "qformer_2x_steps", "bridgenet", "bridgenet_2x_steps"])])
def test_the_files_that_extend_demo_bridges_run_its_rows_in_its_folders(name, cells):
    import os

    from bridgebench.tools.sweep_spec import load_sweep

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "sweeps")
    main, other = (load_sweep(os.path.join(root, f"{n}.yaml")) for n in ("demo_bridges", name))
    assert main["default_cells"] == ["qformer", "bridgenet", "linear_pool"]
    assert other["default_cells"] == cells and other["runs_name"] == "demo_bridges"
    for cell in cells:  # same settings: demo_bridges' runs are reused
        assert {**other["cells"][cell], "optional": None} == {**main["cells"][cell], "optional": None}
    assert other["overlay"] == main["overlay"] and other["protocol"] == main["protocol"]


def test_the_demo_sweeps_share_one_protocol_and_budget():
    # demo_instruct promises "same budget and protocol as the bridge comparison": a grid point changed
    # in one file only would make its rows incomparable with demo_bridges'.
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "sweeps")
    bridges, instruct = (yaml.safe_load(open(os.path.join(root, f"{n}.yaml"))) for n in ("demo_bridges", "demo_instruct"))
    # The same grid at the same 200 steps (demo_instruct's tune_overlay); its seeds then fit for longer.
    assert {k: v for k, v in instruct["protocol"].items() if k != "tune_overlay"} == bridges["protocol"]
    assert {**instruct["overlay"]["trainer"], **instruct["protocol"]["tune_overlay"]["trainer"]} == bridges["overlay"]["trainer"]
    assert instruct["overlay"]["model"]["optimizer"] == bridges["overlay"]["model"]["optimizer"]
    assert {k: v for k, v in instruct["overlay"]["data"].items() if "task" not in k} == bridges["overlay"]["data"]


def test_table_only_runs_nothing_and_tabulates_what_is_finished(tmp_path, monkeypatch):
    # While a sweep runs elsewhere, or after a sweep file's chance levels changed, --table-only writes
    # the table from the finished runs, lists the rest as not run yet, and starts and creates nothing.
    spec = {"seeds": [0, 1], "metrics": ["test/score"], "chance": {"test/score": 5.0},
            "protocol": {"tune": {"model.optimizer.lr": [1e-4, 1e-3, 1e-2]}, "select": "val/loss", "tune_seed": 0},
            "cells": {"a": {"base": ["experiments/demo_linear_pool.yaml"]},
                      "b": {"base": ["experiments/demo_linear_pool.yaml"], "data": {"batch_size": 4}}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    calls = []
    monkeypatch.setattr(sweep_cli, "run_commands", fake_commands(calls))
    monkeypatch.setattr("bridgebench.tools.sweep.step_done", fake_step_done)
    where = ["--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert sweep_cli.main([str(tmp_path / "s.yaml"), *where, "--cells", "a"]) == 0  # a finished, b never started
    (tmp_path / "runs" / "s" / "a" / "seed1" / "metrics.json").unlink()  # a's seed 1 lost its test
    # A tuning point whose fit failed is a failed point, as the sweep itself reported it, not "not run yet".
    failed = tmp_path / "runs" / "s" / "a" / "tune" / "lr=0.01"
    history = [json.loads(x) for x in (failed / "history.jsonl").read_text().splitlines()]
    (failed / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history if r["command"] == "fit")
                                          .replace('"ok"', '"failed", "error": "fit ran out of memory"'))
    def state():  # every path, and every file's bytes
        return {p: p.read_bytes() if p.is_file() else None for p in (tmp_path / "runs").rglob("*")}

    before = state()
    calls.clear()
    assert sweep_cli.main([str(tmp_path / "s.yaml"), *where, "--table-only"]) == 1
    assert calls == [] and state() == before
    table = (tmp_path / "results" / "s.md").read_text()
    assert "| a | 1 | lr=0.001 |" in table and "| b | 0 |" in table
    assert "- a seed 1: not run yet (test left)" in table
    assert "- a tune lr=0.01: fit failed earlier: fit ran out of memory" in table
    assert "- b: tuning not finished: b tune lr=0.0001: not run yet (no run folder)" in table
    assert sweep_cli.main([str(tmp_path / "s.yaml"), "--runs", str(tmp_path / "none"), "--results",
                           str(tmp_path / "results"), "--table-only"]) == 1
    assert not (tmp_path / "none").exists()
    # A finished run made with other settings is still refused, never tabulated.
    spec["overlay"] = {"trainer": {"max_steps": 5}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="made with other settings"):
        sweep_cli.main([str(tmp_path / "s.yaml"), *where, "--table-only"])
