"""Answer accuracy by vocabulary match, per question type (instrument, groove, tempo class, BPM, key,
mode, dynamics) for sets with closed vocabularies (music-synth).

An answer is right when it names the true label and no other label of that question's vocabulary
(hedging with two grooves is wrong). Labels match as whole words, longest first ("electric piano"
is never read as another instrument); a tempo class or dynamics may be named bare ("slow") or as
in captions ("slow tempo"). Tempo class and dynamics share the label "medium": an answer to one
that names the other in caption form ("medium dynamics" to a tempo question) does not count for
the question asked. Keys are read as "<tonic> <major|minor>" with the tonic capitalised, as the
answers write it: lower case "a minor" is the article, never the key of A. A BPM answer is right
when it holds one number (a whole token: "1200" is not 120), within ``BPM_TOLERANCE`` (8%, the
tempo-estimation tolerance of MIREX) of the true tempo.
"""

from __future__ import annotations

import re
from typing import Optional

from bridgebench.datamodules.music_synth import VOCABULARY, phrase

BPM_TOLERANCE = 0.08
_BPM = re.compile(r"(?<![\d.])(\d{2,3}(?:\.\d+)?)(?!\.?\d)")
_SHARES_LABELS = {"tempo_class": "dynamics", "dynamics": "tempo_class"}
_KEY = re.compile(r"(?<![A-Za-z#])([A-G][#b]?) ?(major|minor)\b")


def _labels_named(text: str, labels) -> set[str]:
    low = f" {text.lower()} "
    found = set()
    for label in sorted(labels, key=len, reverse=True):
        pattern = re.compile(r"(?<![a-z])" + re.escape(label.lower()) + r"(?![a-z])")
        if pattern.search(low):
            found.add(label)
            low = pattern.sub(" ", low)
    return found


def answer_correct(qa_type: str, prediction: str, truth: str) -> Optional[bool]:
    """Whether ``prediction`` answers a ``qa_type`` question whose true answer is ``truth``; None when
    the type has no closed vocabulary (it is then scored by the text metrics alone)."""
    if qa_type in ("instrument", "genre", "tempo_class", "dynamics", "mode"):
        other = _SHARES_LABELS.get(qa_type)
        if other is not None:  # "medium dynamics" names no tempo class
            for label in VOCABULARY[other]:
                words = r"[\s-]+".join(re.escape(w) for w in phrase(other, label).split())  # "medium-tempo" too
                prediction = re.sub(r"(?<![a-z])" + words + r"s?(?![a-z])", " ", prediction, flags=re.IGNORECASE)
        return _labels_named(prediction, VOCABULARY[qa_type]) == {truth}
    if qa_type == "key":
        named = {f"{tonic} {mode}" for tonic, mode in _KEY.findall(prediction)}
        return named == {truth}
    if qa_type == "bpm":
        true = float(_BPM.search(truth).group(1))
        found = {float(x) for x in _BPM.findall(prediction)}
        return len(found) == 1 and abs(found.pop() - true) <= BPM_TOLERANCE * true
    return None


def answer_accuracy(rows: list[dict]) -> dict[str, float]:
    """``qa/<type>/accuracy`` (%) for each closed-vocabulary question type among ``rows`` (each with
    ``qa_type``, ``prediction`` and ``references``), and their mean as ``qa/accuracy``."""
    by_type: dict[str, list[bool]] = {}
    for row in rows:
        verdict = answer_correct(row["qa_type"], row["prediction"], row["references"][0])
        if verdict is not None:
            by_type.setdefault(row["qa_type"], []).append(verdict)
    out = {f"qa/{t}/accuracy": 100.0 * sum(v) / len(v) for t, v in sorted(by_type.items())}
    if out:
        out["qa/accuracy"] = sum(out.values()) / len(out)
    return out
