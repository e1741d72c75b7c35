"""Progress bars of the libraries ``kpod`` loads models with.

kpod_ops's own bars (tqdm with ``disable=None``) draw only when stderr is a terminal. transformers
("Loading weights", "Writing model shards") and huggingface_hub draw theirs whatever stderr is, so
the ``kpod`` command turns those off when its bars are off: ``--quiet``, or stderr redirected to a file.
"""

from __future__ import annotations

import sys


def bars_wanted(quiet: bool) -> bool:
    """Whether the ``kpod`` command draws progress bars: not ``--quiet`` and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


def silence_library_bars() -> None:
    """Turn off transformers' and huggingface_hub's progress bars in this process (those installed)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # neither is needed by the loss; without them there is nothing to silence
        return
    hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:
        return
    disable_progress_bars()
