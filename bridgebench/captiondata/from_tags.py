"""LP-MusicCaps: captions from tags (``captions from-tags``) and their table-2 scores (``captions eval``).

``from-tags`` turns each manifest row's ``tags`` into a caption, either with a language model and
one of LP-MusicCaps' four task instructions (``writing``, ``summary``, ``paraphrase``,
``attribute_prediction``; paper §2.2, wording verbatim) or with one of its two baselines without a
model (``tag_concat``: the tags joined by commas; ``template``: "the music is characterized by
{tags}"). The output is a manifest: each row is the input row with ``captions`` replaced by the
generated caption, the originals kept as ``source_captions``, and ``generation`` recording the
method, model and decoding settings. Attribute prediction must answer with a Python dictionary
``{"new_attribute": [...], "description": "..."}``: the description is the caption and the new
attributes are kept as ``new_attributes``; an answer that does not parse is not a caption, so
the row goes to ``<out>.skipped.jsonl`` with the answer and the reason, and is counted.

Generation is batched (left padding for decoder-only models, whose chat template is used when
the tokenizer has one) and resumable: rows already in the output or the skipped file are not
generated again, and each batch is appended and flushed before the next starts (a torn last line
from a crash is dropped on restart).

``eval`` scores a generated manifest against its ``source_captions`` the way LP-MusicCaps' table 2
does (``lp-musiccaps`` metric mode: BLEU-1..4, METEOR, ROUGE-L, BERTScore, vocabulary size, novel
vocabulary against the source captions, average length), and, when rows carry music-synth
``labels``, the share of captions that name each true attribute.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Optional

from bridgebench.captiondata.jsonl import append_jsonl, open_output, pending_rows, read_rows, relocated
from bridgebench.errors import ConfigError, ManifestError

INSTRUCTIONS = {  # LP-MusicCaps §2.2; the tags follow the instruction
    "writing": "Write a song description sentence including the following attributes. {tags}",
    "summary": ("Write a single sentence that summarizes a song with the following attributes. "
                "Don't write the artist name or album name. {tags}"),
    "paraphrase": ("Write a song description sentence including the following attributes. "
                   "Creative paraphrasing is acceptable. {tags}"),
    "attribute_prediction": (
        "Write the answer as a Python dictionary with new_attribute and description as keys. For "
        "new_attribute, write new attributes that show high co-occurrence with the following attributes. "
        "For description, write a song description sentence including the following attributes and new "
        "attributes. {tags}"),
}
BASELINES = ("tag_concat", "template")
METHODS = tuple(INSTRUCTIONS) + BASELINES
TEMPLATE = "the music is characterized by {tags}"  # LP-MusicCaps' prompt-template baseline (footnote 2)


class MalformedAnswer(ValueError):
    """An attribute-prediction answer without a usable dictionary."""


def baseline_caption(method: str, tags: list[str]) -> str:
    joined = ", ".join(tags)
    return joined if method == "tag_concat" else TEMPLATE.format(tags=joined)


def parse_attribute_answer(text: str) -> tuple[list[str], str]:
    """(new attributes, description) from an attribute-prediction answer; MalformedAnswer if none."""
    start = text.find("{")
    if start < 0:
        raise MalformedAnswer("no dictionary in the answer")
    depth, end = 0, None
    for i, ch in enumerate(text[start:], start):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            end = i + 1
            break
    if end is None:
        raise MalformedAnswer("unclosed dictionary")
    snippet = text[start:end]
    value = None
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(snippet)
            break
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    if not isinstance(value, dict):
        raise MalformedAnswer("the dictionary does not parse")
    description = value.get("description")
    if not isinstance(description, str) or not description.strip():
        raise MalformedAnswer("no 'description' string")
    new = value.get("new_attribute", value.get("new_attributes", []))
    if isinstance(new, str):
        new = [t.strip() for t in new.split(",") if t.strip()]
    if not isinstance(new, (list, tuple)) or not all(isinstance(t, str) for t in new):
        raise MalformedAnswer("'new_attribute' is not a list of strings")
    return list(new), description.strip()


def check_tags(row: dict, src: Path) -> None:
    """A row's ``tags``: absent or an empty list (the row is skipped and counted), else a list of
    non-empty texts; anything else is an error naming the file and line."""
    tags = row.get("tags")
    where = f"{src}:{row.get('_line', '?')}"
    if tags is None:
        return
    if not isinstance(tags, list):
        raise ManifestError(f"{where}: 'tags' is {type(tags).__name__}, not a list of texts")
    bad = [t for t in tags if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ManifestError(f"{where}: tag {bad[0]!r} is not a non-empty text")


def from_tags(manifest: str, out: str, method: str, captioner=None, batch_size: int = 8,
              limit: Optional[int] = None, splits: Optional[list[str]] = None) -> dict[str, int]:
    """Write pseudo-captions for the rows of ``manifest`` into ``out``; returns counts."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if method in INSTRUCTIONS and captioner is None:
        raise ConfigError(f"--method {method} needs --model (a causal or seq2seq LM)")
    src, rows = read_rows(manifest)
    for row in rows:
        check_tags(row, src)
    counts = {"rows": len(rows), "no_tags": 0, "done_before": 0, "written": 0, "malformed": 0}
    settings = {"method": method, **(captioner.settings if method in INSTRUCTIONS else {"model": None})}
    out_path, skipped_path, done = open_output(out, ".skipped.jsonl", settings, ("method", "model"))
    todo = pending_rows(rows, done, counts, splits, limit, need="tags")
    audio_root = src.parent.resolve()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        tag_text = [", ".join(r["tags"]) for r in chunk]
        if method in BASELINES:
            answers = [baseline_caption(method, r["tags"]) for r in chunk]
        else:
            answers = captioner([INSTRUCTIONS[method].format(tags=t) for t in tag_text])
        written, skipped = [], []
        for row, answer in zip(chunk, answers, strict=True):
            new_row = relocated(row, audio_root, out_path.parent)
            caption, extra = answer, {}
            if method == "attribute_prediction":
                try:
                    extra["new_attributes"], caption = parse_attribute_answer(answer)
                except MalformedAnswer as err:
                    skipped.append({"id": row["id"], "reason": str(err), "answer": answer})
                    continue
            if not caption.strip():
                skipped.append({"id": row["id"], "reason": "empty answer", "answer": answer})
                continue
            new_row.update(captions=[caption], source_captions=row.get("captions", []), generation=settings, **extra)
            written.append(new_row)
        append_jsonl(out_path, written)
        append_jsonl(skipped_path, skipped)
        counts["written"] += len(written)
        counts["malformed"] += len(skipped)
        print(f"[captions] {method}: {counts['done_before'] + counts['written'] + counts['malformed']}"
              f"/{counts['done_before'] + len(todo)} rows", flush=True)
    return counts


def evaluate(path: str, modes: tuple[str, ...] = ("lp-musiccaps",)) -> dict:
    """Table-2 style scores of generated captions against their source captions."""
    from bridgebench.evaluation.attributes import attribute_accuracy
    from bridgebench.evaluation.text import caption_metrics

    _, rows = read_rows(path)
    rows = [r for r in rows if r.get("source_captions")]
    if not rows:
        raise ManifestError(f"{path}: no rows with source_captions to score against (not written by from-tags?)")
    for r in rows:
        if not isinstance(r.get("captions"), list) or not r["captions"] or not isinstance(r["captions"][0], str):
            raise ManifestError(f"{path}:{r['_line']}: 'captions' must be a list holding the generated caption")
    preds = [r["captions"][0] for r in rows]
    refs = [r["source_captions"] for r in rows]
    out: dict = {"rows": len(rows)}
    for mode in modes:
        # Novel vocabulary is counted against the source captions (the ground truth the LM never saw).
        out.update(caption_metrics(preds, refs, mode=mode, train_captions=[c for r in refs for c in r]))
    if all("labels" in r for r in rows):
        try:
            out.update(attribute_accuracy([{"prediction": p, "labels": r["labels"]} for p, r in zip(preds, rows)],
                                          "music-synth"))
        except (ConfigError, KeyError, TypeError):  # labels of another vocabulary: no attribute scores
            pass
    return out
