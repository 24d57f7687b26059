"""Process set-up shared by every command: quiet model libraries."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Progress bars and advisory warnings of the model libraries drown the run log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
