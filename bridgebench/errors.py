"""The errors a user can act on, and the exit code each gives.

Every command prints a ``BridgebenchError`` as one ``error: <message>`` line on stderr (no
traceback) and exits with its ``exit_code``: 2 for anything the user can fix in a config, a file or
an argument; 1 is left for the run's own failures (a sweep with failed cells). A message names the
key, option or file (with its line number for manifests) and says what to change.

A leaf module: it imports nothing from bridgebench, so every layer can raise these.
"""

from __future__ import annotations


class BridgebenchError(Exception):
    """Base of the one-line errors; ``exit_code`` is what ``python -m bridgebench`` returns."""

    exit_code = 2


class ConfigError(BridgebenchError, ValueError):
    """A configuration mistake (a key, its value or a path it names), found before any model is built."""


class ConfigProblems(ConfigError):
    """Several configuration mistakes found by one validation pass; printed one ``error:`` line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class CheckpointError(ConfigError):
    """A checkpoint file that is missing, empty, truncated, a directory or of the wrong kind."""


class ManifestError(BridgebenchError, ValueError):
    """A manifest problem, with file and line number."""


class AudioError(BridgebenchError, ValueError):
    """An audio file that cannot be decoded or used, naming the file and the reason."""


class FeatureCacheMiss(BridgebenchError, ValueError):
    """Cached features were asked for but are not in the cache."""


class DataError(BridgebenchError, RuntimeError):
    """The data cannot serve the run (e.g. every training clip was skipped as bad audio)."""


class OutputError(BridgebenchError, OSError):
    """An output location that cannot be written (read-only, full disk, a path under a file)."""


def error_lines(err: BridgebenchError) -> list[str]:
    """The ``error:`` lines of an error (several for ConfigProblems)."""
    problems = getattr(err, "problems", None) or [str(err)]
    return [f"error: {p}" for p in problems]
