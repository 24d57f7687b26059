"""Closed-vocabulary attribute accuracy: does a generated text name the clip's true attributes?

For sets whose captions are true by construction (music-synth): each generated caption is read by
vocabulary match (``caption_attributes``) and compared with the clip's labels, per attribute; with
questions too, each clip's caption is set beside its answer about the same attribute, to tell an
attribute the soft prompt does not carry from one the answer fails to read.
"""

from __future__ import annotations

from bridgebench.datamodules.music_synth import caption_attributes
from bridgebench.evaluation.answers import answer_correct
from bridgebench.errors import ConfigError

ATTRIBUTES = ("instrument", "genre", "tempo_class", "dynamics", "key", "mode")
VOCABULARIES = ("music-synth",)


def attribute_accuracy(rows: list[dict], vocabulary: str) -> dict[str, float]:
    """Share (%) of generated texts (``row['prediction']``) that name each true attribute
    (``row['labels']``); attributes no row carries are left out."""
    if vocabulary not in VOCABULARIES:
        raise ConfigError(f"model.evaluation.attribute_vocabulary: unknown '{vocabulary}'; "
                          f"known: {', '.join(VOCABULARIES)}")
    out = {}
    for attr in ATTRIBUTES:
        scored = [r for r in rows if attr in r.get("labels", {})]
        if scored:
            hits = [caption_attributes(r["prediction"]).get(attr) == r["labels"][attr] for r in scored]
            out[f"attr_acc_{attr}"] = 100.0 * sum(hits) / len(hits)
    return out


def attribute_marks(prediction: str, labels: dict, attributes=ATTRIBUTES[:4]) -> str:
    """``instrument ok, genre WRONG, tempo_class missing, ...`` for one generated caption."""
    named = caption_attributes(prediction)
    out = []
    for attr in attributes:
        if attr in labels:
            got = named.get(attr)
            out.append(f"{attr} {'ok' if got == labels[attr] else 'WRONG' if got else 'missing'}")
    return ", ".join(out)


def caption_answer_agreement(captions: list[dict], answers: list[dict]) -> dict[str, float]:
    """Per attribute, over the clips with both a caption and that attribute's question: the share (%)
    whose caption names the true value while the answer is wrong (``qa/<attr>/caption_only``) and the
    reverse (``qa/<attr>/answer_only``). A large ``caption_only`` says the soft prompt carries the
    attribute and the answer does not read it."""
    named = {r["id"]: caption_attributes(r["prediction"]) for r in captions}
    pairs: dict[str, list[tuple[bool, bool]]] = {}
    for row in answers:
        attr, labels = row.get("qa_type"), row.get("labels", {})
        if attr in ATTRIBUTES and attr in labels and row["id"] in named:
            answer_right = bool(answer_correct(attr, row["prediction"], row["references"][0]))
            pairs.setdefault(attr, []).append((named[row["id"]].get(attr) == labels[attr], answer_right))
    out = {}
    for attr, marks in sorted(pairs.items()):
        out[f"qa/{attr}/caption_only"] = 100.0 * sum(c and not a for c, a in marks) / len(marks)
        out[f"qa/{attr}/answer_only"] = 100.0 * sum(a and not c for c, a in marks) / len(marks)
    return out
