"""bridgebench.metrics: hand-computed metric values, the three conventions, Java present/absent,
vocabulary ranking, and the results files/table.

Hand computations are in the comments. Corpus used by the "standard" checks (one reference each):

    C1 "a dog runs fast"   R1 "a dog runs fast"
    C2 "a cat"             R2 "a cat sleeps"
    C3 "bird bird"         R3 "a bird sings"
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings

import pytest
import torch

from bridgebench.evaluation import external_tools as metrics_setup
from bridgebench.evaluation.ranking import classification_metrics, rank_classes
from bridgebench.evaluation.results import is_unavailable, results_table, write_results
from bridgebench.evaluation.text import caption_metrics, nmt_bleu, simple_tokenize
from bridgebench.tools.results import main

CANDS = ["a dog runs fast", "a cat", "bird bird"]
REFS = [["a dog runs fast"], ["a cat sleeps"], ["a bird sings"]]
JAVA, _ = metrics_setup.find_java()
pytestmark = pytest.mark.java  # the Java path is what some of these check (see conftest._java_tools)

# ---- BLEU (pycocoevalcap / aac-metrics: corpus level, closest reference length) ----------------
# C1: len 4, ref 4; guesses (1..4-grams) 4,3,2,1; all correct 4,3,2,1.
# C2: len 2, ref 3; guesses 2,1,0,0; correct "a","cat","a cat" -> 2,1,0,0.
# C3: len 2, ref 3; guesses 2,1,0,0; "bird" x2 clipped to its count 1 in R3 -> 1; "bird bird" -> 0.
# Totals: guess 8,5,2,1; correct 7,4,2,1; p = 7/8, 4/5, 2/2, 1/1. Lengths: cand 8, ref 10 -> BP = exp(1-10/8).
BP = math.exp(1 - 10 / 8)
BLEU_1 = 7 / 8 * BP  # 0.68145
BLEU_2 = (7 / 8 * 4 / 5) ** (1 / 2) * BP
BLEU_4 = (7 / 8 * 4 / 5 * 1 * 1) ** (1 / 4) * BP  # 0.71236
# ---- CIDEr-D (idf over the 3 reference sets, log(3/df); sigma 6; clipping; x10) -----------------
# "a" is in all 3 reference sets -> idf 0; every other n-gram has df <= 1 -> idf L = log 3 (df 0 counts as 1).
# C1 == R1: cosine 1 for n = 1..4, same length -> 10 * (1+1+1+1)/4 = 10.
# C2 vs R2, n=1: cand {a:0, cat:L}, ref {a:0, cat:L, sleeps:L}: L^2 / (L * L*sqrt2) = 1/sqrt2;
#    n=2: {"a cat":L} vs {"a cat":L, "cat sleeps":L} -> 1/sqrt2; n=3,4: 0.
#    Length (CIDEr-D counts bigrams): 1 vs 2 -> delta -1 -> exp(-1/(2*36)).  -> 10 * (2/sqrt2)/4 * exp(-1/72)
# C3 vs R3, n=1: cand {bird: 2L} (tf 2), ref {a:0, bird:L, sings:L}; clipped dot min(2L, L)*L = L^2,
#    norms 2L and L*sqrt2 -> 1/(2 sqrt2); n=2: "bird bird" not in R3 -> 0.  -> 10 * (1/(2sqrt2))/4 * exp(-1/72)
PEN = math.exp(-1 / 72)
CIDER_D = (10 + 10 * (2 / math.sqrt(2)) / 4 * PEN + 10 * (1 / (2 * math.sqrt(2))) / 4 * PEN) / 3  # 4.78615
# ---- ROUGE-L (F with beta 1.2 from the LCS, best precision/recall over references) ---------------
# C1: LCS 4, P = R = 1 -> 1.   C2: LCS 2, P = 2/2, R = 2/3.   C3: LCS 1 ("bird"), P = 1/2, R = 1/3.


def rouge_f(p: float, r: float, beta: float = 1.2) -> float:
    return (1 + beta**2) * p * r / (r + beta**2 * p)


ROUGE_L = (1 + rouge_f(1, 2 / 3) + rouge_f(1 / 2, 1 / 3)) / 3  # 0.71941


@pytest.fixture
def no_java(monkeypatch, tmp_path):
    """Java "not found": an empty PATH folder and no $BRIDGEBENCH_JAVA."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(metrics_setup.JAVA_ENV, raising=False)


def test_standard_hand_values_without_java(no_java):
    out = caption_metrics(CANDS, REFS)
    assert out["tokenizer"] == "simple (java not found)"
    assert out["bleu_1"] == pytest.approx(BLEU_1, abs=1e-8)
    assert out["bleu_2"] == pytest.approx(BLEU_2, abs=1e-8)
    assert out["bleu_4"] == pytest.approx(BLEU_4, abs=1e-8)
    assert out["cider_d"] == pytest.approx(CIDER_D, abs=1e-8)
    assert out["rouge_l"] == pytest.approx(ROUGE_L, abs=1e-8)
    # Java tools and hub weights: strings, never numbers, never a crash.
    for key in ("meteor", "spice", "spider", "fense", "bertscore"):
        assert is_unavailable(out[key]), key
    assert "java not found" in out["meteor"] and "java not found" in out["spice"]
    # Diversity: vocabulary {a, dog, runs, fast, cat, bird}; no word outside the references.
    assert out["vocab_size"] == 6 and out["novel_vocab_pct"] == 0.0 and out["novel_vocab_vs"] == "references"
    assert out["avg_length"] == pytest.approx(8 / 3)


def test_standard_second_example_clipping_and_closest_length(no_java):
    # C "the the the cat", refs "the cat is here" (4) / "a cat and the dog" (5): closest length 4 -> BP 1.
    # Unigrams: "the" x3 clipped to 1, "cat" 1 -> 2/4.  Bigrams "the the" x2 (0), "the cat" (1) -> 1/3.
    # ROUGE-L: ref 1 LCS 2 -> P 2/4, R 2/4; ref 2 LCS 1 -> P 1/4, R 1/5; best P, R = 1/2, 1/2 -> F 1/2.
    out = caption_metrics(["the the the cat"], [["the cat is here", "a cat and the dog"]],
                          train_vocabulary=["the", "cat", "dog"])
    assert out["bleu_1"] == pytest.approx(0.5, abs=1e-8)
    assert out["bleu_2"] == pytest.approx(math.sqrt(1 / 2 * 1 / 3), abs=1e-8)
    assert out["rouge_l"] == pytest.approx(0.5, abs=1e-8)
    assert is_unavailable(out["cider_d"]) and "2 predictions" in out["cider_d"]
    assert out["vocab_size"] == 2 and out["novel_vocab_pct"] == 0.0 and out["novel_vocab_vs"] == "train"


@pytest.mark.skipif(JAVA is None, reason="no java on this machine: METEOR and the PTB tokenizer need it")
def test_standard_with_java_ptb_and_meteor():
    out = caption_metrics(CANDS, REFS)  # about 10 s: JVM start and METEOR's paraphrase table
    assert out["tokenizer"] == "ptb"
    assert isinstance(out["meteor"], float) and 0 < out["meteor"] <= 1
    # PTB leaves these captions as they are, so the hand values hold with Java too.
    assert out["bleu_1"] == pytest.approx(BLEU_1, abs=1e-8)
    assert out["bleu_4"] == pytest.approx(BLEU_4, abs=1e-8)
    assert out["cider_d"] == pytest.approx(CIDER_D, abs=1e-8)
    assert "CoreNLP 3.6.0" in out["spice"] and is_unavailable(out["spider"])


@pytest.mark.skipif(JAVA is None, reason="no java on this machine: the PTB tokenizer needs it")
def test_simple_tokenizer_matches_ptb_on_captions():
    from aac_metrics.utils.tokenization import preprocess_mono_sents

    sents = [
        "A man's guitar (loud) -- \"rock/pop\", e.g. hip-hop; don't stop!",
        "It can't be 3.5 dB. It's the artist's tune: 'great' isn't it?",
        ("The low quality recording features a ballad song that contains sustained strings, mellow piano melody "
         "and soft female vocal singing over it. It sounds sad and soulful."),
        "An acoustic drum is playing a groove with kick, snare and hihat; 80's style [with effects] 50% & more...",
    ]
    setup = metrics_setup.aac_setup()
    ptb = preprocess_mono_sents(sents, cache_path=setup.cache_path, java_path=setup.java)
    assert [" ".join(simple_tokenize(s)) for s in sents] == ptb


def test_aac_setup_is_idempotent(tmp_path):
    first = metrics_setup.aac_setup(tmp_path)
    second = metrics_setup.aac_setup(tmp_path)
    assert first == second and first.missing == ()
    jar = tmp_path / "aac-metrics" / "meteor" / "meteor-1.5.jar"
    assert jar.is_symlink() and jar.is_file()
    assert (tmp_path / "aac-metrics" / "spice" / "cache").is_dir()
    assert first.has_jar == {"ptb": True, "meteor": True}
    if first.java is not None:
        from aac_metrics.utils import checks

        assert checks.MAX_JAVA_MAJOR_VERSION >= 99


def test_modes_reject_bad_input():
    with pytest.raises(ValueError, match="mode"):
        caption_metrics(["a"], [["a"]], mode="coco")
    with pytest.raises(ValueError, match="reference lists"):
        caption_metrics(["a", "b"], [["a"]])


# ------------------------------------------------------------------------------------- MusiLingo
def test_musilingo_character_level_bleu_by_hand():
    # Raw strings -> NLTK treats characters as tokens. "abcde" vs "abcdx" (5 chars each, BP 1):
    # p1 = 4/5, p2 = 3/4 (ab bc cd | de), p3 = 2/3, p4 = 1/2 (abcd | bcde).
    out = caption_metrics(["abcde"], [["abcdx"]], mode="musilingo")
    assert out["musilingo/bleu"] == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, abs=1e-12)
    assert out["musilingo/bleu_4"] == pytest.approx(1 / 2, abs=1e-12)  # weights (0, 0, 0, 1): p4 alone
    # B-U, the paper's "average of BU_1..BU_4": the mean of cumulative BLEU-1..4 on the same characters.
    bleu_n = [(4 / 5) ** 1, (4 / 5 * 3 / 4) ** 0.5, (4 / 5 * 3 / 4 * 2 / 3) ** (1 / 3), out["musilingo/bleu"]]
    assert out["musilingo/b_u"] == pytest.approx(sum(bleu_n) / 4, abs=1e-12)
    # "abdc" vs "abcd": p1 = 1, p2 = 1/3, p3 = 0, so BLEU-3 and BLEU-4 are ~0 and B-U = (1 + 3 ** -0.5) / 4.
    swapped = caption_metrics(["abdc"], [["abcd"]], mode="musilingo")
    assert swapped["musilingo/bleu"] < 1e-100  # NLTK returns a tiny number, not 0, for a zero precision
    assert swapped["musilingo/b_u"] == pytest.approx((1 + 3 ** -0.5) / 4)
    # At word level the same pair shares no token at all.
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sentence_bleu([["abcde"]], ["abcdx"]) == 0


def test_musilingo_matches_direct_nltk_and_rouge_recall():
    from nltk.translate.bleu_score import sentence_bleu
    from rouge_score import rouge_scorer

    cands = ["a dog runs", "the guitar is loud and fast", "slow piano"]
    refs = [["a dog runs in the park fast"], ["a loud fast guitar"], ["a slow sad piano piece", "ignored"]]
    out = caption_metrics(cands, refs, mode="musilingo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = [sentence_bleu([r[0]], c) for r, c in zip(refs, cands)]  # raw strings, first reference
    assert out["musilingo/bleu"] == pytest.approx(sum(direct) / 3, abs=1e-12)
    # ROUGE-L recall, not F1: "a dog runs" vs "a dog runs in the park fast": LCS 3 -> R 3/7, P 1, F1 0.6.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    first = scorer.score(refs[0][0], cands[0])["rougeL"]
    assert first.recall == pytest.approx(3 / 7) and first.fmeasure == pytest.approx(0.6)
    recalls = [scorer.score(r[0], c)["rougeL"].recall for r, c in zip(refs, cands)]
    f1s = [scorer.score(r[0], c)["rougeL"].fmeasure for r, c in zip(refs, cands)]
    assert out["musilingo/rouge_l_recall"] == pytest.approx(sum(recalls) / 3)
    assert abs(sum(f1s) / 3 - out["musilingo/rouge_l_recall"]) > 0.05
    assert is_unavailable(out["musilingo/bertscore_recall"])
    meteor = out["musilingo/meteor"]
    if isinstance(meteor, str):
        assert "WordNet" in meteor
    else:
        from nltk.tokenize import wordpunct_tokenize
        from nltk.translate.meteor_score import meteor_score

        direct = [meteor_score([wordpunct_tokenize(r[0])], wordpunct_tokenize(c)) for r, c in zip(refs, cands)]
        assert meteor == pytest.approx(sum(direct) / 3)


def test_wordnet_absent_gives_reason(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "none")])
    monkeypatch.setenv(metrics_setup.WORDNET_ENV, str(tmp_path / "none"))
    ok, reason = metrics_setup.wordnet_ready(tmp_path)
    assert not ok and "WordNet" in reason


# ---------------------------------------------------------------------------------- LP-MusicCaps
def test_lpmc_bleu_vs_nltk_and_hand():
    from nltk.translate.bleu_score import corpus_bleu
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    cands = ["A man plays guitar, loudly.", "Soft piano music with strings.", "Fast drums and bass."]
    refs = [["A man is playing a guitar loudly."], ["Soft piano music with strings and a choir."],
            ["Fast drums and a deep bass."]]
    out = caption_metrics(cands, refs, mode="lp-musiccaps")
    tok = Tokenizer13a()
    ref_tok = [[tok(r).split() for r in rs] for rs in refs]
    hyp_tok = [tok(c).split() for c in cands]
    assert hyp_tok[0] == ["A", "man", "plays", "guitar", ",", "loudly", "."]  # 13a: case kept, punct split
    for k in (1, 2, 3, 4):  # one reference each: shortest == closest, so NLTK's corpus BLEU agrees
        assert out[f"lpmc/bleu{k}"] == pytest.approx(corpus_bleu(ref_tok, hyp_tok, weights=(1 / k,) * k), abs=1e-12)
    # Shortest reference length (theirs) vs closest (COCO, NLTK), by hand, on characters as tokens:
    # hyp "abcdefg" (7) vs refs "abcde" (5) and "abcdefgh" (8); every hyp unigram is in a reference -> p1 = 1.
    # Shortest 5 < 7 -> BP 1 -> BLEU-1 = 1.  Closest is 8 -> BP exp(1 - 8/7).
    hyp, two_refs = list("abcdefg"), [list("abcde"), list("abcdefgh")]
    assert nmt_bleu([two_refs], [hyp], max_order=1) == 1.0
    assert corpus_bleu([two_refs], [hyp], weights=(1.0,)) == pytest.approx(math.exp(1 - 8 / 7))


def test_lpmc_rouge_vocab_novelty_and_length():
    from rouge_score import rouge_scorer

    # No stemming in their ROUGE: "dogs running" vs "dog runs" share nothing -> F1 0 (with a stemmer: 1).
    cands = ["Dogs running.", "a cat, sleeping", "a cat, sleeping"]
    refs = [["dog runs"], ["a cat sleeps"], ["the cat sleeping"]]
    train = ["A cat sleeps.", "dogs bark"]  # shorter than cands: their zip() keeps only cands[:2]
    out = caption_metrics(cands, refs, mode="lp-musiccaps", train_captions=train)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    f1 = [scorer.score(r[0], c)["rougeL"].fmeasure for r, c in zip(refs, cands)]
    assert f1[0] == 0.0
    assert out["lpmc/rougeL"] == pytest.approx(sum(f1) / 3)
    # Words: lower-case, "," and "." removed, split. Predictions kept by zip: "dogs running", "a cat sleeping"
    # -> vocab {dogs, running, a, cat, sleeping} = 5; train words {a, cat, sleeps, dogs, bark}
    # -> novel {running, sleeping} = 2/5. Captions: unique predictions 2, neither in train -> novel_c 1.
    assert out["lpmc/vocab_size"] == 5
    assert out["lpmc/novel_v"] == pytest.approx(2 / 5)
    assert out["lpmc/novel_c"] == 1.0
    assert out["lpmc/length_avg"] == pytest.approx(8 / 3)  # whitespace words 2, 3, 3
    assert out["lpmc/length_std"] == pytest.approx(math.sqrt(((2 - 8 / 3) ** 2 + 2 * (3 - 8 / 3) ** 2) / 3))
    assert is_unavailable(out["lpmc/bertscore"])
    without = caption_metrics(cands, refs, mode="lp-musiccaps")
    assert is_unavailable(without["lpmc/novel_v"]) and is_unavailable(without["lpmc/novel_c"])


# --------------------------------------------------------------------------- vocabulary ranking
def test_rank_classes_matches_python_loop():
    gen = torch.Generator().manual_seed(0)
    nll = torch.rand(20, 7, generator=gen, dtype=torch.float64) * 10
    nll[3, 2] = nll[3, 5] = -1.0  # a tie: the lower index wins
    counts = torch.randint(1, 6, (7,), generator=gen)
    ranking = rank_classes(nll, counts)
    for i in range(20):
        sums = [float(nll[i, c]) for c in range(7)]
        means = [float(nll[i, c]) / int(counts[c]) for c in range(7)]
        assert int(ranking["pred_sum"][i]) == min(range(7), key=lambda c: (sums[c], c))
        assert int(ranking["pred_mean"][i]) == min(range(7), key=lambda c: (means[c], c))
    assert int(ranking["pred_sum"][3]) == 2

    def scores_fn(idx):  # the callable form, scored in 3 segments as LAVIS' n_segments
        return nll[:, idx], counts[idx]

    chunked = rank_classes(scores_fn, n_candidates=7, n_segments=3)
    assert torch.equal(chunked["order_sum"], ranking["order_sum"])
    assert torch.equal(chunked["order_mean"], ranking["order_mean"])


def test_sum_favours_short_labels_mean_does_not():
    # Label 0 "rock": 1 token + EOS = 2 tokens, summed NLL 3.0 (mean 1.5).
    # Label 1 "classical music piece": 4 tokens + EOS = 5 tokens, summed NLL 4.0 (mean 0.8).
    ranking = rank_classes([[3.0, 4.0]], [2, 5])
    assert int(ranking["pred_sum"][0]) == 0 and int(ranking["pred_mean"][0]) == 1
    metrics = classification_metrics(ranking, [1])
    assert metrics == {"accuracy_sum": 0.0, "accuracy_mean": 1.0}


def test_multilabel_auc_matches_torchmetrics():
    from torchmetrics.functional.classification import (
        multilabel_auroc,
        multilabel_average_precision,
    )

    gen = torch.Generator().manual_seed(1)
    nll = torch.rand(30, 5, generator=gen, dtype=torch.float64) * 8
    counts = torch.tensor([2, 3, 2, 4, 6])
    target = (torch.rand(30, 5, generator=gen) < 0.4).long()
    target[0], target[1] = 1, 0  # every label has positives and negatives
    ranking = rank_classes(nll, counts)
    out = classification_metrics(ranking, target, multilabel=True)
    for kind, scores in (("sum", -nll), ("mean", -nll / counts)):
        assert out[f"pr_auc_{kind}"] == pytest.approx(
            float(multilabel_average_precision(scores, target, num_labels=5, average="macro")), abs=1e-6)
        assert out[f"roc_auc_{kind}"] == pytest.approx(
            float(multilabel_auroc(scores, target, num_labels=5, average="macro")), abs=1e-6)
    # Summed NLLs of real labels are large: scores must not saturate (a float32 sigmoid of -500 is 0).
    shifted = classification_metrics(rank_classes(nll + 500, counts), target, multilabel=True)
    assert shifted["pr_auc_sum"] == pytest.approx(out["pr_auc_sum"], abs=1e-6)
    assert shifted["roc_auc_sum"] == pytest.approx(out["roc_auc_sum"], abs=1e-6)


# ------------------------------------------------------------------------------- results files
def test_write_results_and_results_table(tmp_path, capsys):
    run_a, run_b = tmp_path / "run_a", tmp_path / "run_b"
    write_results(run_a, {"bleu_4": 0.1, "meteor": "unavailable: java not found", "n_samples": 3},
                  [{"id": "x1", "prediction": "a dog", "references": ["a dog runs"]}])
    write_results(run_b, {"bleu_4": torch.tensor(0.25), "meteor": 0.3, "cider_d": 1.5},
                  [{"id": "x1", "prediction": "ein Hund – ü"}, {"id": "x2", "prediction": "b"}])
    assert sorted(p.name for p in run_a.iterdir()) == ["metrics.json", "predictions.jsonl"]  # no tmp left
    assert json.loads((run_b / "metrics.json").read_text())["bleu_4"] == 0.25
    lines = (run_b / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["x1", "x2"]

    markdown, csv_text = results_table([str(run_a), str(run_b)])
    md_lines = markdown.splitlines()
    assert md_lines[0] == "| run | bleu_4 | meteor | n_samples | cider_d |"
    assert md_lines[2] == "| run_a | 0.1000 | n/a[1] | 3 |  |"
    assert md_lines[3] == "| run_b | 0.2500 | 0.3000 |  | 1.5000 |"
    assert "[1] java not found" in markdown
    rows = list(csv.reader(io.StringIO(csv_text)))
    assert rows[0] == ["run", "bleu_4", "meteor", "n_samples", "cider_d"]
    assert rows[1] == ["run_a", "0.1", "n/a", "3", ""] and rows[2] == ["run_b", "0.25", "0.3", "", "1.5"]

    out_md = tmp_path / "table" / "results.md"
    assert main([str(run_a), str(run_b), "--out", str(out_md)]) == 0
    assert capsys.readouterr().out == markdown
    assert out_md.read_text() == markdown and out_md.with_suffix(".csv").read_text() == csv_text
    from bridgebench.__main__ import main as bridgebench

    assert bridgebench(["results", str(tmp_path / "missing")]) == 2
