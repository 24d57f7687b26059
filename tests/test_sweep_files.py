"""Every sweep file under experiments/sweeps/ loads, opens with the command that runs it and its
source, and every run it can start (each need, and each cell, optional ones too, at the first point of
its grid) parses as a config with its overlay, as the sweep passes it. A file that extends another
runs that file's cells, parsed there."""

from __future__ import annotations

import glob
import os

import pytest
import yaml

from bridgebench.engine import validate
from bridgebench.engine.lightning_cli import run
from bridgebench.tools.sweep_spec import grid, load_sweep, merge, nested

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "experiments", "sweeps", "*.yaml")))


def _path(name: str) -> str:
    return os.path.join(ROOT, "experiments", "sweeps", f"{name}.yaml")


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_file_header_names_its_command_and_source(name):
    head = open(_path(name)).read().split("\n\n")[0]
    command = "make demo" if name == "demo" else f"make sweep NAME={name}"
    assert head.startswith("#") and "Run:" in head and command in head and "Source:" in head


@pytest.mark.parametrize("name", SWEEPS)
def test_every_run_of_the_sweep_file_parses(name, tmp_path, capsys):
    spec = load_sweep(_path(name))
    if "extends" in yaml.safe_load(open(_path(name))):
        return
    runs = [(f"need {n}", need["configs"], need["overlay"]) for n, need in spec["needs"].items()]
    for cell_name, cell in spec["cells"].items():
        point = grid(cell["tune"])[0]
        runs.append((cell_name, cell["base"], merge(cell["overlay"], nested(point))))
    assert runs
    for label, configs, overlay in runs:
        path = tmp_path / "sweep_overlay.yaml"
        path.write_text(yaml.safe_dump(overlay))
        args = [a for c in configs for a in ("--config", os.path.join(ROOT, c))] + ["--config", str(path)]
        with pytest.raises(SystemExit) as exit_info:
            run(["fit", *args, "--print_config"])
        assert exit_info.value.code in (0, None), (name, label)
        cfg = yaml.safe_load(capsys.readouterr().out)
        validate.check(cfg["model"], check_files=False)
