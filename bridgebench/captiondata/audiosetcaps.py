"""``captions refine`` (default ``--mode released``): AudioSetCaps as its released pipeline runs it.

The released code (JishengBai/AudioSetCaps ``pipeline/``) differs from the paper's §3 prose, and
this mode follows the code; ``--mode gated`` keeps our earlier reading (``refine.py``). Steps:

1. **Audio-language model, one chat.** Three questions in one conversation, each seeing the
   earlier questions and answers: a description "within 50 words", then the speech details and the
   music details, each "only if ... present" (no separate yes/no gate). The three answers are
   assembled as ``Description: ...\\nSpeech: ...\\nMusic: ...``; when that text is shorter than 100
   or longer than 500 characters (prefixes and newlines counted, as theirs) the whole chat is asked
   again, at most ``alm_tries`` times in all, and the last attempt is kept whatever its length.
2. **Keyword filter.** The assembled text is read back line by line, as their merge script reads
   the file: line 1 is kept as is; line 2 is dropped when it contains "no speech", "does not" or
   "is not", line 3 when it contains "no music", "does not" or "is not" (case-sensitive
   substrings, so any negation drops the line). An answer holding a newline shifts the lines as it
   does in theirs.
3. **Merge.** An LLM gets their fixed system message and user message (the kept lines and the
   row's labels between braces, the two repeated rules, "Output your caption (Within 50 words):"),
   whitespace included; its answer is the caption, not cleaned.
4. **Score.** Caption and label text each have every punctuation character replaced by a space,
   then the shorter is repeated (no separator) up to, not beyond, the longer one's length, and
   both are scored against the audio by the contrastive model. A caption scoring at least the
   labels is kept. The merge is tried ``merge_tries`` times (theirs: 2); when no try beats the
   labels the LAST try's caption is kept: their loop resets its best-so-far score at every try, so
   the code keeps the last caption although it evidently meant to keep the best one; the code is
   followed. No row is discarded for its score.

Assumptions where the released models cannot run here: the ALM is a trained bridgebench run, which
has one instruction per clip, so the chat history is written into the instruction as text (each
earlier question and answer on its own line, then the new question) instead of Qwen-Audio-Chat's
chat template; a retried chat samples with the next seed (Qwen samples by default; a greedy run
would repeat itself). The merge LLM is any causal or seq2seq LM (theirs: Mistral through Ollama,
which samples by default): every try samples with ``seed + try - 1``. An empty merge answer (their
padding would divide by zero) counts as a failed try, and a row whose last try is empty goes to
``OUT.discarded.jsonl``. Rows without labels are skipped and counted, as in ``refine.py``.
"""

from __future__ import annotations

import io
import os
import string
from dataclasses import dataclass, replace
from typing import Callable, Optional

from bridgebench.captiondata.generator import TagCaptioner
from bridgebench.captiondata.jsonl import append_jsonl, open_output, pending_rows, read_rows, relocated
from bridgebench.captiondata.refine import RunALM, label_list, load_scorer
from bridgebench.errors import AudioError, ConfigError

TURNS = (  # Audiosetcaps_qwen_main.py, one conversation
    "Describe this audio according to the sounds in it within 50 words.",
    "Based on the QAs, give some information about the speech, such as the emotion of the speaker, the gender "
    "of the speaker, and the spoken language, only if speech is present in this audio.",
    "Based on the QAs, give some information about the music, such as music genre and music instruments, only "
    "if music is present in this audio.",
)
PREFIXES = ("Description: ", "Speech: ", "Music: ")
MIN_CHARS, MAX_CHARS = 100, 500  # inclusive bounds of an accepted assembled answer
SPEECH_DROP = ("no speech", "does not", "is not")
MUSIC_DROP = ("no music", "does not", "is not")
SYSTEM = ("I'm currently doing crowd-sourced labeling of audio data. I want you to act as a professional worker "
          "to write the final caption for the audio. The most important thing is to follow my instructions! "
          "Now, let's get started.")  # default_prompt.txt, no trailing newline
GAP = " " * 24  # their rules sit in a string continued over source lines, which keeps the indentation
RULES = ("My instructions:\n" + GAP
         + "Do not mention the specific content of speech! Do not mention the specific content of speech!" + GAP
         + "Do not output the ground truth labels in the caption! Do not output the ground truth labels in the caption!"
         + GAP + "\nOutput your caption (Within 50 words):")
METHOD = "audiosetcaps-released"


@dataclass
class ReleasedSettings:
    alm_tries: int = 2
    merge_tries: int = 2
    seed: int = 0


class ChatRunALM(RunALM):
    """A trained run asked with the chat history in its instruction; attempts after the first sample
    with the next seed, so a retried chat can come out differently."""

    def ask(self, audio: list[str], prompts: list[str], attempt: int = 1) -> list[str]:
        gen = self.module.gen
        if attempt > 1:
            self.module.gen = replace(gen, do_sample=True, seed=gen.seed + attempt - 1)
        try:
            return super().ask(audio, prompts)
        finally:
            self.module.gen = gen


def chat_instruction(history: list[tuple[str, str]], question: str) -> str:
    return "".join(f"{q}\n{a}\n" for q, a in history) + question


def assemble(answers: list[str]) -> str:
    return "\n".join(p + a for p, a in zip(PREFIXES, answers, strict=True))


def describe(alm, audio: list[str], settings: ReleasedSettings, counts: dict) -> list[dict]:
    """Per clip: the kept assembled answer and the number of chats it took."""
    out: list[dict] = [{} for _ in audio]
    pending = list(range(len(audio)))
    for attempt in range(1, settings.alm_tries + 1):
        if not pending:
            break
        if attempt > 1:
            counts["alm_retried"] = counts.get("alm_retried", 0) + len(pending)
        history: dict[int, list[tuple[str, str]]] = {i: [] for i in pending}
        for question in TURNS:
            replies = alm.ask([audio[i] for i in pending], [chat_instruction(history[i], question) for i in pending],
                              attempt)
            for i, reply in zip(pending, replies, strict=True):
                history[i].append((question, reply))
        for i in pending:
            out[i] = {"response": assemble([a for _, a in history[i]]), "attempts": attempt}
        pending = [i for i in pending if not MIN_CHARS <= len(out[i]["response"]) <= MAX_CHARS]
    counts["alm_out_of_range"] = counts.get("alm_out_of_range", 0) + len(pending)
    return out


def kept_lines(response: str, counts: Optional[dict] = None) -> tuple[str, str, str]:
    """The description, speech and music lines (each with its newline, the last without) after the
    keyword filter; a dropped line is ''."""
    lines = io.StringIO(response).readlines() + ["", "", ""]
    first, speech, music = lines[:3]
    if any(k in speech for k in SPEECH_DROP):
        speech = ""
        if counts is not None:
            counts["filtered_speech"] = counts.get("filtered_speech", 0) + 1
    if any(k in music for k in MUSIC_DROP):
        music = ""
        if counts is not None:
            counts["filtered_music"] = counts.get("filtered_music", 0) + 1
    return first, speech, music


def merge_prompt(lines: tuple[str, str, str], labels: str) -> str:
    return ("Details:\n1 Crowd-sourced workers:{" + "".join(lines) + "}\n"
            + "2 The ground truth labels:{" + labels + "}\n" + RULES)


def without_punctuation(text: str) -> str:
    return text.translate({ord(c): " " for c in string.punctuation})


def padded(texts: list[str]) -> list[str]:
    """Each text repeated as often as it fits into the longest one's length (CLAP sees texts of about
    equal length, so a short label is not favoured by its brevity)."""
    longest = max(map(len, texts))
    return [t * (longest // len(t)) if t else t for t in texts]


def scoring_texts(caption: str, labels: str) -> tuple[str, str]:
    cap, lab = padded([without_punctuation(caption), without_punctuation(labels)])
    return cap, lab


def merge_and_score(rows_audio: list[str], prompts: list[str], labels: list[str], generator, scorer,
                    settings: ReleasedSettings, counts: dict) -> list[dict]:
    """Per row: every try's caption and scores, and which try is kept."""
    result = [{"tries": [], "kept_try": None, "beat_labels": False} for _ in prompts]
    pending = list(range(len(prompts)))
    for try_ in range(1, settings.merge_tries + 1):
        if not pending:
            break
        answers = generator([prompts[i] for i in pending], seed=settings.seed + try_ - 1, do_sample=True,
                            system=SYSTEM)
        scored = [i for i, a in zip(pending, answers, strict=True) if a]
        texts = {i: scoring_texts(a, labels[i]) for i, a in zip(pending, answers, strict=True) if a}
        cap_scores = scorer.score([rows_audio[i] for i in scored], [texts[i][0] for i in scored]) if scored else []
        lab_scores = scorer.score([rows_audio[i] for i in scored], [texts[i][1] for i in scored]) if scored else []
        by_row = {i: (c, lab) for i, c, lab in zip(scored, cap_scores, lab_scores, strict=True)}
        for i, answer in zip(pending, answers, strict=True):
            cap_s, lab_s = by_row.get(i, (None, None))
            result[i]["tries"].append({"caption": answer, "caption_score": cap_s, "label_score": lab_s})
            result[i]["kept_try"] = try_  # the last try so far: kept unless a later one replaces it
            if cap_s is not None and cap_s >= lab_s:
                result[i]["beat_labels"] = True
        pending = [i for i in pending if not result[i]["beat_labels"]]
    for r in result:
        key = f"kept_try_{r['kept_try']}" if r["beat_labels"] else "kept_below_labels"
        if r["tries"][-1]["caption"]:
            counts[key] = counts.get(key, 0) + 1
    return result


def refine_released(manifest: str, out: str, alm, generator, scorer, settings: ReleasedSettings,
                    batch_size: int = 8, limit: Optional[int] = None, splits: Optional[list[str]] = None,
                    log: Callable[[str], None] = print) -> dict:
    """Run the released pipeline over ``manifest`` into ``out`` (+ ``out.discarded.jsonl`` for empty
    answers); returns counts."""
    if settings.alm_tries < 1 or settings.merge_tries < 1:
        raise ConfigError("--alm-tries and --merge-tries: each must be at least 1")
    src, rows = read_rows(manifest)
    out_path, discarded_path, done = open_output(out, ".discarded.jsonl", {"method": METHOD}, ("method",))
    counts = {"rows": len(rows), "done_before": 0, "kept": 0, "discarded": 0}
    in_splits = [r for r in rows if not splits or r.get("split") in splits]
    labelled = [r for r in in_splits if label_list(r)]
    counts["no_labels"] = len(in_splits) - len(labelled)
    todo = pending_rows(labelled, done, counts, limit=limit)
    audio_root = src.parent.resolve()
    record = {"method": METHOD, "alm": getattr(alm, "name", type(alm).__name__),
              "scorer": getattr(scorer, "name", type(scorer).__name__), **generator.settings,
              "alm_tries": settings.alm_tries, "merge_tries": settings.merge_tries, "keep": "last try"}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        audio = [str(audio_root / r["audio"]) if not os.path.isabs(str(r["audio"])) else r["audio"] for r in chunk]
        missing = [a for a in audio if not os.path.isfile(a)]
        if missing:
            raise AudioError(f"{src}: audio file not found: {missing[0]} (and {len(missing) - 1} more)")
        described = describe(alm, audio, settings, counts)
        labels = [", ".join(label_list(r)) for r in chunk]  # AudioSet's label field is comma-separated
        lines = [kept_lines(d["response"], counts) for d in described]
        prompts = [merge_prompt(x, lab) for x, lab in zip(lines, labels, strict=True)]
        merged = merge_and_score(audio, prompts, labels, generator, scorer, settings, counts)
        written, discarded = [], []
        for row, d, prompt, m in zip(chunk, described, prompts, merged, strict=True):
            last = m["tries"][-1]
            info = {"alm_response": d["response"], "alm_attempts": d["attempts"], "prompt": prompt,
                    "tries": m["tries"], "kept_try": m["kept_try"], "beat_labels": m["beat_labels"]}
            if not last["caption"]:
                discarded.append({"id": row["id"], "reason": "empty", **info})
                continue
            new_row = relocated(row, audio_root, out_path.parent)
            new_row.update(captions=[last["caption"]], source_captions=row.get("captions", []),
                           generation=record, refine=info)
            written.append(new_row)
        append_jsonl(out_path, written)
        append_jsonl(discarded_path, discarded)
        counts["kept"] += len(written)
        counts["discarded"] += len(discarded)
        log(f"[refine] {counts['done_before'] + counts['kept'] + counts['discarded']}/{counts['done_before'] + len(todo)}"
            f" rows: kept {counts['kept']} ({counts.get('kept_below_labels', 0)} below their labels)")
    return counts


def run_from_args(opts) -> dict:
    if opts.assume:  # the released chat has no presence gates to answer
        raise ConfigError("--assume: only --mode gated asks presence questions; the released pipeline has none")
    settings = ReleasedSettings(alm_tries=opts.alm_tries, merge_tries=opts.merge_tries, seed=opts.seed)
    alm = ChatRunALM(opts.alm, opts.device)
    scorer = load_scorer(opts.scorer, opts.device)
    generator = TagCaptioner(opts.model, opts.gguf_file, opts.max_new_tokens, True, opts.temperature, opts.top_p,
                             opts.seed, opts.repetition_penalty)
    return refine_released(opts.manifest, opts.out, alm, generator, scorer, settings, opts.batch_size, opts.limit,
                           opts.splits)
