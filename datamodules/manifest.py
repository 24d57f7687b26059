"""The one manifest format: JSON Lines, one clip per line.

Fields (``audio`` required, plus at least one of captions / qa / labels for training):

    {"id": "clip-001", "audio": "audio/clip-001.wav", "start": 0.0, "end": 10.0, "split": "train",
     "captions": ["a soft low sine tone", "..."], "qa": [{"instruction": "...", "answer": "..."}],
     "tags": ["piano", "slow"], "labels": {"instrument": "piano"}}

``audio`` is relative to the manifest's folder unless absolute. ``caption`` (one string) is read
as ``captions: [caption]``. Every field is checked for its type when the manifest is read; errors
name the file and the line number.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from bridgebench.errors import ManifestError
from bridgebench.runtime.io import write_jsonl


@dataclass
class Clip:
    id: str
    audio: str
    split: str = "train"
    start: float = 0.0
    end: Optional[float] = None
    captions: list[str] = field(default_factory=list)
    qa: list[dict] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    labels: dict = field(default_factory=dict)


MAX_TEXT_CHARS = 2000  # longer captions/answers are cut (and counted): no tokenizer keeps more


def _text(value, where: str, what: str, counts: dict) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{where}: {what} is {_type_name(value)}, not text")
    if not value.strip():
        raise ManifestError(f"{where}: {what} is empty; remove it or fill it in")
    if len(value) > MAX_TEXT_CHARS:
        counts["truncated"] = counts.get("truncated", 0) + 1
        return value[:MAX_TEXT_CHARS]
    return value


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(f"{where} is {value!r}, not a number of seconds")
    return float(value)


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def parse_row(row, where: str, root: str, counts: dict, line: int = 0) -> Clip:
    """One manifest row as a Clip, every field checked for its type (``where`` = ``file:line``).
    Fields of the wrong shape are errors, never reinterpreted: a string ``tags`` is not split into
    characters, a dict ``captions`` is not iterated."""
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: a row must be a JSON object, not {_type_name(row)}")
    audio = row.get("audio")
    if audio is None or audio == "":
        raise ManifestError(f"{where}: missing required field 'audio'")
    if not isinstance(audio, str) or not audio.strip():
        raise ManifestError(f"{where}: required field 'audio' is {_type_name(audio)} ({audio!r}); give the audio "
                            "file's path as text")
    clip_id = row.get("id", f"{os.path.basename(where.rsplit(':', 1)[0])}:{line}")
    if isinstance(clip_id, bool) or not isinstance(clip_id, (str, int)):
        raise ManifestError(f"{where}: 'id' is {_type_name(clip_id)}; give text or an integer")
    split = row.get("split", "train")
    if not isinstance(split, str) or not split:
        raise ManifestError(f"{where}: 'split' is {_type_name(split)}; give a split name such as train")
    start = _number(row.get("start", 0.0), f"{where}: 'start'")
    end = row.get("end")
    if end is not None:
        end = _number(end, f"{where}: 'end'")
        if end <= start:
            raise ManifestError(f"{where}: 'end' ({end}) must be after 'start' ({start})")
    if start < 0:
        raise ManifestError(f"{where}: 'start' is {start}; it must be >= 0")
    if "captions" in row:
        captions = row["captions"]
        if not isinstance(captions, list):
            raise ManifestError(f"{where}: 'captions' is {_type_name(captions)}, not a list of texts "
                                "(use 'caption' for one caption)")
    elif "caption" in row:
        captions = [row["caption"]]
    else:
        captions = []
    captions = [_text(c, where, f"caption {k + 1}", counts) for k, c in enumerate(captions)]
    qa_rows = row.get("qa", [])
    if not isinstance(qa_rows, list):
        raise ManifestError(f"{where}: 'qa' is {_type_name(qa_rows)}, not a list of instruction/answer objects")
    qa = []
    for k, pair in enumerate(qa_rows):
        if not isinstance(pair, dict) or "instruction" not in pair or "answer" not in pair:
            raise ManifestError(f"{where}: qa pair {k + 1} needs 'instruction' and 'answer'")
        qa.append({"instruction": _text(pair["instruction"], where, f"qa {k + 1} instruction", counts),
                   "answer": _text(pair["answer"], where, f"qa {k + 1} answer", counts)})
        if "type" in pair:  # the question's type (e.g. instrument), for per-type scores
            qa[-1]["type"] = _text(pair["type"], where, f"qa {k + 1} type", counts)
    tags = row.get("tags", [])
    if not isinstance(tags, list):
        raise ManifestError(f"{where}: 'tags' is {_type_name(tags)}, not a list of texts (e.g. [\"piano\", \"slow\"])")
    for k, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag.strip():
            raise ManifestError(f"{where}: tag {k + 1} is {_type_name(tag)} ({tag!r}); tags must be non-empty texts")
    labels = row.get("labels", {})
    if not isinstance(labels, dict):
        raise ManifestError(f"{where}: 'labels' is {_type_name(labels)}, not an object such as "
                            "{\"instrument\": \"piano\"}")
    for key, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
            raise ManifestError(f"{where}: label '{key}' is {_type_name(value)}; give a text, a number or a list of them")
    path = audio if os.path.isabs(audio) else os.path.join(root, audio)
    return Clip(id=str(clip_id), audio=path, split=split, start=start, end=end, captions=captions, qa=qa,
                tags=list(tags), labels=dict(labels))


def read_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, row) of every non-empty line of a JSON Lines file; a line that is not UTF-8,
    not JSON or not an object is an error naming the file and the line. The one reader of
    manifests: ``read_manifest`` and the caption-data commands both use it."""
    if os.path.isdir(path):
        raise ManifestError(f"{path}: is a folder, not a manifest file")
    try:
        f = open(path, "rb")
    except OSError as err:
        raise ManifestError(f"{path}: cannot open manifest ({err.strerror})") from None
    rows = []
    with f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ManifestError(f"{path}:{n}: not valid UTF-8") from None
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{n}: a row must be a JSON object, not {_type_name(row)}")
            rows.append((n, row))
    return rows


def read_manifest(path: str, counts: Optional[dict] = None) -> list[Clip]:
    """Clips of a manifest. ``counts`` (if given) receives ``truncated``: texts cut to MAX_TEXT_CHARS."""
    counts = {} if counts is None else counts
    root = os.path.dirname(os.path.abspath(path))
    return [parse_row(row, f"{path}:{n}", root, counts, n) for n, row in read_rows(path)]


def write_manifest(path: str, rows: list[dict]) -> None:
    """Write rows atomically (a crash never leaves a half-written manifest)."""
    write_jsonl(path, rows)
