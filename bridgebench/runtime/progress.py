"""Progress lines for long work outside a Lightning loop: rendering the music set, filling the feature cache.

Each line is ``[progress] <what> <done>/<total> <unit>, <elapsed>, ETA <left>`` on stderr, printed when
another tenth of the work is done (and at the end), so a log or a pipe gets about ten lines, not a
redrawn bar. The sweep shows its runs' ``[progress]`` lines as one live status line. With
``BRIDGEBENCH_QUIET`` set (the sweep's ``--quiet``) nothing is printed. A leaf: components use it too.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

PREFIX = "[progress]"


def quiet() -> bool:
    """True when progress lines are switched off (``BRIDGEBENCH_QUIET``, e.g. in CI logs)."""
    return bool(os.environ.get("BRIDGEBENCH_QUIET"))


def seconds_text(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class Tenths:
    """A ``[progress]`` line each time another tenth of ``total`` items is done, and at the end.

    Args:
        what: What is being done, e.g. ``render music-synth`` or ``feature cache train``.
        total: How many items there are.
        unit: What an item is, e.g. ``clips``.
        enabled: Print at all (default: unless ``BRIDGEBENCH_QUIET`` is set).
        stream: Where to print (default: stderr).
    """

    def __init__(self, what: str, total: int, unit: str = "items", enabled: Optional[bool] = None,
                 stream: Optional[TextIO] = None):
        self.what, self.total, self.unit = what, max(0, int(total)), unit
        self.enabled = not quiet() if enabled is None else enabled
        self.stream = stream
        self.start = time.perf_counter()
        self.shown = 0

    def update(self, done: int) -> None:
        """``done`` items are finished (a running count, not an increment)."""
        if not self.enabled or not self.total:
            return
        tenth = 10 * done // self.total
        if tenth <= self.shown and done != self.total:
            return
        self.shown = tenth
        elapsed = time.perf_counter() - self.start
        left = elapsed / done * (self.total - done) if done else 0.0
        print(f"{PREFIX} {self.what} {done}/{self.total} {self.unit}, {seconds_text(elapsed)}, "
              f"ETA {seconds_text(left)}", file=self.stream or sys.stderr, flush=True)
