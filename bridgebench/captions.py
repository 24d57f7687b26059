"""``python -m bridgebench captions from-tags|refine|eval``: caption data from language models.

``refine`` is the AudioSetCaps pipeline (audio-language model answers, LLM merge, contrastive
refinement); it lives in ``bridgebench.refine``. The rest of this module is LP-MusicCaps.

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

import argparse
import ast
import json
import os
import sys
from pathlib import Path
from typing import Optional

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


class TagCaptioner:
    """A causal or seq2seq LM that answers instructions in batches (greedy or sampled)."""

    def __init__(self, model: str, gguf_file: Optional[str] = None, max_new_tokens: int = 96,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 repetition_penalty: float = 1.0):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from bridgebench.paths import resolve_pretrained

        path = resolve_pretrained(model, "--model", family="llama")  # "tiny": the tiny random LLaMA
        kw = {"gguf_file": gguf_file} if gguf_file else {}
        config = AutoConfig.from_pretrained(path, **kw)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = cls.from_pretrained(path, **kw).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right" if self.seq2seq else "left"
        self.settings = {"model": model, "gguf_file": gguf_file, "max_new_tokens": max_new_tokens,
                         "do_sample": do_sample, "temperature": temperature, "top_p": top_p, "seed": seed,
                         "repetition_penalty": repetition_penalty}
        self.torch = torch

    def prompt(self, instruction: str) -> str:
        tok = self.tokenizer
        if not self.seq2seq and getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                           add_generation_prompt=True)
        return instruction

    def __call__(self, instructions: list[str], seed: Optional[int] = None, do_sample: Optional[bool] = None) -> list[str]:
        """Answers; ``seed``/``do_sample`` override the settings for this call (a retry that must
        differ from the first answer samples with another seed)."""
        torch, s = self.torch, self.settings
        sample = s["do_sample"] if do_sample is None else do_sample
        batch = self.tokenizer([self.prompt(i) for i in instructions], return_tensors="pt", padding=True,
                               add_special_tokens=self.seq2seq)
        torch.manual_seed(s["seed"] if seed is None else seed)
        kw = dict(max_new_tokens=s["max_new_tokens"], do_sample=sample,
                  pad_token_id=self.tokenizer.pad_token_id, repetition_penalty=s["repetition_penalty"])
        if sample:
            kw.update(temperature=s["temperature"], top_p=s["top_p"])
        with torch.no_grad():
            out = self.model.generate(**batch, **kw)
        if not self.seq2seq:
            out = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def _done_ids(*paths: Path) -> set[str]:
    """ids already written; a torn last line (a crash mid-write) is cut off the file."""
    done: set[str] = set()
    for path in paths:
        if not path.exists():
            continue
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        good = []
        for line in lines:
            try:
                done.add(str(json.loads(line)["id"]))
                good.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                break  # only the last line can be torn: stop there
        if len(good) < len(lines) or (good and not good[-1].endswith("\n")):
            path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in good), encoding="utf-8")
    return done


def _append(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(manifest: str) -> tuple[Path, list[dict]]:
    """(path, rows) of a JSONL manifest or a ``builtin:`` set (generated if needed)."""
    if manifest.startswith("builtin:"):
        from bridgebench.datamodules.fixtures import BUILTINS

        if manifest not in BUILTINS:
            raise SystemExit(f"error: unknown built-in set {manifest!r}; known: {', '.join(BUILTINS)}")
        manifest = str(BUILTINS[manifest]())
    src = Path(manifest)
    if not src.is_file():
        raise SystemExit(f"error: manifest not found: {src}")
    rows = []
    with open(src, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise SystemExit(f"error: {src}:{n}: not JSON ({err.msg})") from None
    for n, row in enumerate(rows, 1):
        if "id" not in row:
            raise SystemExit(f"error: {src}: row {n} has no 'id'")
    return src, rows


def relocated(row: dict, audio_root: Path, out_dir: Path) -> dict:
    """A copy of ``row`` whose relative audio path (relative to ``audio_root``, the input
    manifest's folder) stays valid from ``out_dir``, where the output manifest is written."""
    new_row = dict(row)
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


def from_tags(manifest: str, out: str, method: str, captioner=None, batch_size: int = 8,
              limit: Optional[int] = None, splits: Optional[list[str]] = None) -> dict[str, int]:
    """Write pseudo-captions for the rows of ``manifest`` into ``out``; returns counts."""
    if method not in METHODS:
        raise SystemExit(f"error: --method {method!r}: choose one of {', '.join(METHODS)}")
    if method in INSTRUCTIONS and captioner is None:
        raise SystemExit(f"error: --method {method} needs --model (a causal or seq2seq LM)")
    src, rows = read_rows(manifest)
    counts = {"rows": len(rows), "no_tags": 0, "done_before": 0, "written": 0, "malformed": 0}
    out_path, skipped_path = Path(out), Path(str(out) + ".skipped.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = _done_ids(out_path, skipped_path)
    todo = pending_rows(rows, done, counts, splits, limit, need="tags")
    settings = {"method": method, **(captioner.settings if method in INSTRUCTIONS else {"model": None})}
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
        _append(out_path, written)
        _append(skipped_path, skipped)
        counts["written"] += len(written)
        counts["malformed"] += len(skipped)
        print(f"[captions] {method}: {counts['done_before'] + counts['written'] + counts['malformed']}"
              f"/{counts['done_before'] + len(todo)} rows", flush=True)
    return counts


def evaluate(path: str, modes: tuple[str, ...] = ("lp-musiccaps",)) -> dict:
    """Table-2 style scores of generated captions against their source captions."""
    from bridgebench.metrics import caption_metrics
    from bridgebench.module import attribute_accuracy

    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("source_captions")]
    if not rows:
        raise SystemExit(f"error: {path}: no rows with source_captions to score against")
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
        except Exception:  # noqa: BLE001 - labels of another vocabulary: no attribute scores
            pass
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridgebench captions", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("from-tags", help="generate captions from each row's tags")
    gen.add_argument("manifest", help="input manifest (JSONL rows with 'tags'), or builtin:music-synth")
    gen.add_argument("out", help="output manifest (JSONL); appended to and resumed")
    gen.add_argument("--method", required=True, choices=METHODS)
    gen.add_argument("--model", help="LM: hub id, folder, pkg:<package>, or tiny (a tiny random LLaMA, for "
                     "trying the pipeline); needed by the four instructions")
    gen.add_argument("--gguf-file", help="GGUF file inside --model (e.g. SmolLM2-135M-Instruct.Q4_1.gguf)")
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument("--max-new-tokens", type=int, default=96)
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0,
                     help="> 1 discourages repeats (small LMs loop under greedy decoding)")
    gen.add_argument("--limit", type=int, help="stop after this many rows in total (written earlier included)")
    gen.add_argument("--splits", nargs="*", help="only rows of these splits")
    ev = sub.add_parser("eval", help="score a generated manifest against its source captions (LP-MusicCaps table 2)")
    ev.add_argument("generated", nargs="+", help="manifests written by from-tags")
    ev.add_argument("--modes", nargs="*", default=["lp-musiccaps"], help="metric modes (see bridgebench.metrics)")
    from bridgebench.refine import add_arguments

    ref = sub.add_parser("refine", help="AudioSetCaps: captions from an audio-language model's answers, "
                                        "merged by an LLM and refined against the labels with a contrastive scorer")
    add_arguments(ref)
    opts = parser.parse_args(argv)
    if opts.command == "refine":
        from bridgebench.cli import quiet_libraries
        from bridgebench.refine import run_from_args

        quiet_libraries()
        print(json.dumps(run_from_args(opts)))
        return 0
    if opts.command == "from-tags":
        captioner = None
        if opts.method in INSTRUCTIONS:
            if not opts.model:
                raise SystemExit(f"error: --method {opts.method} needs --model")
            captioner = TagCaptioner(opts.model, opts.gguf_file, opts.max_new_tokens, opts.do_sample,
                                     opts.temperature, opts.top_p, opts.seed, opts.repetition_penalty)
        counts = from_tags(opts.manifest, opts.out, opts.method, captioner, opts.batch_size, opts.limit, opts.splits)
        print(json.dumps(counts))
        return 0
    table = []
    for path in opts.generated:
        scores = evaluate(path, tuple(opts.modes))
        table.append((Path(path).name, scores))
        print(json.dumps({"file": path, **scores}))
    keys = [k for k in table[0][1] if isinstance(table[0][1][k], (int, float))]
    print("| file | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, scores in table:
        print(f"| {name} | " + " | ".join(f"{scores.get(k):.4g}" if isinstance(scores.get(k), (int, float))
                                            else str(scores.get(k)) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
