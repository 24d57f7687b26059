"""The learning-rate schedules of ``model.optimizer.schedule``, as multipliers of the base rate.

Every schedule starts with a linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_steps``
optimizer steps, then:

* ``constant``: ``lr`` (BLAP's code: Adam with no scheduler);
* ``cosine``: half a cosine from ``lr`` down to ``min_lr`` at the last step (LAVIS
  ``linear_warmup_cosine_lr``, MusiLingo);
* ``linear``: a straight line from ``lr`` down to ``min_lr`` at the last step (MINT: "a linear
  schedule with 2000 warmup steps"; its end value is not stated, its preset decays to 0).

The scheduler is stepped once per optimizer step. ``total`` is the run's optimizer steps; without a
known total (no trainer) the decaying schedules hold ``lr`` after the warm-up.
"""

from __future__ import annotations

import math

from bridgebench.specs import OptimSpec


def lr_factor(o: OptimSpec, step: int, total: float) -> float:
    """Multiplier of ``o.lr`` at optimizer step ``step`` of ``total``."""
    if step < o.warmup_steps:
        return (o.warmup_lr + (o.lr - o.warmup_lr) * step / o.warmup_steps) / o.lr
    if o.schedule == "constant" or not math.isfinite(total):
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    if o.schedule == "linear":
        return (o.lr + (o.min_lr - o.lr) * progress) / o.lr
    return (o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))) / o.lr
