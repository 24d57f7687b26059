"""The one manifest format: JSON Lines, one clip per line.

Fields (``audio`` required, plus at least one of captions / qa / labels for training):

    {"id": "clip-001", "audio": "audio/clip-001.wav", "start": 0.0, "end": 10.0, "split": "train",
     "captions": ["a soft low sine tone", "..."], "qa": [{"instruction": "...", "answer": "..."}],
     "tags": ["piano", "slow"], "labels": {"instrument": "piano"}}

``audio`` is relative to the manifest's folder unless absolute. ``caption`` (one string) is read
as ``captions: [caption]``. Errors name the file and the line number.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional


class ManifestError(ValueError):
    """A manifest problem, with file and line number."""


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


def _text(value, path: str, n: int, what: str, counts: dict) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{path}:{n}: {what} is {type(value).__name__}, not text")
    if not value.strip():
        raise ManifestError(f"{path}:{n}: {what} is empty; remove it or fill it in")
    if len(value) > MAX_TEXT_CHARS:
        counts["truncated"] = counts.get("truncated", 0) + 1
        return value[:MAX_TEXT_CHARS]
    return value


def read_manifest(path: str, counts: Optional[dict] = None) -> list[Clip]:
    """Clips of a manifest. ``counts`` (if given) receives ``truncated``: texts cut to MAX_TEXT_CHARS."""
    counts = {} if counts is None else counts
    root = os.path.dirname(os.path.abspath(path))
    clips = []
    try:
        f = open(path, "rb")
    except OSError as err:
        raise ManifestError(f"{path}: cannot open manifest ({err.strerror})") from None
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
            if not isinstance(row, dict) or not row.get("audio"):
                raise ManifestError(f"{path}:{n}: missing required field 'audio'")
            captions = row.get("captions", [row["caption"]] if "caption" in row else [])
            if isinstance(captions, str):
                captions = [captions]
            captions = [_text(c, path, n, f"caption {k + 1}", counts) for k, c in enumerate(captions)]
            qa = []
            for k, pair in enumerate(row.get("qa", [])):
                if not isinstance(pair, dict) or "instruction" not in pair or "answer" not in pair:
                    raise ManifestError(f"{path}:{n}: qa pair {k + 1} needs 'instruction' and 'answer'")
                qa.append({"instruction": _text(pair["instruction"], path, n, f"qa {k + 1} instruction", counts),
                           "answer": _text(pair["answer"], path, n, f"qa {k + 1} answer", counts)})
            audio = row["audio"] if os.path.isabs(row["audio"]) else os.path.join(root, row["audio"])
            clips.append(Clip(
                id=str(row.get("id", f"{os.path.basename(path)}:{n}")), audio=audio, split=row.get("split", "train"),
                start=float(row.get("start", 0.0)), end=row.get("end"), captions=list(captions),
                qa=qa, tags=list(row.get("tags", [])), labels=dict(row.get("labels", {})),
            ))
    return clips


def write_manifest(path: str, rows: list[dict]) -> None:
    """Write rows atomically (a crash never leaves a half-written manifest)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
