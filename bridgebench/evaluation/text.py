"""Captioning / QA text metrics in three named conventions (pure scoring, no Lightning).

Captioning / QA (:func:`caption_metrics`), one ``mode`` per published convention:

* ``standard``: the COCO / audio-captioning convention, computed by aac-metrics 0.5.4 at corpus level on
  PTB-tokenised text (lower-cased, punctuation dropped): ``bleu_1..bleu_4`` (closest reference length),
  ``meteor`` (METEOR 1.5 jar, Java), ``rouge_l`` (F with beta 1.2, max over references), ``cider_d``
  (x10, sigma 6), ``spice``, ``spider``, ``fense``, ``bertscore``; plus diversity: ``vocab_size``,
  ``novel_vocab_pct`` and ``avg_length`` (always on the pure-Python tokenisation, so they do not depend
  on Java). Without Java the PTB tokenizer is replaced by :func:`simple_tokenize` and ``tokenizer`` says
  so. Metrics whose tool or weights are absent are the string ``"unavailable: <reason>"``.
* ``musilingo``: MusiLingo's ``qa.py`` exactly: per-sample scores averaged; ``musilingo/bleu`` is NLTK
  ``sentence_bleu([ref], cand)`` on the RAW strings, i.e. character-level cumulative BLEU-4,
  ``musilingo/bleu_4`` the same with weights (0, 0, 0, 1); ``musilingo/meteor`` NLTK ``meteor_score``
  on ``wordpunct_tokenize`` tokens (needs WordNet); ``musilingo/rouge_l_recall`` rouge-score ROUGE-L
  RECALL with ``use_stemmer=True``; ``musilingo/bertscore_recall`` bert-score recall (roberta-large).
  qa.py has one reference per question: only the first reference of each sample is used.
  ``musilingo/b_u`` is the paper's B-U ("the average of BU_1, BU_2, BU_3, and BU_4", musilingo.txt:79):
  the mean of cumulative BLEU-1..4 (NLTK, uniform weights over the first n orders), each per sample
  on the same raw strings and averaged, as qa.py scores BLEU. The paper's wording, not its code:
  qa.py's only BLEU is ``musilingo/bleu``.
* ``lp-musiccaps``: LP-MusicCaps' ``lpmc/music_captioning/eval.py`` + ``lpmc/utils/metrics.py``
  (seungheondoh/lp-music-caps), which call Hugging Face ``evaluate``: ``lpmc/bleu1..4`` = corpus BLEU of
  ``evaluate``'s "bleu" (13a tokenisation, tensorflow-nmt ``compute_bleu``: SHORTEST reference length,
  no smoothing), ``lpmc/meteor`` = mean of per-sample NLTK METEOR on ``word_tokenize`` tokens,
  ``lpmc/rougeL`` = mean per-sample rouge-score ROUGE-L F1 without stemming (``evaluate`` reports the
  median of a 1000-sample bootstrap of that mean, which is random and differs by ~1e-3),
  ``lpmc/bertscore`` = mean bert-score F1, ``lpmc/vocab_size``, ``lpmc/novel_v``, ``lpmc/novel_c``,
  ``lpmc/length_avg``, ``lpmc/length_std``. Values are fractions as in their results.json; their paper
  tables show them x100. Their ``vocab_novelty`` zips predictions with training captions, so both are
  truncated to the shorter list before vocabularies are built; that quirk is kept.

Assumptions: offline machine; external tools set up by :mod:`bridgebench.evaluation.external_tools`; heavy imports
(aac-metrics ~6 s, nltk, torch) happen inside the functions that need them.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bridgebench.evaluation import external_tools
from bridgebench.evaluation.results import UNAVAILABLE, is_unavailable, unavailable  # noqa: F401

MetricValue = float | int | str
MODES = ("standard", "musilingo", "lp-musiccaps")


# ------------------------------------------------------------------------------------ tokenisation
# Tokens the PTB tokenizer drops as aac-metrics and pycocoevalcap run it. Because it runs with
# -lowerCase and the list holds "-LRB-", brackets survive as "-lrb-", "-rrb-", "-lsb-", ... .
_PTB_DROP = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"'])
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITICS = re.compile(r"(?<=\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|(?:[^\W_]\.){2,}|\w+(?:[-/&.']\w+)*|\.\.\.|--|\S")


def simple_tokenize(text: str) -> list[str]:
    """Pure-Python stand-in for the PTB tokenizer (stanford-corenlp 3.4.1 with -lowerCase, then
    aac-metrics' punctuation filter): lower-case; split clitics ("don't" -> "do n't", "dog's" -> "dog 's");
    keep abbreviations ("e.g.") and words with inner hyphens, slashes, dots or apostrophes ("hip-hop",
    "rock/pop", "3.5") whole; brackets become "-lrb-"/"-rrb-"/... as in PTB; every other symbol is its
    own token; PTB's punctuation tokens are dropped. Agrees with PTB on ordinary captions."""
    text = _CLITICS.sub(r" \1", text.lower())
    return [_PTB_BRACKETS.get(tok, tok) for tok in _TOKEN.findall(text) if tok not in _PTB_DROP]


def _check_inputs(predictions: Sequence[str], references: Sequence[Any]) -> list[list[str]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not r for r in refs):
        raise ValueError("every prediction needs at least one reference")
    if not all(isinstance(p, str) for p in predictions) or not all(isinstance(x, str) for r in refs for x in r):
        raise TypeError("predictions and references must be strings")
    return refs


# ---------------------------------------------------------------------------------------- captions
def caption_metrics(
    predictions: list[str],
    references: list[list[str]],
    mode: str = "standard",
    cache_dir: str | os.PathLike | None = None,
    *,
    train_vocabulary: Iterable[str] | None = None,
    train_captions: Sequence[str] | None = None,
) -> dict[str, MetricValue]:
    """Score ``predictions[i]`` against ``references[i]`` (one or more strings) in one convention.

    ``train_vocabulary``: words (or texts, tokenised) of the training captions for ``novel_vocab_pct``
    in ``standard`` mode (default: the training captions if given, else the references).
    ``train_captions``: the training captions; ``lp-musiccaps`` needs them for ``novel_v``/``novel_c``.
    Never raises for a missing tool: that metric is ``"unavailable: <reason>"``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    refs = _check_inputs(predictions, references)
    if mode == "musilingo":  # raw strings: qa.py's BLEU counts every character, spaces included
        return _musilingo(list(predictions), refs, cache_dir)
    if mode == "lp-musiccaps":
        return _lpmc(list(predictions), refs, cache_dir, train_captions)
    # The Java tools read one sentence per line: collapse newlines and runs of spaces.
    predictions = [" ".join(p.split()) for p in predictions]
    refs = [[" ".join(x.split()) for x in r] for r in refs]
    return _standard(predictions, refs, cache_dir, train_vocabulary, train_captions)


def _float(x: Any) -> float:
    return float(x.item() if hasattr(x, "item") else x)


def _tokenize_all(predictions, refs, setup) -> tuple[list[str], list[list[str]], str]:
    """PTB tokenisation of predictions and references in ONE Java call, else the pure-Python one."""
    label = f"simple ({setup.java_reason})"
    if setup.java is not None and setup.has_jar["ptb"]:
        from aac_metrics.utils.tokenization import preprocess_mono_sents

        flat = list(predictions) + [x for r in refs for x in r]
        filled = [i for i, x in enumerate(flat) if x]  # PTB loses empty lines: tokenize the others
        try:
            done = preprocess_mono_sents([flat[i] for i in filled], cache_path=setup.cache_path,
                                         java_path=setup.java) if filled else []
        except Exception as err:  # noqa: BLE001 - any tool failure falls back, and says so
            label = f"simple (PTB tokenizer failed: {str(err)[:200]})"
        else:
            out = [""] * len(flat)
            for i, text in zip(filled, done):
                out[i] = text
            cands, pos, mrefs = out[: len(predictions)], len(predictions), []
            for r in refs:
                mrefs.append(out[pos: pos + len(r)])
                pos += len(r)
            return cands, mrefs, "ptb"
    elif setup.java is not None:
        label = "simple (stanford-corenlp-3.4.1.jar missing)"
    cands = [" ".join(simple_tokenize(p)) for p in predictions]
    mrefs = [[" ".join(simple_tokenize(x)) for x in r] for r in refs]
    return cands, mrefs, label


def _standard(predictions, refs, cache_dir, train_vocabulary, train_captions) -> dict[str, MetricValue]:
    setup = external_tools.aac_setup(cache_dir)
    cands, mrefs, tokenizer = _tokenize_all(predictions, refs, setup)
    from aac_metrics.functional.bleu import bleu
    from aac_metrics.functional.cider_d import cider_d
    from aac_metrics.functional.rouge_l import rouge_l

    out: dict[str, MetricValue] = {"tokenizer": tokenizer, "n_samples": len(predictions)}
    corpus, _ = bleu(cands, mrefs, n=4, return_1_to_n=True)
    for k, value in enumerate(corpus["bleu_1_to_4"].tolist(), start=1):
        out[f"bleu_{k}"] = float(value)

    if setup.java is None:
        out["meteor"] = unavailable(f"{setup.java_reason} (METEOR 1.5 is a Java program)")
    elif not setup.has_jar["meteor"]:
        out["meteor"] = unavailable("meteor-1.5.jar missing (pip install pycocoevalcap==1.2)")
    else:
        from aac_metrics.functional.meteor import meteor

        try:
            out["meteor"] = _float(meteor(cands, mrefs, cache_path=setup.cache_path, java_path=setup.java)[0]["meteor"])
        except Exception as err:  # noqa: BLE001
            out["meteor"] = unavailable(f"METEOR failed: {str(err)[:200]}")

    out["rouge_l"] = _float(rouge_l(cands, mrefs)[0]["rouge_l"])
    if len(cands) < 2:
        out["cider_d"] = unavailable("CIDEr-D needs at least 2 predictions (its idf is over the test set)")
    else:
        out["cider_d"] = _float(cider_d(cands, mrefs)[0]["cider_d"])

    out["spice"] = _spice(cands, mrefs, setup)
    if isinstance(out["spice"], float) and isinstance(out["cider_d"], float):
        out["spider"] = (out["cider_d"] + out["spice"]) / 2
    else:
        out["spider"] = unavailable("SPIDEr = (CIDEr-D + SPICE) / 2 and SPICE is unavailable")
    out["fense"] = _fense(predictions, refs)
    out["bertscore"] = _aac_bertscore(predictions, refs)
    out.update(_diversity(predictions, refs, train_vocabulary, train_captions))
    return out


def _spice(cands, mrefs, setup) -> MetricValue:
    if setup.java is None:
        return unavailable(f"{setup.java_reason} (SPICE is a Java program)")
    from aac_metrics.functional.spice import check_spice_install, spice

    try:
        check_spice_install(setup.cache_path)
    except (FileNotFoundError, NotADirectoryError):
        return unavailable("SPICE needs Stanford CoreNLP 3.6.0 + models jars in "
                           f"{setup.cache_path}/aac-metrics/spice/lib (not on PyPI or Debian)")
    try:  # only reached where someone supplied the CoreNLP 3.6.0 jars by hand
        return _float(spice(cands, mrefs, cache_path=setup.cache_path, java_path=setup.java,
                            n_threads=2, timeout=600)[0]["spice"])
    except Exception as err:  # noqa: BLE001
        return unavailable(f"SPICE failed: {str(err)[:200]}")


def _fense(predictions, refs) -> MetricValue:
    sbert = external_tools.hf_local_dir("sentence-transformers/paraphrase-TinyBERT-L6-v2")
    import torch

    fense_data = os.environ.get("FENSE_DATA") or os.path.join(torch.hub.get_dir(), "fense_data")
    echecker = os.path.join(fense_data, "echecker_clotho_audiocaps_base.ckpt")
    if sbert is None or not os.path.isfile(echecker):
        return unavailable("FENSE needs sentence-transformers/paraphrase-TinyBERT-L6-v2 (Hugging Face hub) and "
                           "echecker_clotho_audiocaps_base.ckpt (GitHub release); neither is downloaded here")
    try:
        from aac_metrics.functional.fense import fense
        from sentence_transformers import SentenceTransformer

        return _float(fense(predictions, refs, sbert_model=SentenceTransformer(sbert, device="cpu"),
                            device="cpu")[0]["fense"])
    except Exception as err:  # noqa: BLE001
        return unavailable(f"FENSE failed: {str(err)[:200]}")


def _aac_bertscore(predictions, refs) -> MetricValue:
    model = external_tools.hf_local_dir("roberta-large", "FacebookAI/roberta-large")
    if model is None:
        return unavailable("BERTScore needs roberta-large weights (Hugging Face hub); not downloaded here")
    try:
        from aac_metrics.functional.bert_score_mrefs import bert_score_mrefs

        corpus, _ = bert_score_mrefs(predictions, refs, model=model, device="cpu")
        key = next(k for k in corpus if k.endswith("f1"))
        return _float(corpus[key])
    except Exception as err:  # noqa: BLE001
        return unavailable(f"BERTScore failed: {str(err)[:200]}")


def _diversity(predictions, refs, train_vocabulary, train_captions) -> dict[str, MetricValue]:
    pred_tokens = [simple_tokenize(p) for p in predictions]
    vocab = {tok for toks in pred_tokens for tok in toks}
    if train_vocabulary is not None:
        against, texts = "train", list(train_vocabulary)
    elif train_captions is not None:
        against, texts = "train", list(train_captions)
    else:
        against, texts = "references", [x for r in refs for x in r]
    known = {tok for text in texts for tok in simple_tokenize(text)}
    novel = 100.0 * len(vocab - known) / len(vocab) if vocab else 0.0
    return {
        "vocab_size": len(vocab),
        "novel_vocab_pct": novel,
        "novel_vocab_vs": against,
        "avg_length": sum(map(len, pred_tokens)) / len(pred_tokens),
    }


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def _bert_score_pkg(predictions, refs, which: str) -> MetricValue:
    """bert-score package (as qa.py and ``evaluate`` call it: lang="en" -> roberta-large, layer 17)."""
    import importlib.util

    model = external_tools.hf_local_dir("roberta-large", "FacebookAI/roberta-large")
    if importlib.util.find_spec("bert_score") is None or model is None:
        return unavailable("BERTScore needs the bert-score package and roberta-large weights "
                           "(Hugging Face hub); not downloaded here")
    try:
        from bert_score import score

        precision, recall, f1 = score(predictions, refs, model_type=model, num_layers=17, lang="en")
        return float({"recall": recall, "f1": f1, "precision": precision}[which].mean())
    except Exception as err:  # noqa: BLE001
        return unavailable(f"bert-score failed: {str(err)[:200]}")


def _musilingo(predictions, refs, cache_dir) -> dict[str, MetricValue]:
    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.bleu_score import sentence_bleu
    from rouge_score import rouge_scorer

    first = [r[0] for r in refs]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    with warnings.catch_warnings():  # NLTK warns on every zero n-gram overlap
        warnings.simplefilter("ignore")
        bleu = [sentence_bleu([ref], cand) for ref, cand in zip(first, predictions)]
        bleu4 = [sentence_bleu([ref], cand, weights=(0.0, 0.0, 0.0, 1.0)) for ref, cand in zip(first, predictions)]
        bleu_n = [_mean([sentence_bleu([ref], cand, weights=(1.0 / n,) * n) for ref, cand in zip(first, predictions)])
                  for n in range(1, 5)]
    out: dict[str, MetricValue] = {
        "musilingo/n_samples": len(predictions),
        "musilingo/bleu": _mean(bleu),
        "musilingo/bleu_4": _mean(bleu4),
        "musilingo/b_u": _mean(bleu_n),
    }
    ok, reason = external_tools.wordnet_ready(cache_dir)
    if ok:
        from nltk.translate.meteor_score import meteor_score

        out["musilingo/meteor"] = _mean([meteor_score([wordpunct_tokenize(ref)], wordpunct_tokenize(cand))
                                         for ref, cand in zip(first, predictions)])
    else:
        out["musilingo/meteor"] = unavailable(reason)
    out["musilingo/rouge_l_recall"] = _mean([scorer.score(ref, cand)["rougeL"].recall
                                             for ref, cand in zip(first, predictions)])
    out["musilingo/bertscore_recall"] = _bert_score_pkg(predictions, first, "recall")
    return out


def nmt_bleu(reference_corpus: Sequence[Sequence[Sequence[str]]], translation_corpus: Sequence[Sequence[str]],
             max_order: int = 4) -> float:
    """Corpus BLEU as tensorflow/nmt ``compute_bleu`` (the code behind Hugging Face ``evaluate``'s "bleu"):
    clipped n-gram precisions summed over the corpus, geometric mean (0 if any precision is 0), brevity
    penalty from the SHORTEST reference of each sample, no smoothing."""
    from collections import Counter

    def ngrams(seg):
        return Counter(tuple(seg[i:i + n]) for n in range(1, max_order + 1) for i in range(len(seg) - n + 1))

    matches, possible = [0] * max_order, [0] * max_order
    ref_len = trans_len = 0
    for references, translation in zip(reference_corpus, translation_corpus):
        ref_len += min(len(r) for r in references)
        trans_len += len(translation)
        merged = Counter()
        for reference in references:
            merged |= ngrams(reference)
        for gram, count in (ngrams(translation) & merged).items():
            matches[len(gram) - 1] += count
        for n in range(1, max_order + 1):
            if len(translation) - n + 1 > 0:
                possible[n - 1] += len(translation) - n + 1
    precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order) if min(precisions) > 0 else 0.0
    if ref_len == 0 or trans_len == 0:
        return 0.0
    ratio = trans_len / ref_len
    return geo_mean * (1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio))


def _lpmc_word_tokenize() -> tuple[Callable[[str], list[str]], str]:
    from nltk.tokenize import word_tokenize

    if external_tools.punkt_ready():
        return word_tokenize, "word_tokenize (punkt)"

    def approx(text: str) -> list[str]:
        # Punkt only splits sentences here; without its model split after . ! ? followed by a space.
        return [tok for sent in re.split(r"(?<=[.!?])\s+", text) if sent
                for tok in word_tokenize(sent, preserve_line=True)]

    return approx, "word_tokenize (regex sentence split: NLTK punkt_tab absent)"


def _lpmc(predictions, refs, cache_dir, train_captions) -> dict[str, MetricValue]:
    import numpy as np
    from rouge_score import rouge_scorer
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok13a = Tokenizer13a()
    ref_tok = [[tok13a(x).split() for x in r] for r in refs]
    pred_tok = [tok13a(p).split() for p in predictions]
    out: dict[str, MetricValue] = {"lpmc/n_samples": len(predictions)}
    for order in range(1, 5):
        out[f"lpmc/bleu{order}"] = nmt_bleu(ref_tok, pred_tok, max_order=order)

    ok, reason = external_tools.wordnet_ready(cache_dir)
    if ok:
        from nltk.translate.meteor_score import meteor_score

        tokenize, label = _lpmc_word_tokenize()
        out["lpmc/meteor"] = _mean([meteor_score([tokenize(x) for x in r], tokenize(p), alpha=0.9, beta=3, gamma=0.5)
                                    for r, p in zip(refs, predictions)])
        out["lpmc/meteor_tokenizer"] = label
    else:
        out["lpmc/meteor"] = unavailable(reason)

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    out["lpmc/rougeL"] = _mean([scorer.score_multi(r, p)["rougeL"].fmeasure for r, p in zip(refs, predictions)])
    out["lpmc/bertscore"] = _bert_score_pkg(predictions, refs, "f1")

    def words(cap: str) -> list[str]:
        return cap.lower().replace(",", "").replace(".", "").split()

    if train_captions is None:
        vocab = {w for p in predictions for w in words(p)}
        out["lpmc/vocab_size"] = len(vocab)
        out["lpmc/novel_v"] = unavailable("needs train_captions (the training captions)")
        out["lpmc/novel_c"] = unavailable("needs train_captions (the training captions)")
    else:
        pairs = list(zip(predictions, train_captions))  # their zip: both lists cut to the shorter one
        vocab = {w for p, _ in pairs for w in words(p)}
        train_vocab = {w for _, t in pairs for w in words(t)}
        out["lpmc/vocab_size"] = len(vocab)
        out["lpmc/novel_v"] = len(vocab - train_vocab) / len(vocab) if vocab else 0.0
        unique = set(predictions)
        out["lpmc/novel_c"] = len(unique - set(train_captions)) / len(unique)
    lengths = [len(p.split()) for p in predictions]
    out["lpmc/length_avg"] = float(np.mean(lengths))
    out["lpmc/length_std"] = float(np.std(lengths))
    return out
