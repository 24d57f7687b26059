"""Input rows and resumable outputs of the caption-data commands.

Rows come from the one manifest reader (``datamodules.manifest.read_rows``: UTF-8, JSON objects,
errors naming file:line); each row needs an ``id`` and an ``audio`` path. Outputs are appended batch
by batch and fsync'd; on restart the rows already written (or skipped) are not generated again, and
a torn last line is cut off. An output remembers how it was made (``generation``), so a rerun with
other settings into the same file is refused instead of mixing two methods in one file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from bridgebench.datamodules.manifest import read_rows as read_manifest_rows
from bridgebench.errors import ConfigError, ManifestError
from bridgebench.runtime.io import append_jsonl, done_ids, ensure_file_target

__all__ = ["read_rows", "relocated", "pending_rows", "open_output", "append_jsonl", "done_ids"]


def read_rows(manifest: str) -> tuple[Path, list[dict]]:
    """(path, rows) of a JSONL manifest or a ``builtin:`` set (generated if needed). Every row keeps
    its fields; ``id`` (text or integer) and ``audio`` (text) are checked, with file:line."""
    if manifest.startswith("builtin:"):
        from bridgebench.datamodules.fixtures import BUILTINS

        if manifest not in BUILTINS:
            raise ConfigError(f"manifest: unknown built-in set {manifest!r}; known: {', '.join(BUILTINS)}")
        manifest = str(BUILTINS[manifest]())
    src = Path(manifest)
    if not src.exists():
        raise ManifestError(f"{src}: manifest not found")
    rows = []
    for n, row in read_manifest_rows(str(src)):
        if isinstance(row.get("id"), bool) or not isinstance(row.get("id"), (str, int)):
            raise ManifestError(f"{src}:{n}: 'id' is missing or not text/integer; every row needs an id")
        if not isinstance(row.get("audio"), str) or not row["audio"].strip():
            raise ManifestError(f"{src}:{n}: 'audio' is missing or not text; every row needs its audio file's path")
        rows.append({**row, "_line": n})
    return src, rows


def relocated(row: dict, audio_root: Path, out_dir: Path) -> dict:
    """A copy of ``row`` (without its line number) whose relative audio path (relative to
    ``audio_root``, the input manifest's folder) stays valid from ``out_dir``, where the output is."""
    new_row = {k: v for k, v in row.items() if k != "_line"}
    if not os.path.isabs(str(row.get("audio", ""))):
        new_row["audio"] = os.path.relpath(audio_root / row["audio"], out_dir.resolve())
    return new_row


def pending_rows(rows: list[dict], done: set[str], counts: dict, splits: Optional[list[str]] = None,
                 limit: Optional[int] = None, need: Optional[str] = None) -> list[dict]:
    """Rows still to generate: in ``splits``, with a non-empty ``need`` field (else counted as
    ``no_<need>``), not ``done`` (counted as ``done_before``), at most ``limit`` in all."""
    todo = []
    for row in rows:
        if splits and row.get("split") not in splits:
            continue
        if need and not row.get(need):
            counts[f"no_{need}"] = counts.get(f"no_{need}", 0) + 1
            continue
        if str(row["id"]) in done:
            counts["done_before"] += 1
            continue
        todo.append(row)
    return todo if limit is None else todo[: max(0, limit - counts["done_before"])]


def open_output(out: str, side_suffix: str, settings: dict, same: tuple[str, ...]) -> tuple[Path, Path, set[str]]:
    """(output, side file, ids done) of a resumable output. If the output already holds rows made
    with different ``settings`` (compared on the keys in ``same``), that is an error: one file, one
    method."""
    out_path, side_path = Path(out), Path(str(out) + side_suffix)
    ensure_file_target(out_path, "out")
    done = done_ids(out_path, side_path)
    if out_path.is_file() and out_path.stat().st_size:
        first = json.loads(out_path.read_text(encoding="utf-8").splitlines()[0]).get("generation") or {}
        differs = {k: (first.get(k), settings.get(k)) for k in same if first.get(k) != settings.get(k)}
        if differs:
            what = ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in differs.items())
            raise ConfigError(f"{out_path}: already holds captions made with {what}; write to another output, "
                              "or rerun with the same settings to resume it")
    return out_path, side_path, done
