"""Closed-vocabulary attribute accuracy: does a generated text name the clip's true attributes?

For sets whose captions are true by construction (music-synth): each generated caption is read by
vocabulary match (``caption_attributes``) and compared with the clip's labels, per attribute.
"""

from __future__ import annotations

from bridgebench.datamodules.music_synth import caption_attributes
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
