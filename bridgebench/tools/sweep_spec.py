"""The sweep file: its format, its validation (every problem at once) and the grid helpers.

See ``bridgebench.tools.sweep`` for what a sweep runs. This module only reads and normalises the
file: needs (``{configs, overlay, per_seed, inputs}``), cells (``{base, inputs, tune, setting_of,
test_of, optional, <config keys>}``), the shared ``overlay`` (config keys every cell gets first: the protocol's
budget), the protocol (``{tune, select, tune_seed, tune_overlay}``; ``tune`` a mapping of keys to value lists, whose
every combination is tried, or a list of points; ``tune_overlay`` config keys the grid's fits get on top of
the cell's, e.g. a shorter proxy budget), seeds, metrics, chance (and chance_note, the sentence
the table prints to say what those levels are).

A cell marked ``optional: true`` (an ablation row that costs runs the main table does not need) is run
only when named: by ``--cells``, or by a sweep file that ``extends`` this one. Such a file is
``{extends: <sweep file>, cells: [names of its cells], <keys to override>}``: it takes everything else
from that file, and its run folders too (``runs_name``), so a cell with the same settings reuses the
runs the other sweep made (and a changed one is refused, never silently reused); its table is its own.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import yaml

from bridgebench.errors import ConfigError, ConfigProblems


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("_") or "cell"


# === The sweep file ===

def _list(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _read_yaml(path, what: str):
    try:
        return yaml.safe_load(open(path)) or {}
    except OSError as err:
        raise ConfigError(f"{what}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: not valid YAML ({str(err).splitlines()[0]})") from None


def load_sweep(path: str) -> dict:
    """The sweep file, normalised; every problem is reported at once."""
    spec = _read_yaml(path, f"sweep file {path}")
    problems = []
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep file {path}: not a sweep (a YAML mapping with 'cells')")
    if "extends" in spec:
        spec = _extended(spec, path)
    if not isinstance(spec.get("cells"), dict) or not spec["cells"]:
        raise ConfigError(f"sweep file {path}: missing 'cells'")
    spec["base"] = _list(spec.get("base"))
    spec.setdefault("seeds", [0])
    spec.setdefault("metrics", ["test/loss"])
    spec.setdefault("chance", {})
    spec.setdefault("chance_note", None)
    if spec["chance_note"] is not None and not (isinstance(spec["chance_note"], str) and spec["chance_note"].strip()):
        problems.append(f"sweep file {path}: chance_note must be a sentence saying what the chance levels are")
    needs = {}
    for name, need in (spec.get("needs") or {}).items():
        need = {"configs": need} if isinstance(need, (list, str)) else dict(need or {})
        need["configs"] = _list(need.get("configs"))
        need.setdefault("overlay", {})
        need.setdefault("inputs", {})
        need["per_seed"] = bool(need.get("per_seed", False))
        if not need["configs"]:
            problems.append(f"sweep file {path}: need '{name}' has no configs")
        needs[name] = need
    spec["needs"] = needs
    protocol = dict(spec.get("protocol") or {})
    select = protocol.get("select", "val/loss")
    protocol["select"] = {"metric": select, "mode": "min"} if isinstance(select, str) else dict(select)
    if protocol["select"].get("mode", "min") not in ("min", "max"):
        problems.append(f"sweep file {path}: protocol.select.mode must be min or max")
    protocol.setdefault("tune", {})
    protocol.setdefault("tune_seed", spec["seeds"][0] if spec["seeds"] else 0)
    protocol["tune_overlay"] = protocol.get("tune_overlay") or {}
    if not isinstance(protocol["tune_overlay"], dict):
        problems.append(f"sweep file {path}: protocol.tune_overlay must be a mapping of config keys")
        protocol["tune_overlay"] = {}
    spec["protocol"] = protocol
    shared = spec.get("overlay") or {}
    if not isinstance(shared, dict):
        problems.append(f"sweep file {path}: 'overlay' must be a mapping of config keys")
        shared = {}
    cells = {}
    for name, cell in spec["cells"].items():
        cell = dict(cell or {})
        # The shared overlay comes first, so a cell's own keys may still override it (and show it).
        cell = merge(shared, cell) if not (cell.get("setting_of") or cell.get("test_of")) else cell
        parent = cells.get(cell.get("setting_of") or cell.get("test_of"))
        if parent is not None:  # an ablation row: the parent's configs, inputs and overlay, then its own
            cell = {"base": parent["base"], "inputs": parent["inputs"], **merge(parent["overlay"], cell)}
        base = _list(cell.pop("base", None)) or spec["base"]
        if not base:
            problems.append(f"sweep file {path}: cell '{name}' has no 'base' configs (and the sweep none)")
        inputs = dict(cell.pop("inputs", None) or {})
        for key, need in inputs.items():
            if need not in needs:
                problems.append(f"sweep file {path}: cell '{name}' input {key} names need '{need}', which "
                                f"'needs' lacks (it has {sorted(needs)})")
        setting_of, test_of = cell.pop("setting_of", None), cell.pop("test_of", None)
        optional = cell.pop("optional", False)
        if not isinstance(optional, bool):
            problems.append(f"sweep file {path}: cell '{name}' optional must be true or false")
        for key, other in (("setting_of", setting_of), ("test_of", test_of)):
            if other is not None and (other not in spec["cells"] or list(spec["cells"]).index(other) >=
                                      list(spec["cells"]).index(name)):
                problems.append(f"sweep file {path}: cell '{name}' {key} names '{other}', which must be a cell "
                                "listed before it")
        # An ablation row takes the setting the protocol chose for the cell it ablates; a test-only
        # row tests that cell's runs under its own (data) overlay.
        own = cell.pop("tune", None)
        if setting_of or test_of:
            tune = {}
        elif isinstance(own, list) or isinstance(protocol["tune"], list):
            tune = own if own is not None else protocol["tune"]  # a list of points is taken whole, not merged
        else:
            tune = {**protocol["tune"], **(own or {})}
        problems += tune_problems(tune, f"sweep file {path}: cell '{name}' tune")
        cells[name] = {"base": base, "inputs": inputs, "tune": tune, "overlay": cell,
                       "setting_of": setting_of or test_of, "test_of": test_of, "optional": optional is True}
    for name, need in needs.items():
        for key, other in need["inputs"].items():
            if other not in needs or other == name:
                problems.append(f"sweep file {path}: need '{name}' input {key} names unknown need '{other}'")
    for name, cell in cells.items():
        if not cell["optional"] and cell["setting_of"] and cells.get(cell["setting_of"], {}).get("optional"):
            problems.append(f"sweep file {path}: cell '{name}' follows optional cell '{cell['setting_of']}', "
                            "so it must be optional too")
    runs_name = spec.get("runs_name")
    if runs_name is not None and not (isinstance(runs_name, str) and runs_name == slug(runs_name)):
        problems.append(f"sweep file {path}: runs_name must be a folder name, got {runs_name!r}")
    if problems:
        raise ConfigProblems(problems)
    spec["cells"] = cells
    # What a plain run of this file runs: every cell not marked optional (a file that extends another
    # lists the ones it runs, optional or not).
    spec["default_cells"] = [n for n, c in cells.items() if not c["optional"]]
    return spec


def _extended(spec: dict, path: str) -> dict:
    """``{extends: other.yaml, cells: [names], ...}`` read as the other file with only those cells (in this
    file's order, optional ones included because they are named) and this file's other keys on top."""
    problems = []
    base_path = Path(path).parent / str(spec["extends"])
    base = _read_yaml(base_path, f"sweep file {path}: extends {base_path}")
    if not isinstance(base, dict) or not isinstance(base.get("cells"), dict):
        raise ConfigError(f"sweep file {path}: extends {base_path}, which is not a sweep (no 'cells')")
    if "extends" in base:
        problems.append(f"sweep file {path}: extends {base_path}, which extends another file; name that one")
    names = spec.get("cells")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ConfigError(f"sweep file {path}: with 'extends', 'cells' is a list of the names of {base_path}'s "
                          f"cells to run (it has {list(base['cells'])})")
    unknown = [n for n in names if n not in base["cells"]]
    if unknown:
        problems.append(f"sweep file {path}: cells {unknown} are not cells of {base_path} (it has {list(base['cells'])})")
    for name in names:
        cell = base["cells"].get(name)
        if cell is not None and not isinstance(cell, dict):
            problems.append(f"sweep file {base_path}: cell '{name}' must be a mapping of config keys")
        parent = (cell.get("setting_of") or cell.get("test_of")) if isinstance(cell, dict) else None
        if parent and parent not in names:
            problems.append(f"sweep file {path}: cell '{name}' follows cell '{parent}' of {base_path}; add '{parent}' "
                            "to this file's cells")
    # Keys that change what a run is or how a setting is chosen would write other runs into the shared
    # folders; a file that sets its own runs_name may change anything.
    shared_runs = "runs_name" not in spec
    changed = sorted(k for k in spec if k not in ("extends", "cells", "runs_name", *TABLE_KEYS))
    if shared_runs and changed:
        problems.append(f"sweep file {path}: {changed} would change the runs it shares with {base_path}; only "
                        f"{list(TABLE_KEYS)} may differ, or give this file a runs_name of its own")
    if problems:
        raise ConfigProblems(problems)
    out = {**base, **{k: v for k, v in spec.items() if k not in ("extends", "cells")}}
    out["cells"] = {n: {k: v for k, v in (base["cells"][n] or {}).items() if k != "optional"} for n in names}
    out.setdefault("runs_name", base.get("runs_name") or Path(base_path).stem)
    return out


# What a file that extends another may change while sharing its run folders: what the table shows,
# and which seeds it runs (a new seed is a new folder).
TABLE_KEYS = ("metrics", "chance", "chance_note", "seeds")


def resolve_config(path: str, sweep_file: str) -> str:
    """A config path as given if it exists, else relative to the repository of the sweep file
    (``<repo>/experiments/sweeps/x.yaml``), so a sweep runs from any working folder."""
    if Path(path).exists():
        return path
    repo = Path(sweep_file).resolve().parent.parent.parent
    return str(repo / path) if (repo / path).exists() else path


def nested(dotted: dict) -> dict:
    """``{"model.optimizer.lr": 1e-3}`` -> ``{"model": {"optimizer": {"lr": 1e-3}}}``."""
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tune_problems(tune, where: str) -> list[str]:
    """What is wrong with a tune grid: either ``{key: [values]}`` (every combination is tried) or a list
    of points ``[{key: value, ...}, ...]`` (tried as given: settings that move together, such as a body
    rate and an output-layer scale that keep the output layer's own rate fixed)."""
    if isinstance(tune, list):
        if not tune or not all(isinstance(p, dict) and p for p in tune):
            return [f"{where}: a list of points must hold non-empty mappings of config keys to values"]
        keys = {tuple(sorted(p)) for p in tune}
        return [] if len(keys) == 1 else [f"{where}: every point must set the same keys (found {sorted(keys)})"]
    if not isinstance(tune, dict):
        return [f"{where}: give a mapping of keys to value lists, or a list of points"]
    return [f"{where} {key}: give a non-empty list of values" for key, values in tune.items()
            if not isinstance(values, list) or not values]


def grid(tune) -> list[dict]:
    """The points of a tune grid as dotted-key dicts: a list of points as given, a mapping's every
    combination (one empty dict for no grid)."""
    if isinstance(tune, list):
        return [dict(p) for p in tune]
    keys = list(tune)
    return [dict(zip(keys, values)) for values in itertools.product(*(tune[k] for k in keys))]


def point_name(point: dict) -> str:
    return slug(",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())) or "default"
