"""Caption augmentation of the training (and validation) targets.

BLAP's stage 2 (ETH-DISCO/blap ``BLAP2_Pretrain.py:582,686-699,710``,
``remove_forbidden_phrases_with_chance``) drops MusicCaps boiler-plate phrases from the target caption
at random, so the model does not learn to open every caption with them. It runs in the model's
``forward``, which training and validation both call, before the target is tokenised; it changes the
loss targets only (never the references that generated text is scored against).

The semantics are BLAP's, kept exactly because they shape the targets: phrases are tried in the given
order; each is matched as a case-sensitive substring (no word boundaries: "upbeats" loses "upbeat");
while it occurs, one draw decides whether its first occurrence is deleted (plain deletion, no
whitespace or punctuation cleaned up around it) and the first failed draw stops that phrase, so k
occurrences all go with probability p**k; one ``strip()`` of the whole caption at the end. Only the
random source differs: BLAP draws from the global torch RNG, we draw from the example's own seeded
generator, so an epoch's targets replay identically after a restart.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def drop_phrases(text: str, phrases: Sequence[str], p: float, rng: random.Random) -> str:
    """``text`` with each of ``phrases`` removed at random as BLAP does (see the module docstring).

    Args:
        text: The caption (a loss target).
        phrases: Non-empty phrases, tried in this order.
        p: Probability that one draw removes an occurrence.
        rng: The example's random generator.
    """
    for phrase in phrases:
        while phrase in text:
            if rng.random() < p:
                text = text.replace(phrase, "", 1)
            else:
                break  # BLAP stops this phrase at the first failed draw
    return text.strip()


def check_phrases(phrases, p) -> list[str]:
    """Problems of the ``data.drop_phrases`` / ``data.drop_phrase_p`` options, one line each."""
    out = []
    if phrases is not None and (not isinstance(phrases, list)
                                or not all(isinstance(x, str) and x for x in phrases)):
        out.append(f"data.drop_phrases: {phrases!r}; give a list of non-empty phrases, or null")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        out.append(f"data.drop_phrase_p: {p!r}; it must be between 0 and 1")
    return out
