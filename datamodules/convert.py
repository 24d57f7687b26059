"""Convert published dataset metadata into bridgebench's one manifest format (JSON Lines).

Each public audio-text or audio-label dataset ships its metadata in its own layout (a CSV with one
caption per line, a JSON of question/answer pairs, a folder tree, a two-row CSV header...). This
module turns one such file or folder into a manifest that ``read_manifest`` accepts, so a dataset is
usable with ``manifest: path/to/out.jsonl`` and nothing dataset-specific lives in the data path.

    from bridgebench.datamodules.convert import convert
    convert("musiccaps", "musiccaps-public.csv", "data/musiccaps.jsonl", audio_root="data/musiccaps/audio")

or ``python -m bridgebench.datamodules.convert musiccaps musiccaps-public.csv data/musiccaps.jsonl``.

What it assumes:

* Only metadata is read; audio is neither downloaded nor opened (a missing file shows when the data
  path loads it). Each converter knows the dataset's usual audio file naming (MusicCaps ``{ytid}.wav``,
  NSynth ``audio/{note_str}.wav``...). ``audio_pattern`` (a ``str.format`` pattern over the row's fields,
  e.g. ``"{ytid}.wav"`` or ``"audio/{youtube_id}_{start_time}.wav"``) overrides that naming, and
  ``audio_root`` (the folder holding the audio; relative to the working directory) overrides where it
  is looked for. Without ``audio_root`` the dataset's usual place relative to the metadata file is used
  (the metadata's own folder unless the converter's table entry says otherwise). Audio paths are
  written relative to the output manifest's folder (absolute where no relative path exists).
* Rows that cannot become a clip (empty caption or answer, a missing value, a bad number, a file not in
  any split list) are skipped and counted by reason in the returned summary; nothing is dropped
  silently. A malformed file (not valid JSON, a CSV without a required column, a wrong layout) raises
  ``ManifestError`` with a one-line message naming the file and, where it has one, the line.
* ``split`` (train / val / test, or an alias such as ``valid``, ``validation``, ``eval``) labels every
  written clip with that split, overriding what the dataset says; otherwise the split comes from the
  data (a column, a file or folder name, the official split lists) as each converter describes.
* Several rows for one clip (AudioCaps, Song Describer, MusicInstruct, MusicQA) become one clip with
  all captions or question/answer pairs. Provenance that helps evaluation stays in a small ``meta``
  dict (``read_manifest`` ignores it).
* Converter-specific options are keyword arguments of ``convert`` (``columns`` for LP-MusicCaps,
  ``trimmed`` for the YouTube-clip datasets, ``split_dir``/``seed`` for GTZAN, ``partition``/``threshold``
  for OpenMIC, ``subset`` for FMA); an unknown option is an error.
* GTZAN, FMA, NSynth and OpenMIC clips also get MINT's instruction/answer pair (its Table-1 prompt,
  the label as answer) in ``qa``, so ``task: qa`` instruction-tunes on them as MINT does; WavCaps and
  Clotho get theirs with ``mint_qa=True`` (``--mint-qa``).

``CONVERTERS`` maps each format ID to its function (``fn(job, **options) -> iterable of rows``).
"""

from __future__ import annotations

import argparse
import ast
import csv
import inspect
import json
import math
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bridgebench.datamodules.manifest import ManifestError, write_manifest
from bridgebench.errors import ConfigError
from bridgebench.runtime.io import ensure_file_target

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "dev": "train",
    "development": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "eval": "test",
    "evaluation": "test",
}
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _normalize_split(value: str) -> str:
    key = str(value).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(
            f"unknown split {value!r}; expected one of {', '.join(SPLITS)} (or an alias such as valid, eval)"
        )
    return _SPLIT_ALIASES[key]


def _split_from_name(path: str) -> str | None:
    """The split a file or folder name states (``clotho_captions_evaluation.csv`` -> test), if any."""
    tokens = re.split(r"[^a-z0-9]+", os.path.splitext(os.path.basename(os.path.normpath(path)))[0].lower())
    found = {_SPLIT_ALIASES[t] for t in tokens if t in _SPLIT_ALIASES}
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------------------------------
# The job a converter works on: source, where audio is, counting skips


@dataclass
class Job:
    """What a converter needs: the source, the output folder, the audio rule, and a skip counter."""

    fmt: str
    source: str
    out_dir: str
    audio_root: str | None = None
    audio_pattern: str | None = None
    split: str | None = None
    reasons: Counter = field(default_factory=Counter)

    @property
    def source_dir(self) -> str:
        """The folder the metadata lives in (the source itself when it is a folder)."""
        path = os.path.abspath(self.source)
        return path if os.path.isdir(path) else os.path.dirname(path)

    def skip(self, reason: str) -> None:
        self.reasons[reason] += 1

    def audio(self, fields: dict, default_pattern: str, default_root: str | None = None) -> str:
        """Audio path for a row: pattern (user's or the dataset's) under the root, made relative to the output."""
        pattern = self.audio_pattern or default_pattern
        try:
            rel = pattern.format_map(fields)
        except KeyError as err:
            raise ValueError(
                f"{self.fmt}: audio_pattern {pattern!r} names field {err} that the rows lack "
                f"(fields: {', '.join(sorted(map(str, fields)))})"
            ) from None
        except (IndexError, ValueError, AttributeError) as err:
            raise ValueError(f"{self.fmt}: audio_pattern {pattern!r} is not a usable format string ({err})") from None
        root = self.audio_root if self.audio_root is not None else (default_root or self.source_dir)
        path = os.path.abspath(rel if os.path.isabs(rel) else os.path.join(root, rel))
        try:
            return os.path.relpath(path, self.out_dir)
        except ValueError:  # no relative path (another drive)
            return path

    def row_split(self, derived: str | None) -> str | None:
        """The user's split when given, else the one the data says."""
        return self.split or derived

    def need_split(self, derived: str | None, what: str) -> str:
        split = self.split or derived
        if split is None:
            raise ValueError(
                f"{self.fmt}: cannot tell the split of {self.source} from {what}; pass split=train/val/test"
            )
        return split


Converter = Callable[..., Iterable[dict]]


# --------------------------------------------------------------------------------------------------
# Reading files: CSV and JSON with errors that name the file and line


def _open_text(path: str):
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as err:
        raise ManifestError(f"{path}: cannot open ({err.strerror})") from None


def _utf8_error_line(path: str) -> int:
    with open(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return data[: err.start].count(b"\n") + 1
    return 1


def _csv_lines(path: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV records with the line each starts on."""
    with _open_text(path) as f:
        reader = csv.reader(f, strict=True)
        line = 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise ManifestError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
            except UnicodeDecodeError:
                raise ManifestError(f"{path}:{_utf8_error_line(path)}: not valid UTF-8") from None
            start, line = line, reader.line_num + 1
            if record and any(cell.strip() for cell in record):
                yield start, record


def _check_width(path: str, line: int, record: list[str], width: int) -> None:
    if len(record) != width:
        raise ManifestError(f"{path}:{line}: {len(record)} fields where the header has {width}")


def _missing_column(path: str, column: str, header: list[str]) -> ManifestError:
    return ManifestError(f"{path}:1: missing required column '{column}' (columns: {', '.join(header)})")


def _csv_table(
    path: str, required: Iterable[str] = (), one_of: Iterable[tuple[str, ...]] = ()
) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """Header and rows (as dicts, with line numbers) of a one-header CSV; a missing required column raises."""
    lines = _csv_lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise ManifestError(f"{path}: empty file (no CSV header)") from None
    header = [h.strip() for h in header]
    for column in required:
        if column not in header:
            raise _missing_column(path, column, header)
    for group in one_of:
        if not any(c in header for c in group):
            raise _missing_column(path, " or ".join(group), header)

    def rows() -> Iterator[tuple[int, dict]]:
        for line, record in lines:
            _check_width(path, line, record, len(header))
            yield line, dict(zip(header, record))

    return header, rows()


def _csv_records(path: str, required: Iterable[str] = ()) -> Iterator[tuple[int, dict]]:
    return _csv_table(path, required)[1]


def _json_error(path: str, err: json.JSONDecodeError, line: int | None = None) -> ManifestError:
    return ManifestError(f"{path}:{line or err.lineno}: not valid JSON ({err.msg})")


def _read_bytes_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ManifestError(f"{path}: cannot open ({err.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ManifestError(f"{path}:{line}: not valid UTF-8") from None


def _load_json(path: str) -> Any:
    text = _read_bytes_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _json_error(path, err) from None


def _jsonl_records(path: str, text: str | None = None) -> list[tuple[int, Any]]:
    text = _read_bytes_text(path) if text is None else text
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise _json_error(path, err, n) from None
    return records


def _json_or_jsonl(path: str) -> tuple[str, Any]:
    """``("json", document)`` or ``("jsonl", [(line, record), ...])``: HF ``to_json`` writes JSON Lines into ``.json``."""
    text = _read_bytes_text(path)
    if path.lower().endswith((".jsonl", ".ndjson")):
        return "jsonl", _jsonl_records(path, text)
    try:
        return "json", json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":
            return "jsonl", _jsonl_records(path, text)
        raise _json_error(path, err) from None


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    key = _text(value).lower()
    return True if key in _TRUE else False if key in _FALSE else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _int_or_float(number: float) -> Any:
    return int(number) if float(number).is_integer() else number


def _string_list(value: Any) -> list[str]:
    """A list cell: a real list, a Python/JSON list literal (pandas writes ``['a', 'b']``), or comma-separated."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = value
    else:
        text = str(value).strip()
        if not text:
            return []
        items = None
        if text.startswith("["):
            for parse in (json.loads, ast.literal_eval):
                try:
                    parsed = parse(text)
                except (ValueError, SyntaxError, json.JSONDecodeError):
                    continue
                if isinstance(parsed, (list, tuple)):
                    items = parsed
                    break
        if items is None:
            items = text.strip("[]").split(",")
    return [s for s in (_text(i).strip("'\"").strip() for i in items) if s]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --------------------------------------------------------------------------------------------------
# Converters. Each yields manifest rows (dicts) and calls job.skip(reason) for rows it cannot use.


def _clip_times(job: Job, row: dict, start: float | None, end: float | None, trimmed: bool) -> None:
    """Seek into the full recording (start/end), or note the times when the audio file is the clip itself."""
    if start is None and end is None:
        return
    if trimmed:
        row.setdefault("meta", {})["source_time"] = [_int_or_float(t) if t is not None else None for t in (start, end)]
    else:
        if start is not None:
            row["start"] = _int_or_float(start)
        if end is not None:
            row["end"] = _int_or_float(end)


def musiccaps(job: Job, *, trimmed: bool = False) -> Iterator[dict]:
    """MusicCaps ``musiccaps-public.csv``: one 10 s clip per row.

    Source followed: the Kaggle/HF ``google/MusicCaps`` card and file (columns ytid, start_s, end_s,
    audioset_positive_labels, aspect_list, caption, author_id, is_balanced_subset, is_audioset_eval;
    https://huggingface.co/datasets/google/MusicCaps). Split: is_audioset_eval -> test, else train (as
    in spotify/llark ``m2t/dataset_utils/jsonify.py`` MusiccapsJsonifier). Tags: the aspect_list.
    Audio: ``{ytid}.wav``. ``start``/``end`` come from start_s/end_s (seeking into the downloaded
    video); pass ``trimmed=True`` when each file already is the 10 s clip (most download scripts cut
    it), which keeps the times in ``meta`` only.
    """
    path = job.source
    for line, r in _csv_records(path, ("ytid", "start_s", "end_s", "caption", "is_audioset_eval")):
        ytid, caption = _text(r["ytid"]), _text(r["caption"])
        if not ytid:
            job.skip("empty ytid")
            continue
        if not caption:
            job.skip("empty caption")
            continue
        start, end = _number(r["start_s"]), _number(r["end_s"])
        if start is None or end is None:
            job.skip("invalid start_s/end_s")
            continue
        is_eval = _bool(r["is_audioset_eval"])
        if is_eval is None and not job.split:
            job.skip("invalid is_audioset_eval")
            continue
        row = {
            "id": ytid,
            "audio": job.audio(r, "{ytid}.wav"),
            "split": job.row_split("test" if is_eval else "train"),
            "captions": [caption],
            "tags": _string_list(r.get("aspect_list")),
        }
        _clip_times(job, row, start, end, trimmed)
        balanced = _bool(r.get("is_balanced_subset"))
        if balanced is not None:
            row.setdefault("meta", {})["is_balanced_subset"] = balanced
        yield row


def song_describer(job: Job, *, valid_only: bool = False) -> Iterator[dict]:
    """Song Describer Dataset ``song_describer.csv``: one row per caption, several per track -> one clip per track.

    Source followed: mulab-mir/song-describer-dataset ``docs/datacard.md`` and ``scripts/create_dataset.py``
    (columns caption_id, track_id, caption, is_valid_subset, familiarity, artist_id, album_id, path,
    duration; audio ``audio/<2-digit folder>/<track_id>.2min.mp3``; the MTG-Jamendo ``path`` column says
    ``<folder>/<track_id>.mp3``). Split: the whole set is for evaluation -> test. Audio root default:
    ``audio/`` next to the CSV; field ``path_2min`` is the 2-minute file's relative path. ``valid_only``
    keeps only captions with is_valid_subset true (the paper's validated subset); ``meta`` keeps the
    caption ids and their validity.
    """
    path = job.source
    for line, r in _csv_records(path, ("caption_id", "track_id", "caption")):
        track, caption = _text(r["track_id"]), _text(r["caption"])
        if not track:
            job.skip("empty track_id")
            continue
        if not caption:
            job.skip("empty caption")
            continue
        valid = _bool(r.get("is_valid_subset"))
        if valid_only and not valid:
            job.skip("not in the valid subset")
            continue
        rel = _text(r.get("path"))
        if rel:
            path_2min = rel if rel.endswith(".2min.mp3") else re.sub(r"\.mp3$", "", rel) + ".2min.mp3"
        elif track.isdigit():
            path_2min = f"{int(track) % 100:02d}/{track}.2min.mp3"
        else:
            job.skip("no path and non-numeric track_id")
            continue
        fields = dict(r, path_2min=path_2min)
        meta = {"caption_ids": [_text(r["caption_id"])]}
        if valid is not None:
            meta["is_valid_subset"] = [valid]
        yield {
            "id": track,
            "audio": job.audio(fields, "{path_2min}", os.path.join(job.source_dir, "audio")),
            "split": job.row_split("test"),
            "captions": [caption],
            "meta": meta,
        }


def youtube8m_musictextclips(job: Job, *, trimmed: bool = False) -> Iterator[dict]:
    """YouTube8M-MusicTextClips ``train.csv`` / ``test.csv``: one described 10 s clip per row.

    Source followed: the dataset README (Zenodo record 8040754, McKee et al. CVPR 2023): columns
    video_id, start, end, text; and spotify/llark ``m2t/dataset_utils/jsonify.py``
    (YT8MMusicTextClipsJsonifier reads ``train.csv``/``test.csv``). Split from the file name. Audio:
    ``{video_id}.wav`` with start/end seeking into it; ``trimmed=True`` when files are the clips.
    """
    path = job.source
    header, records = _csv_table(path, ("video_id", "start", "end"), one_of=[("text", "caption")])
    text_col = "text" if "text" in header else "caption"
    split = job.need_split(_split_from_name(path), "its file name (train.csv / test.csv)")
    for line, r in records:
        vid, caption = _text(r["video_id"]), _text(r[text_col])
        if not vid:
            job.skip("empty video_id")
            continue
        if not caption:
            job.skip("empty caption")
            continue
        start, end = _number(r["start"]), _number(r["end"])
        if start is None or end is None:
            job.skip("invalid start/end")
            continue
        row = {"id": vid, "audio": job.audio(r, "{video_id}.wav"), "split": split, "captions": [caption]}
        _clip_times(job, row, start, end, trimmed)
        yield row


LP_CAPTION_COLUMNS = ("caption_writing", "caption_summary", "caption_paraphrase", "caption_attribute_prediction")
_LP_KNOWN = LP_CAPTION_COLUMNS + ("caption_ground_truth",)
_LP_TAG_COLUMNS = ("tag", "tag_top188", "aspect_list", "tag_top50")
_LP_ID_COLUMNS = ("track_id", "ytid", "fname", "id")


def lp_musiccaps(job: Job, *, columns: Any = None, trimmed: bool = False) -> Iterator[dict]:
    """LP-MusicCaps (MSD, MTT, MC) exported as JSON, JSON Lines or CSV: one clip per row, four LLM captions.

    Source followed: the HF cards seungheondoh/LP-MusicCaps-MSD / -MTT / -MC (fields track_id, title,
    artist_name, release, year, tag [MSD] / tag_top50, tag_top188 [MTT] / ytid, aspect_list,
    caption_ground_truth, start_s, end_s, is_audioset_eval [MC]; caption_writing, caption_summary,
    caption_paraphrase, caption_attribute_prediction, pseudo_attribute, path) and zihaod/MusiLingo
    ``musilingo/datasets/datasets/msd_dataset.py`` (audio = ``path`` under the mp3 folder, caption =
    caption_writing; lpmc/llm_captioning/eval.py for MC: rows with ``is_crawled`` false are skipped,
    as there). Captions: all four columns in that order, or ``columns`` (a list or a comma
    string, e.g. ``"caption_writing"`` as MusiLingo); ``meta.caption_columns`` says which column each
    caption came from. Tags: the tag list. Split: ``split``, else a top-level ``{"train": [...], ...}``
    key, else is_audioset_eval (MC), else the file name (``*_train.json``), else train. Audio:
    ``{path}`` when rows have one, else ``{ytid}.wav``, else ``{track_id}.mp3``.
    """
    path = job.source
    if columns is None:
        cols = list(LP_CAPTION_COLUMNS)
    elif isinstance(columns, str):
        cols = [c.strip() for c in columns.split(",") if c.strip()]
    else:
        cols = [str(c) for c in columns]
    if not cols:
        raise ValueError("lp-musiccaps: columns is empty")
    for c in cols:
        if c not in _LP_KNOWN:
            raise ValueError(f"lp-musiccaps: unknown caption column {c!r}; expected some of {', '.join(_LP_KNOWN)}")

    name_split = _split_from_name(path)
    records: list[tuple[str | None, dict]] = []
    if path.lower().endswith(".csv"):
        _, rows = _csv_table(path, cols, one_of=[_LP_ID_COLUMNS])
        records = [(None, r) for _, r in rows]
    else:
        kind, doc = _json_or_jsonl(path)
        if kind == "jsonl":
            records = [(None, r) for _, r in doc]
        elif isinstance(doc, list):
            records = [(None, r) for r in doc]
        elif isinstance(doc, dict) and isinstance(doc.get("data"), list):
            records = [(None, r) for r in doc["data"]]
        elif (
            isinstance(doc, dict)
            and doc
            and all(k.lower() in _SPLIT_ALIASES and isinstance(v, list) for k, v in doc.items())
        ):
            records = [(_SPLIT_ALIASES[k.lower()], r) for k, v in doc.items() for r in v]
        else:
            raise ManifestError(
                f"{path}: expected a list of LP-MusicCaps rows (or {{'train': [...], ...}}), found {type(doc).__name__}"
            )

    for key_split, r in records:
        if not isinstance(r, dict):
            job.skip("row is not an object")
            continue
        clip_id = next((_text(r[k]) for k in _LP_ID_COLUMNS if _text(r.get(k))), "")
        if not clip_id:
            job.skip("missing track_id/ytid")
            continue
        if "is_crawled" in r and _bool(r.get("is_crawled")) is False:
            # MC rows whose audio LP-MusicCaps could not fetch: their eval.py leaves them out (2,839
            # of MusicCaps' 2,858 eval clips remain), and without audio they cannot be used here either.
            job.skip("not crawled (is_crawled false)")
            continue
        kept = [(c, _text(r.get(c))) for c in cols]
        kept = [(c, t) for c, t in kept if t]
        if not kept:
            job.skip("empty caption")
            continue
        is_eval = _bool(r.get("is_audioset_eval")) if "is_audioset_eval" in r else None
        split = job.split or key_split or ({True: "test", False: "train"}.get(is_eval)) or name_split or "train"
        fields = dict(r, id=clip_id)
        if _text(r.get("path")):
            default = "{path}"
        elif _text(r.get("ytid")):
            default = "{ytid}.wav"
        else:
            default = "{id}.mp3"
        tag_col = next((k for k in _LP_TAG_COLUMNS if k in r), None)
        row = {
            "id": clip_id,
            "audio": job.audio(fields, default),
            "split": split,
            "captions": [t for _, t in kept],
            "tags": _string_list(r.get(tag_col)) if tag_col else [],
            "meta": {"caption_columns": [c for c, _ in kept]},
        }
        if "start_s" in r or "end_s" in r:
            _clip_times(job, row, _number(r.get("start_s")), _number(r.get("end_s")), trimmed)
        yield row


def musicinstruct(job: Job) -> Iterator[dict]:
    """MusicInstruct ``music_instruct{,_short,_long}.json``: ``{"QA": [{ytid, question, answer, is_audioset_eval, ...}]}``.

    Source followed: HF m-a-p/Music-Instruct (``MusicInstruct/*.json``; the viewer reports a single
    top-level field ``QA``) and zihaod/MusiLingo ``musilingo/datasets/datasets/cmi_dataset.py`` (keys
    ytid, question, answer, is_audioset_eval, sampling_rate; is_audioset_eval -> test split; audio is the
    MusicCaps clip of ``ytid``). Pairs are grouped per ytid into one clip's ``qa`` list. Audio:
    ``{ytid}.wav`` (MusicCaps clips).
    """
    path = job.source
    kind, doc = _json_or_jsonl(path)
    if kind == "jsonl":
        items = [r for _, r in doc]
    elif isinstance(doc, dict) and isinstance(doc.get("QA"), list):
        items = doc["QA"]
    elif isinstance(doc, list):
        items = doc
    else:
        raise ManifestError(
            f"{path}: expected a JSON object with a 'QA' list (MusicInstruct layout), "
            f"found {type(doc).__name__}{' with keys ' + ', '.join(map(str, doc)) if isinstance(doc, dict) else ''}"
        )
    for r in items:
        if not isinstance(r, dict):
            job.skip("QA item is not an object")
            continue
        ytid, question, answer = _text(r.get("ytid")), _text(r.get("question")), _text(r.get("answer"))
        if not ytid:
            job.skip("missing ytid")
            continue
        if not question:
            job.skip("empty question")
            continue
        if not answer:
            job.skip("empty answer")
            continue
        is_eval = _bool(r.get("is_audioset_eval"))
        if is_eval is None and not job.split:
            job.skip("missing is_audioset_eval")
            continue
        yield {
            "id": ytid,
            "audio": job.audio(r, "{ytid}.wav"),
            "split": job.row_split("test" if is_eval else "train"),
            "qa": [{"instruction": question, "answer": answer}],
        }


def musicqa(job: Job) -> Iterator[dict]:
    """MusicQA ``PretrainMusicQA.json`` / ``FinetuneMusicQA.json`` / ``EvalMusicQA.json``.

    Layout: a list of ``{"audio_name": ..., "conversation": [{"from": "human", "value": Q},
    {"from": "gpt", "value": A}, ...]}``. Source followed: HF mu-llama/MusicQA ``MusicQA.py``
    (``processed_metadata[row['audio_name']].append({"Question": conversation[0].value, "Answer":
    conversation[1].value})``) and zihaod/MusiLingo ``musicqa_dataset.py`` (audio =
    ``MusicQA/audios/{audio_name}``). Each human turn followed by a gpt turn is one pair; pairs group
    per audio. Split: Eval* -> test, Pretrain*/Finetune* -> train (or ``split``). Audio root default:
    ``audios/`` next to the JSON.
    """
    path = job.source
    base = os.path.basename(path).lower()
    derived = "test" if base.startswith(("eval", "test")) else _split_from_name(path) or "train"
    kind, doc = _json_or_jsonl(path)
    items = [r for _, r in doc] if kind == "jsonl" else doc
    if not isinstance(items, list):
        raise ManifestError(
            f"{path}: expected a JSON list of {{audio_name, conversation}} (MusicQA layout), found {type(items).__name__}"
        )
    for r in items:
        if not isinstance(r, dict):
            job.skip("item is not an object")
            continue
        name, conv = _text(r.get("audio_name")), r.get("conversation")
        if not name:
            job.skip("missing audio_name")
            continue
        if not isinstance(conv, list):
            job.skip("missing conversation")
            continue
        pairs, question = [], None
        for turn in conv:
            if not isinstance(turn, dict):
                continue
            who, value = _text(turn.get("from")).lower(), _text(turn.get("value"))
            if who in ("human", "user"):
                question = value
            elif who in ("gpt", "assistant") and question is not None:
                if question and value:
                    pairs.append({"instruction": question, "answer": value})
                question = None
        if not pairs:
            job.skip("no question/answer pair with text")
            continue
        clip_id = os.path.splitext(name)[0]
        yield {
            "id": clip_id,
            "audio": job.audio(r, "{audio_name}", os.path.join(job.source_dir, "audios")),
            "split": job.row_split(derived),
            "qa": pairs,
        }


_CLOTHO_FOLDERS = {"train": "development", "val": "validation", "test": "evaluation"}


def clotho(job: Job) -> Iterator[dict]:
    """Clotho ``clotho_captions_{development,validation,evaluation}.csv``: file_name, caption_1..caption_5.

    Source followed: Labbeti/aac-datasets ``src/aac_datasets/datasets/functional/clotho.py`` (captions
    keys file_name, caption_1..5; audio folders development / validation / evaluation; Zenodo 4783391).
    Split: ``split``, else the file name (development -> train, validation -> val, evaluation -> test).
    Audio: ``{file_name}`` in the split's folder next to the CSV (``development/``...).
    """
    path = job.source
    caption_cols = [f"caption_{i}" for i in range(1, 6)]
    records = _csv_records(path, ["file_name"] + caption_cols[:1])
    name_split = _split_from_name(path)
    split = job.need_split(name_split, "its file name (clotho_captions_development/validation/evaluation.csv)")
    root = os.path.join(job.source_dir, _CLOTHO_FOLDERS[name_split]) if name_split else job.source_dir
    for line, r in records:
        fname = _text(r["file_name"])
        if not fname:
            job.skip("empty file_name")
            continue
        captions = [_text(r.get(c)) for c in caption_cols]
        captions = [c for c in captions if c]
        if not captions:
            job.skip("empty caption")
            continue
        yield {
            "id": os.path.splitext(fname)[0],
            "audio": job.audio(r, "{file_name}", root),
            "split": split,
            "captions": captions,
        }


def audiocaps(job: Job, *, trimmed: bool = True) -> Iterator[dict]:
    """AudioCaps ``train.csv`` / ``val.csv`` / ``test.csv``: audiocap_id, youtube_id, start_time, caption.

    Source followed: cdjkim/audiocaps ``dataset/README.md`` (4 columns) and Labbeti/aac-datasets
    ``functional/audiocaps.py`` (rows grouped per ``{youtube_id}_{start_time}``; audio file name
    ``{youtube_id}_{start_time}.flac``, a 10 s clip). Split: ``split``, else the file name. Audio files
    are the 10 s clips (``trimmed=True``: start 0, end 10); with ``trimmed=False`` (full videos, e.g.
    ``audio_pattern="{youtube_id}.wav"``) start/end seek start_time..start_time+10.
    ``meta.audiocap_ids`` keeps the caption ids.
    """
    path = job.source
    records = _csv_records(path, ("audiocap_id", "youtube_id", "start_time", "caption"))
    split = job.need_split(_split_from_name(path), "its file name (train.csv / val.csv / test.csv)")
    for line, r in records:
        yt, caption = _text(r["youtube_id"]), _text(r["caption"])
        start = _number(r["start_time"])
        if not yt:
            job.skip("empty youtube_id")
            continue
        if not caption:
            job.skip("empty caption")
            continue
        if start is None:
            job.skip("invalid start_time")
            continue
        start_txt = str(_int_or_float(start))
        fields = dict(r, start_time=start_txt)
        row = {
            "id": f"{yt}_{start_txt}",
            "audio": job.audio(fields, "{youtube_id}_{start_time}.flac"),
            "split": split,
            "captions": [caption],
            "meta": {"audiocap_ids": [_text(r["audiocap_id"])]},
        }
        if trimmed:
            row.update(start=0, end=10)
        else:
            row.update(start=_int_or_float(start), end=_int_or_float(start + 10))
        yield row


def wavcaps(job: Job) -> Iterator[dict]:
    """WavCaps ``json_files/<source>/*_final.json``: ``{"data": [{"id", "caption", "duration", ...}]}``.

    Source followed: Labbeti/aac-datasets ``functional/wavcaps.py`` (``json.load(...)["data"]``; keys
    id, caption, duration, audio, author, description, download_link, file_name, href, tags; audio file
    ``<id>.flac``, AudioSet_SL ids end in ``.wav`` -> ``.flac``) and XinhaoMei/WavCaps
    ``data/json_files/SoundBible/sb_final.json`` (a plain list there). The ``audio``/``wav_path``
    fields hold the authors' own absolute paths, so they are not used by default (name them in
    ``audio_pattern`` to use them). Field ``fname`` is the flac name. Split: train (pretraining data).
    """
    path = job.source
    doc = _load_json(path)
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        items = doc["data"]
    elif isinstance(doc, list):
        items = doc
    else:
        raise ManifestError(
            f"{path}: expected a JSON object with a 'data' list (WavCaps layout), found {type(doc).__name__}"
        )
    for r in items:
        if not isinstance(r, dict):
            job.skip("item is not an object")
            continue
        raw_id, caption = _text(r.get("id")), _text(r.get("caption"))
        if not raw_id:
            job.skip("missing id")
            continue
        if not caption:
            job.skip("empty caption")
            continue
        stem = raw_id[:-4] if raw_id.lower().endswith(".wav") else raw_id
        row = {
            "id": stem,
            "audio": job.audio(dict(r, fname=f"{stem}.flac"), "{fname}"),
            "split": job.row_split("train"),
            "captions": [caption],
        }
        tags = _string_list(r.get("tags"))
        if tags:
            row["tags"] = tags
        yield row


_GTZAN_FILE = re.compile(r"^([a-z]+)\.(\d{5})\.(wav|au)$")
_GTZAN_LISTS = {"train": "train_filtered.txt", "val": "valid_filtered.txt", "test": "test_filtered.txt"}


def _gtzan_root(source: str) -> tuple[str, dict[str, list[str]]]:
    for root in (
        source,
        os.path.join(source, "genres"),
        os.path.join(source, "genres_original"),
        os.path.join(source, "Data", "genres_original"),
    ):
        if not os.path.isdir(root):
            continue
        found = {}
        for genre in sorted(os.listdir(root)):
            folder = os.path.join(root, genre)
            if os.path.isdir(folder):
                names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".wav", ".au")))
                if names:
                    found[genre] = names
        if found:
            return root, found
    raise ManifestError(f"{source}: no GTZAN audio found (expected genres/<genre>/<genre>.000NN.wav)")


def gtzan(job: Job, *, split_dir: str | None = None, seed: int = 0) -> Iterator[dict]:
    """GTZAN folder ``genres/<genre>/<genre>.000NN.wav`` (or ``genres_original/``, ``.au``): genre labels.

    Source followed: the Marsyas layout (torchaudio / Kaggle ``genres_original``) and the fault-filtered
    split of Kereliuk et al. 2015 as shared in jongpillee/music_dataset_split ``GTZAN_split``
    (``train_filtered.txt`` / ``valid_filtered.txt`` / ``test_filtered.txt``, one ``blues/blues.00029.wav``
    per line). Split: those lists when found (``split_dir``, else the source folder or its parent);
    files in no list are skipped (the filter drops repeated/faulty excerpts). Without lists: a seeded
    80/10/10 split per genre (``seed``). Labels ``{"genre": g}``, tags ``[g]``; no captions.
    Audio: the file found (``{genre}/{name}``).
    """
    source = os.path.abspath(job.source)
    if not os.path.isdir(source):
        raise ManifestError(f"{job.source}: GTZAN source must be a folder (genres/<genre>/...)")
    root, found = _gtzan_root(source)

    lists: dict[str, str] | None = None
    assigned: dict[str, str] = {}
    search = [split_dir] if split_dir else [source, root, os.path.dirname(source)]
    for folder in search:
        if folder and os.path.exists(os.path.join(folder, _GTZAN_LISTS["train"])):
            lists = {}
            for split, fname in _GTZAN_LISTS.items():
                list_path = os.path.join(folder, fname)
                if not os.path.exists(list_path):
                    raise ManifestError(f"{list_path}: missing GTZAN split list (the other lists are in {folder})")
                with _open_text(list_path) as f:
                    for line in f:
                        if line.strip():
                            lists[os.path.splitext(os.path.basename(line.strip()))[0]] = split
            break
    if split_dir and lists is None:
        raise ManifestError(f"{os.path.join(split_dir, _GTZAN_LISTS['train'])}: cannot open GTZAN split list")

    for genre, names in found.items():
        valid = []
        for name in names:
            m = _GTZAN_FILE.match(name)
            if not m or m.group(1) != genre:
                job.skip("file name does not match <genre>.000NN")
                continue
            valid.append(name)
        if lists is None:
            order = list(valid)
            random.Random(f"gtzan:{seed}:{genre}").shuffle(order)
            n_train, n_val = round(0.8 * len(order)), round(0.1 * len(order))
            assigned = {n: "train" for n in order[:n_train]}
            assigned.update({n: "val" for n in order[n_train : n_train + n_val]})
            assigned.update({n: "test" for n in order[n_train + n_val :]})
        for name in valid:
            stem = os.path.splitext(name)[0]
            split = lists.get(stem) if lists is not None else assigned[name]
            if split is None and not job.split:
                job.skip("not in the GTZAN split lists")
                continue
            fields = {"genre": genre, "name": name, "stem": stem}
            yield {
                "id": stem,
                "audio": job.audio(fields, "{genre}/{name}", root),
                "split": job.row_split(split),
                "tags": [genre],
                "labels": {"genre": genre},
            }


def nsynth(job: Job) -> Iterator[dict]:
    """NSynth ``nsynth-{train,valid,test}/examples.json``: ``{note_str: {instrument_family_str, pitch, ...}}``.

    Source followed: the NSynth dataset page (magenta; keys note, note_str, instrument, instrument_str,
    pitch, velocity, sample_rate, qualities, qualities_str, instrument_family(_str),
    instrument_source(_str); audio ``audio/<note_str>.wav``). Labels: instrument_family and
    instrument_source (strings), pitch and velocity (ints); tags: qualities_str. Split: ``split``, else
    the folder name (nsynth-train / nsynth-valid / nsynth-test). Audio root default: ``audio/`` next
    to examples.json.
    """
    path = job.source
    if os.path.isdir(path):
        path = os.path.join(path, "examples.json")
    job.source = path
    doc = _load_json(path)
    if not isinstance(doc, dict):
        raise ManifestError(
            f"{path}: expected a JSON object {{note_str: {{...}}}} (NSynth layout), found {type(doc).__name__}"
        )
    split = job.need_split(
        _split_from_name(os.path.dirname(os.path.abspath(path))), "its folder name (nsynth-train/valid/test)"
    )
    for key, r in doc.items():
        if not isinstance(r, dict):
            job.skip("example is not an object")
            continue
        note = _text(r.get("note_str")) or _text(key)
        missing = [
            k for k in ("instrument_family_str", "instrument_source_str", "pitch", "velocity") if r.get(k) is None
        ]
        if missing:
            job.skip(f"missing '{missing[0]}'")
            continue
        pitch, velocity = _number(r["pitch"]), _number(r["velocity"])
        if pitch is None or velocity is None:
            job.skip("invalid pitch/velocity")
            continue
        labels = {
            "instrument_family": _text(r["instrument_family_str"]),
            "instrument_source": _text(r["instrument_source_str"]),
            "pitch": int(pitch),
            "velocity": int(velocity),
        }
        fields = dict(r, note_str=note)
        yield {
            "id": note,
            "audio": job.audio(fields, "{note_str}.wav", os.path.join(job.source_dir, "audio")),
            "split": split,
            "tags": _string_list(r.get("qualities_str")),
            "labels": labels,
        }


def openmic(job: Job, *, partition: str = "split01", threshold: float = 0.5) -> Iterator[dict]:
    """OpenMIC-2018 ``openmic-2018-aggregated-labels.csv`` (sample_key, instrument, relevance, num_responses).

    Source followed: cosmir/openmic-2018 (README, ``examples/modeling-baseline.ipynb``): official
    partitions ``partitions/split01_train.csv`` / ``split01_test.csv`` (one sample_key per line, no
    header), audio ``audio/<first 3 chars>/<sample_key>.ogg``. Multi-label: ``labels.instruments`` (and
    tags) are the instruments with relevance >= ``threshold`` (0.5, the paper's majority vote);
    ``meta.relevance`` keeps every annotated instrument's score. Source: the CSV or the dataset folder.
    Split: ``split``, else the partition lists (keys in neither are skipped).
    """
    path = job.source
    if os.path.isdir(path):
        path = os.path.join(path, "openmic-2018-aggregated-labels.csv")
    job.source = path
    root = job.source_dir
    keys: dict[str, dict[str, float]] = {}
    for line, r in _csv_records(path, ("sample_key", "instrument", "relevance")):
        key, inst, rel = _text(r["sample_key"]), _text(r["instrument"]), _number(r["relevance"])
        if not key or not inst:
            job.skip("empty sample_key/instrument")
            continue
        if rel is None:
            job.skip("invalid relevance")
            continue
        keys.setdefault(key, {})[inst] = rel  # a later duplicate row wins

    membership: dict[str, str] = {}
    if not job.split:
        for split in ("train", "test"):
            list_path = os.path.join(root, "partitions", f"{partition}_{split}.csv")
            if not os.path.exists(list_path):
                raise ManifestError(
                    f"{list_path}: cannot open OpenMIC partition list (pass split= to label every clip)"
                )
            for _, record in _csv_lines(list_path):
                k = record[0].strip()
                if k and k != "sample_key":
                    membership[k] = split
    for key, scores in keys.items():
        split = job.split or membership.get(key)
        if split is None:
            job.skip(f"not in the {partition} partitions")
            continue
        positives = sorted(i for i, s in scores.items() if s >= threshold)
        fields = {"sample_key": key, "prefix": key[:3]}
        yield {
            "id": key,
            "audio": job.audio(fields, "{prefix}/{sample_key}.ogg", os.path.join(root, "audio")),
            "split": split,
            "tags": positives,
            "labels": {"instruments": positives},
            "meta": {"relevance": {i: round(scores[i], 6) for i in sorted(scores)}},
        }


_FMA_SPLITS = {"training": "train", "validation": "val", "test": "test"}
_FMA_SUBSETS = {"small": 0, "medium": 1, "large": 2, "full": 2}


def fma(job: Job, *, subset: str | None = None) -> Iterator[dict]:
    """FMA ``fma_metadata/tracks.csv``: two header rows (``track,genre_top``, ``set,split``, ``set,subset``...).

    Source followed: mdeff/fma ``utils.py`` (``pd.read_csv(..., index_col=0, header=[0, 1])``, so a
    third row holds the index name ``track_id``; ``get_audio_path``: ``<audio_dir>/<tid[:3]>/<tid>.mp3``
    with ``tid = '{:06d}'.format(track_id)``; set/split in training / validation / test; set/subset
    small / medium / large). ``subset`` keeps the tracks of that subset (small is inside medium is
    inside large). Labels ``{"genre_top": g}``, tags ``[g]``; tracks without genre_top are skipped.
    Audio root default: ``../fma_<subset>`` (``../fma_large`` without one) from the metadata folder;
    fields ``track_id``, ``tid`` (6 digits), ``folder`` (its first 3).
    """
    path = job.source
    if os.path.isdir(path):
        path = os.path.join(path, "tracks.csv")
    job.source = path
    if subset is not None and subset not in _FMA_SUBSETS:
        raise ValueError(f"fma: unknown subset {subset!r}; expected small, medium, large or full")
    lines = _csv_lines(path)
    try:
        (_, top), (sub_line, sub) = next(lines), next(lines)
    except StopIteration:
        raise ManifestError(
            f"{path}: expected the two FMA header rows (e.g. 'album,...' then 'comments,...')"
        ) from None
    width = len(top)
    _check_width(path, sub_line, sub, width)
    header, last = [], ""
    for t, s in zip(top, sub):
        last = t.strip() or last
        header.append(f"{last}/{s.strip()}" if s.strip() else last)
    need = {}
    for column in ("track/genre_top", "set/split", "set/subset"):
        if column not in header:
            raise _missing_column(path, column, header)
        need[column] = header.index(column)
    root = os.path.join(os.path.dirname(job.source_dir), f"fma_{'large' if subset in (None, 'full') else subset}")
    for line, record in lines:
        if record[0].strip() == "track_id" and not any(c.strip() for c in record[1:]):
            continue  # the index-name row pandas writes
        _check_width(path, line, record, width)
        tid_text = record[0].strip()
        if not tid_text.isdigit():
            job.skip("invalid track_id")
            continue
        tid = int(tid_text)
        rank = _FMA_SUBSETS.get(record[need["set/subset"]].strip())
        if subset is not None and (rank is None or rank > _FMA_SUBSETS[subset]):
            job.skip(f"not in the {subset} subset")
            continue
        split = _FMA_SPLITS.get(record[need["set/split"]].strip())
        if split is None and not job.split:
            job.skip("invalid set/split")
            continue
        genre = record[need["track/genre_top"]].strip()
        if not genre:
            job.skip("empty track/genre_top")
            continue
        fields = {"track_id": tid, "tid": f"{tid:06d}", "folder": f"{tid:06d}"[:3]}
        yield {
            "id": f"{tid:06d}",
            "audio": job.audio(fields, "{folder}/{tid}.mp3", root),
            "split": job.row_split(split),
            "tags": [genre],
            "labels": {"genre_top": genre},
        }


# MINT's Table 1 (../shared/papers/mint.txt:69-84), verbatim: the input prompt of each dataset it trains
# or evaluates on; the output is the row's label (or caption). Rows of sets without a converter here
# (AudioSet, VGGSound, FSD50K, Music4All, FreeSound) are kept so their manifests can use the same text.
MINT_TABLE1 = {
    "AudioSet": "This is a sound of",
    "VGGSound": "This is a sound of",
    "Openmic": "Identify the instruments in this segment of music:",
    "FMALarge": "The genre of this music is",
    "NSynth": "The most prominent instrument in this music is",
    "FSD50K": "This is a sound of",
    "Music4All-key": "The key of this music is",
    "Music4All-genre": "The genre of this music is",
    "GTZAN": "The genre of this music is",
    "WavCaps": "Generate audio caption:",
    "FreeSound": "Generate audio caption:",
    "Clotho": "Generate audio caption:",
}
# Our formats -> (Table-1 row, the label key answered; None: the captions). The paper does not say
# which NSynth label it names (instrument_family here: its 11 classes are the usual NSynth
# instrument task) nor how several labels are joined (OpenMIC: ", " in alphabetical order).
MINT_FORMATS = {
    "gtzan": ("GTZAN", "genre"),
    "fma": ("FMALarge", "genre_top"),
    "nsynth": ("NSynth", "instrument_family"),
    "openmic": ("Openmic", "instruments"),
    "wavcaps": ("WavCaps", None),
    "clotho": ("Clotho", None),
}
MINT_DEFAULT = ("gtzan", "fma", "nsynth", "openmic")  # label-only sets: their pairs are written by default


def mint_pairs(fmt: str, row: dict) -> list[dict]:
    """MINT's instruction/answer pairs of a converted row: the Table-1 prompt of its dataset and
    the label as written (a caption set: one pair per caption). An OpenMIC clip with no instrument
    above the threshold answers "none" (the paper does not say; every test clip needs a pair)."""
    dataset, key = MINT_FORMATS[fmt]
    prompt = MINT_TABLE1[dataset]
    if key is None:
        answers = list(row.get("captions", []))
    else:
        value = (row.get("labels") or {}).get(key)
        if isinstance(value, list):
            answers = [", ".join(str(v) for v in value) or "none"]
        else:
            answers = [] if value is None else [str(value)]
    return [{"instruction": prompt, "answer": a} for a in answers if a]


CONVERTERS: dict[str, Converter] = {
    "musiccaps": musiccaps,
    "song-describer": song_describer,
    "youtube8m-musictextclips": youtube8m_musictextclips,
    "lp-musiccaps": lp_musiccaps,
    "musicinstruct": musicinstruct,
    "musicqa": musicqa,
    "clotho": clotho,
    "audiocaps": audiocaps,
    "wavcaps": wavcaps,
    "gtzan": gtzan,
    "nsynth": nsynth,
    "openmic": openmic,
    "fma": fma,
}


# --------------------------------------------------------------------------------------------------
# Grouping rows that describe one clip, and the entry point


def _merge(old: Any, new: Any, key: str = "") -> Any:
    if isinstance(old, list) and isinstance(new, list):
        return _unique(old + new) if key == "tags" else old + new
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for k, v in new.items():
            out[k] = _merge(out[k], v, k) if k in out else v
        return out
    return old


def _collect(job: Job, rows: Iterable[dict]) -> list[dict]:
    """One row per id: rows repeating an id for the same audio and split add their captions/qa/tags."""
    by_id: dict[str, dict] = {}
    for row in rows:
        old = by_id.get(row["id"])
        if old is None:
            by_id[row["id"]] = row
            continue
        same = all(old.get(k) == row.get(k) for k in ("audio", "start", "end", "split"))
        if not same:
            job.skip("duplicate id with different audio or split")
            continue
        for key, value in row.items():
            if key not in ("id", "audio", "start", "end", "split"):
                old[key] = _merge(old[key], value, key) if key in old else value
    out = []
    for row in by_id.values():
        for key in ("captions", "qa", "tags", "labels", "meta"):
            if key in row and not row[key]:
                del row[key]
        out.append(row)
    return out


def convert(
    fmt: str,
    source: str,
    output: str,
    audio_root: str | None = None,
    audio_pattern: str | None = None,
    split: str | None = None,
    mint_qa: bool | None = None,
    **options: Any,
) -> dict:
    """Convert a published metadata file/folder to a bridgebench manifest; returns counts {"rows": N, "skipped": M, "reasons": {...}}.

    ``fmt`` is a key of ``CONVERTERS``; ``options`` are that converter's keyword options (see its
    docstring). ``mint_qa`` adds MINT's Table-1 instruction/answer pairs (``mint_pairs``) to each
    clip's ``qa``; default: on for the label-only sets (GTZAN, FMA, NSynth, OpenMIC), off for the
    caption sets, whose captions serve ``task: caption`` with the same instruction. The manifest is
    written atomically with ``write_manifest``; its folder is created.
    """
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(CONVERTERS)}")
    if mint_qa is None:
        mint_qa = fmt in MINT_DEFAULT
    if mint_qa and fmt not in MINT_FORMATS:
        raise ValueError(f"{fmt}: MINT's Table 1 has no template for this dataset; mint_qa needs one of "
                         f"{', '.join(MINT_FORMATS)}")
    fn = CONVERTERS[fmt]
    try:
        inspect.signature(fn).bind(None, **options)
    except TypeError:
        allowed = [p for p in inspect.signature(fn).parameters if p != "job"]
        unknown = sorted(set(options) - set(allowed))
        raise ValueError(
            f"{fmt}: unknown option(s) {', '.join(unknown)}; options: {', '.join(allowed) or 'none'}"
        ) from None
    if not os.path.exists(source):
        raise ManifestError(f"{source}: cannot open (No such file or directory)")
    out_dir = os.path.dirname(os.path.abspath(output))
    job = Job(
        fmt=fmt,
        source=source,
        out_dir=out_dir,
        audio_root=audio_root,
        audio_pattern=audio_pattern,
        split=_normalize_split(split) if split else None,
    )
    rows = _collect(job, fn(job, **options))
    if mint_qa:
        for row in rows:
            pairs = mint_pairs(fmt, row)
            if pairs:
                row["qa"] = row.get("qa", []) + pairs
    os.makedirs(out_dir, exist_ok=True)
    write_manifest(output, rows)
    reasons = dict(sorted(job.reasons.items()))
    return {"rows": len(rows), "skipped": sum(reasons.values()), "reasons": reasons}


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridgebench.datamodules.convert",
        description="Convert published dataset metadata to a bridgebench JSON Lines manifest.",
    )
    parser.add_argument("format", choices=sorted(CONVERTERS))
    parser.add_argument("source", help="the published metadata file or folder")
    parser.add_argument("output", help="manifest to write (.jsonl)")
    parser.add_argument("--audio-root", help="folder holding the audio files")
    parser.add_argument("--audio-pattern", help='file name pattern over the row fields, e.g. "{ytid}.wav"')
    parser.add_argument("--split", help="label every clip with this split")
    parser.add_argument("--mint-qa", action=argparse.BooleanOptionalAction, default=None,
                        help="add MINT's Table-1 instruction/answer pairs (default: on for gtzan, fma, nsynth, "
                             "openmic; off for the caption sets)")
    parser.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="converter option (value parsed as JSON when it is JSON), e.g. -o columns=caption_writing",
    )
    args = parser.parse_args(argv)
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = _option_value(value)
    ensure_file_target(args.output, "output")
    try:
        counts = convert(
            args.format, args.source, args.output, args.audio_root, args.audio_pattern, args.split,
            mint_qa=args.mint_qa, **options
        )
    except ManifestError:
        raise
    except ValueError as err:  # a converter option or pattern that cannot be used
        raise ConfigError(str(err)) from None
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
