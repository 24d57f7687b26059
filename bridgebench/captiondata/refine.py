"""``python -m bridgebench captions refine --mode gated``: our reading of AudioSetCaps' paper.

The default mode of ``refine`` is the released pipeline (``audiosetcaps.py``); this module keeps
the variant written from the paper's prose (../shared/papers/audiosetcaps.txt §3) before the code
was read, as an option, and holds the models both modes share (the run ALM, the scorers). It
differs from the code in the prompts, the yes/no gates, the rule checks, the number of tries and
in discarding a row whose caption stays below its labels (the code keeps one):

1. **Audio content extraction.** An audio-language model (ALM) answers a chain of short prompts,
   one at a time, because small ALMs ignore parts of long ones: the overall content in at most 50
   words; then the speech traits (emotion, gender, language) only if it says speech is present;
   then the music genre and instruments only if it says music is present. The ALM is a trained
   bridgebench run (``--alm RUN``). A presence question whose answer is neither yes nor no counts as
   *unclear*, which skips the steps it gates, and is counted; ``--assume speech_present=no`` answers
   a presence question from what is known of the set instead of asking (a caption-only ALM answers
   every question with a caption).
2. **Caption generation.** An LLM (``--model``, any causal or seq2seq LM) playing a professional
   annotator merges those answers and the row's ground-truth labels into one caption of at most
   ``--max-words`` words that does not quote speech or copy the labels.
3. **Refinement.** A contrastive audio-text model (``--scorer``: a trained stage-1 run, or a CLAP
   checkpoint through transformers) scores the caption and the labels against the audio. A caption
   scoring below its labels is discarded and regenerated, up to ``--rounds`` times in all; a caption
   that also breaks a rule the LLM was given (empty, too long, a quotation, the label list copied)
   is regenerated without being scored. Retries sample (``--temperature``, ``--top-p``) with a new
   seed each round, since greedy decoding would repeat the answer. A row still failing after the
   last round is written to ``OUT.discarded.jsonl`` with its last caption, scores and reason.

The output is a manifest: the input row with ``captions`` replaced by the kept caption, the
originals as ``source_captions``, ``generation`` (models and settings) and ``refine`` (the ALM's
answers, the round the caption was kept in, both scores). Rows in the output or the discarded file
are skipped on a restart, so an interrupted run resumes. Rows without labels (no ``tags`` and no
string ``labels``) cannot be refined and are skipped. The summary counts kept and discarded rows,
rows without labels, kept rows per round, rule failures by reason and unclear presence answers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch

from bridgebench.captiondata.generator import TagCaptioner
from bridgebench.captiondata.jsonl import append_jsonl, open_output, pending_rows, read_rows, relocated
from bridgebench.engine.evaluator import encode_texts
from bridgebench.engine.runs import audio_batch, caption_files, load_run
from bridgebench.errors import AudioError, ConfigError

CHAIN = (  # AudioSetCaps §3.1: overall content first, then speech and music only when present
    {"name": "content", "prompt": "Describe the audio content in no more than 50 words."},
    {"name": "speech_present", "prompt": "Is there human speech in this audio? Answer yes or no.", "gate": True},
    {"name": "speech", "prompt": "Describe the speech: the emotion, gender and language of the speaker.",
     "when": "speech_present"},
    {"name": "music_present", "prompt": "Is there music in this audio? Answer yes or no.", "gate": True},
    {"name": "music", "prompt": "What genre is the music, and which instruments are playing?",
     "when": "music_present"},
)

MERGE_PROMPT = (  # AudioSetCaps §3.2, in our words: role, importance of the rules, context, labels, limits
    "You are a professional audio caption annotator, and following these instructions exactly is "
    "critical. Here is what an audio model heard in a recording.\n{context}\n"
    "Reference labels: {labels}\n"
    "Write one caption of at most {max_words} words that describes what can be heard. Do not quote "
    "any speech and do not copy the reference labels word for word. Answer with the caption only."
)
CONTEXT_NAMES = {"content": "Audio content", "speech": "Speech", "music": "Music"}


class AudioLanguageModel(Protocol):
    def ask(self, audio: list[str], prompts: list[str]) -> list[str]: ...


class TextGenerator(Protocol):
    settings: dict

    def __call__(self, instructions: list[str], seed: Optional[int] = None,
                 do_sample: Optional[bool] = None) -> list[str]: ...


class AudioTextScorer(Protocol):
    name: str

    def score(self, audio: list[str], texts: list[str]) -> list[float]: ...


# === Models ===


class RunALM:
    """A trained bridgebench run (stage 2) answering prompts about audio files."""

    def __init__(self, run: str, device: str = "cpu", batch_size: int = 8):
        self.module, _ = load_run(run, device, option="--alm")
        if self.module.llm is None:
            raise ConfigError(f"--alm {run}: a stage-1 run has no language model; give a stage-2 run")
        self.name, self.batch_size = run, batch_size

    def ask(self, audio: list[str], prompts: list[str]) -> list[str]:
        return caption_files(self.module, audio, prompts, batch_size=self.batch_size)


class RunScorer:
    """Audio-text similarity from a trained stage-1 run: the ATC heads' cosine (max over queries)."""

    def __init__(self, run: str, device: str = "cpu", batch_size: int = 16):
        self.module, _ = load_run(run, device, option="--scorer")
        s1 = self.module.stage1
        if s1 is None or "atc" not in s1.objectives:
            raise ConfigError(f"--scorer {run}: the run has no audio-text contrastive (ATC) head; "
                              "give a stage-1 run trained with atc, or a CLAP checkpoint")
        self.name, self.batch_size = run, batch_size

    @torch.no_grad()
    def score(self, audio: list[str], texts: list[str]) -> list[float]:
        m, out = self.module, []
        for start in range(0, len(audio), self.batch_size):
            wave, mask = audio_batch(m, audio[start:start + self.batch_size])
            feats, fmask = m.encoder(wave.to(m.device), mask.to(m.device))
            a = m.stage1.encode_audio(m.bridge, feats.float(), fmask)
            _, _, t = encode_texts(m, texts[start:start + self.batch_size])
            sim = m.stage1.similarity(a, t)  # [B, B]; the pairs are on the diagonal
            out += sim.diagonal().float().cpu().tolist()
        return out


class ClapScorer:
    """Audio-text cosine similarity of a CLAP checkpoint (transformers ``ClapModel``; LAION's are on
    the hub as ``laion/clap-htsat-unfused`` etc.), as AudioSetCaps uses LAION-CLAP."""

    def __init__(self, name_or_path: str, device: str = "cpu", batch_size: int = 16):
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        from bridgebench.runtime.references import resolve_pretrained

        path = resolve_pretrained(name_or_path, "--scorer")
        self.model = ClapModel.from_pretrained(path).eval().to(device)
        self.features = ClapFeatureExtractor.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.name, self.device, self.batch_size = name_or_path, device, batch_size
        self.fusion = bool(self.model.config.audio_config.enable_fusion)

    @torch.no_grad()
    def score(self, audio: list[str], texts: list[str]) -> list[float]:
        from bridgebench.datamodules.audio import load_audio

        rate, fusion, out = self.features.sampling_rate, self.fusion, []
        for start in range(0, len(audio), self.batch_size):
            # Non-fusion checkpoints take one 10 s window: the first, cut here, since the extractor
            # would draw a random one (rand_trunc) and a score must not change between calls.
            clips = [load_audio(f, rate) if fusion else load_audio(f, rate)[: self.features.nb_max_samples]
                     for f in audio[start:start + self.batch_size]]
            inputs = self.features(clips, sampling_rate=rate, return_tensors="pt",
                                   truncation="fusion" if fusion else "rand_trunc")
            extra = {"is_longer": inputs["is_longer"].to(self.device)} if fusion else {}
            a = self.model.get_audio_features(input_features=inputs["input_features"].to(self.device), **extra)
            tok = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                 return_tensors="pt").to(self.device)
            t = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            a, t = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (a, t))
            out += torch.nn.functional.cosine_similarity(a.float(), t.float(), dim=-1).cpu().tolist()
        return out


def load_scorer(ref: str, device: str = "cpu") -> AudioTextScorer:
    """A run folder / .ckpt file is a stage-1 run; anything else is a CLAP checkpoint."""
    if ref.endswith(".ckpt") or os.path.isfile(os.path.join(ref, "checkpoints", "last.ckpt")):
        return RunScorer(ref, device)
    return ClapScorer(ref, device)


# === The pipeline ===


def yes_no(answer: str) -> Optional[bool]:
    """True/False for an answer that starts with yes/no; None when it says neither."""
    word = re.match(r"\W*([a-z]+)", answer.lower())
    return {"yes": True, "no": False}.get(word.group(1)) if word else None


def label_list(row: dict) -> list[str]:
    """The ground-truth labels: the row's tags, else its string-valued labels."""
    if row.get("tags"):
        return [str(t) for t in row["tags"]]
    return [v for v in (row.get("labels") or {}).values() if isinstance(v, str)]


def clean_caption(answer: str) -> str:
    """First paragraph of the answer, without a 'Caption:' lead-in or quotes around the whole."""
    text = answer.strip().split("\n\n", 1)[0].strip()
    text = re.sub(r"^\s*caption\s*:\s*", "", text, flags=re.IGNORECASE)
    if len(text) >= 2 and text[0] in "\"'“" and text[-1] in "\"'”" and text.count(text[0]) <= 2:
        text = text[1:-1].strip()
    return " ".join(text.split())


def rule_violation(caption: str, labels: list[str], max_words: int) -> Optional[str]:
    """Why a caption breaks the LLM's instructions (checked before scoring), or None."""
    if not caption:
        return "empty"
    if len(caption.split()) > max_words:
        return "too_long"
    if re.search(r"[\"“][^\"”]*?\w+\W+\w+\W+\w+[^\"”]*[\"”]", caption):
        return "quotes_speech"  # a quotation of three words or more
    def words(text: str) -> str:  # lower case, punctuation to single spaces ('#' kept for keys)
        return " ".join(re.sub(r"[^\w#]+", " ", text.lower()).split())

    norm, listed = words(caption), [words(x) for x in labels]
    # The label list copied: three labels in a row, in the given order (naming a label is fine).
    for i in range(len(listed) - 2):
        if all(listed[i:i + 3]) and " ".join(listed[i:i + 3]) in norm:
            return "copies_labels"
    return None


@dataclass
class RefineSettings:
    rounds: int = 3
    max_words: int = 50
    seed: int = 0
    temperature: float = 0.7
    top_p: float = 0.9
    assume: dict = field(default_factory=dict)  # presence gate -> True/False, instead of asking
    chain: tuple = CHAIN


def extract(alm: AudioLanguageModel, audio: list[str], settings: RefineSettings, counts: dict) -> list[dict]:
    """The ALM's answers to the prompt chain, per clip ({step: answer}; gates as yes/no/unclear)."""
    answers: list[dict] = [{} for _ in audio]
    for step in settings.chain:
        name = step["name"]
        if step.get("gate") and name in settings.assume:
            for a in answers:
                a[name] = "yes" if settings.assume[name] else "no"
            continue
        todo = [i for i, a in enumerate(answers) if not step.get("when") or a.get(step["when"]) == "yes"]
        if not todo:
            continue
        replies = alm.ask([audio[i] for i in todo], [step["prompt"]] * len(todo))
        for i, reply in zip(todo, replies, strict=True):
            if step.get("gate"):
                verdict = yes_no(reply)
                if verdict is None:
                    counts["unclear_" + name] = counts.get("unclear_" + name, 0) + 1
                answers[i][name] = {True: "yes", False: "no", None: "unclear"}[verdict]
            else:
                answers[i][name] = reply.strip()
    return answers


def merge_prompt(answers: dict, labels: str, max_words: int) -> str:
    context = "\n".join(f"{CONTEXT_NAMES.get(k, k)}: {v}" for k, v in answers.items()
                        if k in CONTEXT_NAMES and v)
    return MERGE_PROMPT.format(context=context, labels=labels or "none", max_words=max_words)


def refine_rows(rows: list[dict], audio: list[str], alm: AudioLanguageModel, generator: TextGenerator,
                scorer: AudioTextScorer, settings: RefineSettings, counts: dict) -> tuple[list[dict], list[dict]]:
    """Extraction, generation and the regenerate-until-not-below-the-labels loop for a batch of
    rows. Returns (kept, discarded) records; ``counts`` is updated."""
    answers = extract(alm, audio, settings, counts)
    label_lists = [label_list(r) for r in rows]
    labels = [", ".join(x) for x in label_lists]
    label_scores = scorer.score(audio, labels)
    prompts = [merge_prompt(a, lab, settings.max_words) for a, lab in zip(answers, labels, strict=True)]
    state = [{"caption": "", "reason": None, "caption_score": None} for _ in rows]
    pending = list(range(len(rows)))
    kept = {}
    for round_ in range(1, settings.rounds + 1):
        if not pending:
            break
        # Round 1 decodes as configured; retries must differ from it, so they sample with a new seed.
        retry = round_ > 1
        texts = generator([prompts[i] for i in pending], seed=settings.seed + round_ - 1 if retry else None,
                          do_sample=True if retry else None)
        captions = {i: clean_caption(t) for i, t in zip(pending, texts, strict=True)}
        ruled = {i: rule_violation(c, label_lists[i], settings.max_words) for i, c in captions.items()}
        for i, why in ruled.items():
            state[i].update(caption=captions[i], reason=why, caption_score=None)
            if why:
                counts["rule_" + why] = counts.get("rule_" + why, 0) + 1
        valid = [i for i in pending if not ruled[i]]
        scores = scorer.score([audio[i] for i in valid], [captions[i] for i in valid]) if valid else []
        for i, s in zip(valid, scores, strict=True):
            state[i]["caption_score"] = s
            if s >= label_scores[i]:
                kept[i] = round_
            else:
                state[i]["reason"] = "below_labels"
                counts["below_labels"] = counts.get("below_labels", 0) + 1
        pending = [i for i in pending if i not in kept]
    out_kept, out_discarded = [], []
    for i, row in enumerate(rows):
        info = {"extraction": answers[i], "label_score": label_scores[i], "caption_score": state[i]["caption_score"],
                "prompt": prompts[i]}
        if i in kept:
            info["round"] = kept[i]
            counts[f"kept_round_{kept[i]}"] = counts.get(f"kept_round_{kept[i]}", 0) + 1
            out_kept.append({"row": row, "caption": state[i]["caption"], "refine": info})
        else:
            out_discarded.append({"id": row["id"], "reason": state[i]["reason"], "last_caption": state[i]["caption"],
                                  "rounds": settings.rounds, **info})
    counts["kept"] += len(out_kept)
    counts["discarded"] += len(out_discarded)
    return out_kept, out_discarded


def refine(manifest: str, out: str, alm: AudioLanguageModel, generator: TextGenerator, scorer: AudioTextScorer,
           settings: RefineSettings, batch_size: int = 8, limit: Optional[int] = None,
           splits: Optional[list[str]] = None, log: Callable[[str], None] = print) -> dict:
    """Run the pipeline over ``manifest`` into ``out`` (+ ``out.discarded.jsonl``); returns counts."""
    if settings.rounds < 1:
        raise ConfigError("--rounds: must be at least 1")
    src, rows = read_rows(manifest)
    out_path, discarded_path, done = open_output(out, ".discarded.jsonl", {"method": "audiosetcaps"}, ("method",))
    counts = {"rows": len(rows), "done_before": 0, "kept": 0, "discarded": 0}
    # Refinement compares a caption with its labels, so a row without any cannot be refined: counted.
    in_splits = [r for r in rows if not splits or r.get("split") in splits]
    labelled = [r for r in in_splits if label_list(r)]
    counts["no_labels"] = len(in_splits) - len(labelled)
    todo = pending_rows(labelled, done, counts, limit=limit)
    audio_root = src.parent.resolve()
    settings_record = {"method": "audiosetcaps", "alm": getattr(alm, "name", type(alm).__name__),
                       "scorer": getattr(scorer, "name", type(scorer).__name__), **generator.settings,
                       "rounds": settings.rounds, "max_words": settings.max_words,
                       "retry_temperature": settings.temperature, "retry_top_p": settings.top_p,
                       "assume": {k: ("yes" if v else "no") for k, v in settings.assume.items()}}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        audio = [str(audio_root / r["audio"]) if not os.path.isabs(str(r["audio"])) else r["audio"] for r in chunk]
        missing = [a for a in audio if not os.path.isfile(a)]
        if missing:
            raise AudioError(f"{src}: audio file not found: {missing[0]} (and {len(missing) - 1} more)")
        kept, discarded = refine_rows(chunk, audio, alm, generator, scorer, settings, counts)
        written = []
        for rec in kept:
            row = relocated(rec["row"], audio_root, out_path.parent)
            row.update(captions=[rec["caption"]], source_captions=rec["row"].get("captions", []),
                       generation=settings_record, refine=rec["refine"])
            written.append(row)
        append_jsonl(out_path, written)
        append_jsonl(discarded_path, discarded)
        log(f"[refine] {counts['done_before'] + counts['kept'] + counts['discarded']}/{counts['done_before'] + len(todo)}"
            f" rows: kept {counts['kept']}, discarded {counts['discarded']}")
    return counts


def parse_assume(items: Optional[list[str]], chain=CHAIN) -> dict:
    gates = [s["name"] for s in chain if s.get("gate")]
    out = {}
    for item in items or []:
        name, _, value = item.partition("=")
        if name not in gates or yes_no(value) is None:
            raise ConfigError(f"--assume {item!r}: give GATE=yes|no with GATE one of {', '.join(gates)}")
        out[name] = yes_no(value)
    return out


def add_arguments(parser) -> None:
    parser.add_argument("manifest", help="input manifest (JSONL rows with audio and labels/tags), or builtin:NAME")
    parser.add_argument("--mode", choices=("released", "gated"), default="released",
                        help="released (default): their released pipeline (audiosetcaps.py): one chat with "
                        "history, length retry, keyword filter, fixed merge prompt, 2 merge tries, and when no try "
                        "beats the labels the LAST try is kept, as their code does (it meant the best); "
                        "gated: our reading of the paper (this module): yes/no gates, rule checks, discard "
                        "after --rounds")
    parser.add_argument("--alm-tries", type=int, default=2, help="released: chats per clip at most while the "
                        "assembled answer is outside 100-500 characters")
    parser.add_argument("--merge-tries", type=int, default=2, help="released: merge tries per row at most")
    parser.add_argument("out", help="output manifest (JSONL); appended to and resumed")
    parser.add_argument("--alm", required=True, help="audio-language model: a trained stage-2 run folder or .ckpt")
    parser.add_argument("--model", required=True, help="LLM that writes the caption: hub id, folder, pkg:<package>, or tiny "
                        "(a tiny random LLaMA, for trying the pipeline)")
    parser.add_argument("--gguf-file", help="GGUF file inside --model")
    parser.add_argument("--scorer", required=True,
                        help="contrastive audio-text model: a stage-1 run folder/.ckpt, or a CLAP checkpoint")
    parser.add_argument("--rounds", type=int, default=3, help="gated: generations per row at most (the first included)")
    parser.add_argument("--max-words", type=int, default=50, help="gated: the caption's word limit")
    parser.add_argument("--assume", nargs="*", metavar="GATE=yes|no",
                        help="gated: answer a presence question instead of asking the ALM, e.g. speech_present=no")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="sampling temperature of the merge LLM (gated: of its retries)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus of the merge LLM (gated: of its retries)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="stop after this many rows in total (earlier ones included)")
    parser.add_argument("--splits", nargs="*", help="only rows of these splits")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def run_from_args(opts) -> dict:
    settings = RefineSettings(rounds=opts.rounds, max_words=opts.max_words, seed=opts.seed,
                              temperature=opts.temperature, top_p=opts.top_p, assume=parse_assume(opts.assume))
    alm = RunALM(opts.alm, opts.device)
    scorer = load_scorer(opts.scorer, opts.device)
    generator = TagCaptioner(opts.model, opts.gguf_file, opts.max_new_tokens, False, opts.temperature, opts.top_p,
                             opts.seed, opts.repetition_penalty)
    return refine(opts.manifest, opts.out, alm, generator, scorer, settings, opts.batch_size, opts.limit, opts.splits)
