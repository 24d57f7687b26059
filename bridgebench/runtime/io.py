"""Durable file writes: whole-or-absent files, appended JSON lines that survive a crash, and an
early check that an output location can be written at all.

Every output of bridgebench goes through these, so a reader never sees half a file and a run that
cannot write its outputs stops at once with one line naming the path and the reason.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from bridgebench.errors import OutputError


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return err.strerror or type(err).__name__


def output_error(path: str | os.PathLike, err: OSError, what: str = "cannot write") -> OutputError:
    """One-line error for an OSError met while writing ``path``."""
    return OutputError(f"{what} '{path}': {_reason(err)}")


def ensure_dir(path: str | os.PathLike, key: str = "") -> Path:
    """Create folder ``path`` (and parents) and prove it writable with a probe file; an OutputError
    names ``key`` (the option that gave it) and the reason otherwise."""
    path = Path(path)
    label = f"{key}: " if key else ""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{label}'{path}' is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{label}cannot write to '{path}': {_reason(err)}") from None
    return path


def ensure_file_target(path: str | os.PathLike, key: str = "") -> Path:
    """Check that file ``path`` can be written: not a folder, its folder creatable and writable."""
    path = Path(path)
    label = f"{key}: " if key else ""
    if path.is_dir():
        raise OutputError(f"{label}'{path}' is a folder; give a file path")
    ensure_dir(path.parent if str(path.parent) else Path("."), key)
    return path


def jsonable(value: Any) -> Any:
    """Tensors, numpy values and non-finite floats turned into what JSON can hold."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # tensors, numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


@functools.lru_cache(maxsize=1)
def file_mode() -> int:
    """The mode a plain ``open`` would give a new file (0o644 under the usual umask 022). Temporary
    files are created 0o600, and a rename keeps that: results and exports would be unreadable to
    the other people of a shared folder. Read once: reading the umask means setting it for a moment."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, text: str | bytes) -> Path:
    """Write ``path`` whole or not at all: a temporary file beside it, fsync'd, then renamed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise output_error(path, err) from None
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w", **({} if isinstance(text, bytes) else
                                                                          {"encoding": "utf-8"})) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as err:
        raise output_error(path, err) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | os.PathLike, value: Any) -> Path:
    return atomic_write(path, json.dumps(jsonable(value), indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write(path, "".join(json.dumps(jsonable(r), ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows and fsync, so rows written before a crash are kept (see :func:`done_ids`)."""
    rows = list(rows)
    if not rows:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(jsonable(row), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise output_error(path, err) from None


def done_ids(*paths: Path, key: str = "id") -> set[str]:
    """The ``key`` values of the rows already in JSONL ``paths``; a torn last line (a crash mid-write)
    is cut off the file, so appending resumes cleanly."""
    done: set[str] = set()
    for path in paths:
        if not path.exists():
            continue
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        good = []
        for line in lines:
            try:
                done.add(str(json.loads(line)[key]))
                good.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                break  # only the last line can be torn: stop there
        if len(good) < len(lines) or (good and not good[-1].endswith("\n")):
            atomic_write(path, "".join(line if line.endswith("\n") else line + "\n" for line in good))
    return done
