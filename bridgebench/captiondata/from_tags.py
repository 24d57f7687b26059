"""LP-MusicCaps: captions from tags (``captions from-tags``) and their table-2 scores (``captions eval``).

``from-tags`` turns each manifest row's ``tags`` into a caption, either with a language model and
one of LP-MusicCaps' four task instructions (``writing``, ``summary``, ``paraphrase``,
``attribute_prediction``) or with one of its two baselines without a model (``tag_concat``: the
tags joined by commas; ``template``: "the music is characterized by {tags}"). The output is a
manifest: each row is the input row with ``captions`` replaced by the generated caption, the
originals kept as ``source_captions``, and ``generation`` recording the method, model, prompt set,
shuffle seed and decoding settings. Attribute prediction must answer with a Python dictionary
``{"new_attribute": [...], "description": "..."}``: the description is the caption and the new
attributes are kept as ``new_attributes``; an answer that does not parse is not a caption, so
the row goes to ``<out>.skipped.jsonl`` with the answer and the reason, and is counted.

Two prompt sets (``prompts``), because the paper and the released code word them differently:

* ``code`` (default): ``lpmc/llm_captioning/generate.py`` of seungheondoh/lp-music-caps, which made
  the released captions: lower-case instructions ("summarize", "Don't write artist name or album
  name."), a singular variant for a clip with one tag, and the query ``instruction \n tags`` (one
  space either side of the newline);
* ``paper``: §2.2's capitalised wording, always plural, the tags after one space.

Rows without tags are skipped and counted (``no_tags``), as their code skips them. The baselines
shuffle each clip's tags before joining, as their ``eval.py`` does; theirs is unseeded, ours draws
from ``random.Random`` seeded by ``(seed, row id)``, so a row's order is the same in every run, batch
size and resume, and ``generation.shuffle_seed`` records the seed (``shuffle=False`` keeps the stored
order, recorded as ``null``). Order matters to BLEU and ROUGE-L, which is why the seed is kept.

Generation is batched (left padding for decoder-only models, whose chat template is used when
the tokenizer has one) and resumable: rows already in the output or the skipped file are not
generated again, and each batch is appended and flushed before the next starts (a torn last line
from a crash is dropped on restart). A rerun into the same file with another method, model,
prompt set or shuffle seed is refused.

``eval`` scores a generated manifest against its ``source_captions`` the way LP-MusicCaps' table 2
does (``lp-musiccaps`` metric mode: BLEU-1..4, METEOR, ROUGE-L, BERTScore, average length; with
``train_manifest``, vocabulary size and novel vocabulary/captions against the training-split
captions, as their ``eval.py`` counts them, including its cut of both lists to the shorter one),
and, when rows carry music-synth ``labels``, the share of captions that name each true attribute.
Without a training manifest the novelty figures are unavailable rather than counted against the
references the captions are scored on.
"""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path
from typing import Optional

from bridgebench.captiondata.jsonl import append_jsonl, open_output, pending_rows, read_rows, relocated
from bridgebench.errors import ConfigError, ManifestError

PAPER_INSTRUCTIONS = {  # LP-MusicCaps §2.2; the tags follow the instruction after a space
    "writing": "Write a song description sentence including the following attributes.",
    "summary": ("Write a single sentence that summarizes a song with the following attributes. "
                "Don't write the artist name or album name."),
    "paraphrase": ("Write a song description sentence including the following attributes. "
                   "Creative paraphrasing is acceptable."),
    "attribute_prediction": (
        "Write the answer as a Python dictionary with new_attribute and description as keys. For "
        "new_attribute, write new attributes that show high co-occurrence with the following attributes. "
        "For description, write a song description sentence including the following attributes and new "
        "attributes."),
}
# generate.py of the released code: (one tag, several tags) per task, wording as they wrote it
CODE_INSTRUCTIONS = {
    "writing": ("write a song description sentence including the following single attribute.",
                "write a song description sentence including the following attributes."),
    "summary": ("write a single sentence that summarize a song with the following single attribute. "
                "Don't write artist name or album name.",
                "write a single sentence that summarize a song with the following attributes. "
                "Don't write artist name or album name."),
    "paraphrase": ("write a song description sentence including the following single attribute. "
                   "creative paraphrasing is acceptable.",
                   "write a song description sentence including the following attributes. "
                   "creative paraphrasing is acceptable."),
    "attribute_prediction": (
        "write the answer as a python dictionary with new_attribute and description as keys. for "
        "new_attribute, write new attributes with high co-occurrence with the following single attribute. "
        "for description, write a song description sentence including the single attribute and new attribute.",
        "write the answer as a python dictionary with new_attribute and description as keys. for "
        "new_attribute, write new attributes with high co-occurrence with the following attributes. for "
        "description, write a song description sentence including the following attributes and new attributes."),
}
INSTRUCTIONS = PAPER_INSTRUCTIONS  # the task names
PROMPT_SETS = ("code", "paper")
BASELINES = ("tag_concat", "template")
METHODS = tuple(INSTRUCTIONS) + BASELINES
TEMPLATE = "the music is characterized by {tags}"  # LP-MusicCaps' prompt-template baseline (footnote 2)


class MalformedAnswer(ValueError):
    """An attribute-prediction answer without a usable dictionary."""


def query(method: str, tags: list[str], prompts: str = "code") -> str:
    """The text the LM is given for one clip's tags (see the module docstring for the two sets)."""
    text = ", ".join(tags)
    if prompts == "paper":
        return f"{PAPER_INSTRUCTIONS[method]} {text}"
    singular, plural = CODE_INSTRUCTIONS[method]
    return f"{singular if len(tags) == 1 else plural} \n {text}"


def shuffled(tags: list[str], seed: Optional[int], row_id) -> list[str]:
    """The tags in a per-row random order (stored order when ``seed`` is None). The generator is
    seeded by seed and row id only, so the order does not depend on batching or resuming."""
    out = list(tags)
    if seed is not None:
        random.Random(f"{seed}/{row_id}").shuffle(out)
    return out


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
              limit: Optional[int] = None, splits: Optional[list[str]] = None, prompts: str = "code",
              seed: int = 0, shuffle: bool = True) -> dict[str, int]:
    """Write pseudo-captions for the rows of ``manifest`` into ``out``; returns counts. ``prompts``:
    the instruction set (``code`` or ``paper``); ``seed``/``shuffle``: the baselines' tag order."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if prompts not in PROMPT_SETS:
        raise ConfigError(f"--prompts {prompts!r}: choose one of {', '.join(PROMPT_SETS)}")
    if method in INSTRUCTIONS and captioner is None:
        raise ConfigError(f"--method {method} needs --model (a causal or seq2seq LM)")
    src, rows = read_rows(manifest)
    for row in rows:
        check_tags(row, src)
    counts = {"rows": len(rows), "no_tags": 0, "done_before": 0, "written": 0, "malformed": 0}
    if method in BASELINES:
        shuffle_seed = seed if shuffle else None
        settings = {"method": method, "model": None, "shuffle_seed": shuffle_seed}
        same = ("method", "model", "shuffle_seed")
    else:
        settings = {"method": method, "prompts": prompts, **captioner.settings}
        same = ("method", "model", "prompts")
    out_path, skipped_path, done = open_output(out, ".skipped.jsonl", settings, same)
    todo = pending_rows(rows, done, counts, splits, limit, need="tags")
    audio_root = src.parent.resolve()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        if method in BASELINES:
            answers = [baseline_caption(method, shuffled(r["tags"], shuffle_seed, r["id"])) for r in chunk]
        else:
            answers = captioner([query(method, r["tags"], prompts) for r in chunk])
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


def training_captions(train_manifest: str) -> list[str]:
    """The captions of a manifest's training rows (every row when none names a split), in file
    order: LP-MusicCaps counts novelty against the training split's ground-truth captions."""
    _, rows = read_rows(train_manifest)
    if any(r.get("split") for r in rows):
        rows = [r for r in rows if r.get("split") == "train"]
    texts = [c for r in rows for c in (r.get("captions") or []) if isinstance(c, str) and c.strip()]
    if not texts:
        raise ManifestError(f"{train_manifest}: no training captions (rows with split 'train' and 'captions')")
    return texts


def evaluate(path: str, modes: tuple[str, ...] = ("lp-musiccaps",), train_manifest: Optional[str] = None) -> dict:
    """Table-2 style scores of generated captions against their source captions; novelty against
    the captions of ``train_manifest`` (unavailable without one)."""
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
    train = training_captions(train_manifest) if train_manifest else None
    out: dict = {"rows": len(rows)}
    for mode in modes:
        out.update(caption_metrics(preds, refs, mode=mode, train_captions=train))
    if all("labels" in r for r in rows):
        try:
            out.update(attribute_accuracy([{"prediction": p, "labels": r["labels"]} for p, r in zip(preds, rows)],
                                          "music-synth"))
        except (ConfigError, KeyError, TypeError):  # labels of another vocabulary: no attribute scores
            pass
    return out
