"""Where things live: the cache folder, and folders built once into it (atomically, under a lock)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    """``$BRIDGEBENCH_CACHE``, else ``~/.cache/bridgebench``."""
    root = os.environ.get("BRIDGEBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bridgebench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
