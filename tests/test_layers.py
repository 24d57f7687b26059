"""The layers import downward only, and no module imports itself back through others.

Every ``import`` of every module is read from the source (those inside functions too), so an import
moved into a function to dodge a cycle still counts. Layers, lowest first: leaves (errors, specs,
runtime) -> components (bridges, encoders, llms, datamodules; each imports only the leaves and its
own package) -> evaluation -> engine -> entry points (tools, captiondata, __main__, the package)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"bridgebench": "bridgebench", "bridges": "bridgebench.bridges", "encoders": "bridgebench.encoders",
           "llms": "bridgebench.llms", "datamodules": "bridgebench.datamodules"}
COMPONENTS = ("bridgebench.bridges", "bridgebench.encoders", "bridgebench.llms", "bridgebench.datamodules")


def layer(module: str) -> tuple[int, str]:
    """(rank, group) of a bridgebench module; a module may import only lower ranks, or its own group."""
    if module in ("bridgebench.errors", "bridgebench.specs") or module.startswith("bridgebench.runtime"):
        return 0, "leaves"
    for component in COMPONENTS:
        if module == component or module.startswith(component + "."):
            return 1, component
    if module.startswith("bridgebench.evaluation"):
        return 2, "evaluation"
    if module.startswith("bridgebench.engine"):
        return 3, "engine"
    return 4, "entry"  # tools, captiondata, __main__, the package itself


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The bridgebench modules ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            # the longest known module the name refers to (``from x import y`` may name a module y)
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("bridgebench"):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {}
    for name, path in mods.items():
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges[name] = imports(path, known) - {name} - parents  # a package's own __init__ runs first anyway
    return edges


def test_every_import_points_down_a_layer_or_stays_in_its_own_group():
    edges = graph()
    assert len(edges) > 40  # the walk found the package
    upward = []
    for src, targets in edges.items():
        rank, group = layer(src)
        for dst in targets:
            dst_rank, dst_group = layer(dst)
            if dst_rank > rank or (dst_rank == rank == 1 and dst_group != group):
                upward.append(f"{src} -> {dst}")
    assert upward == []


def test_there_is_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_core_file_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "bridgebench").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


def test_the_walk_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from bridgebench.engine.module import BridgeModule\n")
    assert imports(source, {"bridgebench.engine.module", "bridgebench.engine"}) == {"bridgebench.engine.module"}
    assert os.path.isdir(ROOT / "bridgebench" / "engine")
