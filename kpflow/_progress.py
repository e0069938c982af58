"""The package's one way to make a progress bar."""

from __future__ import annotations

import sys


def progress_bar(iterable=None, **kw):
    """A tqdm bar (``tqdm.auto``); redrawn at most every 30 s when stderr is
    not a terminal, so that a batch job's log gets a line now and then
    instead of one per update."""
    from tqdm.auto import tqdm

    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        kw.setdefault("mininterval", 30.0)
    return tqdm(iterable, **kw)
