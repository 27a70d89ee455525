"""Progress bars: a live tqdm bar on a terminal; in a log file, a plain line at most every ``LOG_INTERVAL_S``.

tqdm redraws its bar with carriage returns on every refresh (10 per second). Written to a log file, a 500-step run
leaves hundreds of kilobytes of overwritten bars on what reads as one line. :func:`progress_bar` keeps tqdm's
bar, rate and ETA, but when the stream is not a terminal it refreshes at most every ``LOG_INTERVAL_S`` seconds
(and at the end) and writes each refresh as its own newline-terminated line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

__all__ = ["LOG_INTERVAL_S", "is_terminal", "progress_bar"]

# Seconds between two lines in a log; MERT_PROGRESS_INTERVAL overrides it (e.g. 5 for a short job).
LOG_INTERVAL_S = 30.0


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, pytest's capture, None)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a closed or exotic stream
        return False


class _Lines:
    """A text stream for tqdm that turns each carriage-return redraw into one newline-terminated line."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.last = ""

    def write(self, s: str) -> int:
        text = s.replace("\r", "").rstrip()
        # tqdm's lone "\n" at close, its blank clears and the repeat of the final state carry nothing new.
        if text and text != self.last:
            self.stream.write(text + "\n")
            self.last = text
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable[Any] | None = None, *, file: IO[str] | None = None, **kwargs: Any) -> Any:
    """A ``tqdm`` bar on ``file`` (default ``sys.stderr``) that suits where it is written.

    On a terminal it is tqdm as usual. Anywhere else (a log file, a pipe) it prints a plain line at most every
    ``LOG_INTERVAL_S`` seconds (``MERT_PROGRESS_INTERVAL`` to change it) and once at the end, with tqdm's counts,
    rate and ETA. ``kwargs`` are tqdm's (``total``, ``desc``, ``unit``, ``disable``, ...); a ``mininterval``
    given by the caller wins.
    """
    from tqdm import tqdm

    stream = sys.stderr if file is None else file
    if stream is not None and not is_terminal(stream):
        interval = float(os.environ.get("MERT_PROGRESS_INTERVAL", LOG_INTERVAL_S))
        kwargs.setdefault("mininterval", interval)
        kwargs.setdefault("maxinterval", max(interval, 10.0))
        kwargs.setdefault("dynamic_ncols", False)
        kwargs.setdefault("ncols", 100)
        stream = _Lines(stream)
    return tqdm(iterable, file=stream, **kwargs)
