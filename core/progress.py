"""Progress of a long pass over a loader: a bar on a terminal, a line now and then in a log file.

A progress bar redraws itself with carriage returns, which a terminal shows as one moving line and a log
file (stderr redirected, CI, nohup) keeps as thousands of fragments. So the bar is drawn only when the
stream is a terminal; elsewhere a pass is silent except for one log line every ``heartbeat_s`` seconds, and
the jobs' own per-epoch and per-split log lines tell the story.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)

T = TypeVar("T")
HEARTBEAT_S = 60.0


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable: Iterable[T], desc: str, *, show: bool = True, stream: Optional[TextIO] = None,
             heartbeat_s: float = HEARTBEAT_S) -> Iterator[T]:
    """Yield the items of ``iterable``, showing how far the pass is when ``show`` (rank 0 of a job).

    On a terminal ``stream`` (default: stderr) a bar; otherwise a log line ("desc: i/n batches, s") once
    at least ``heartbeat_s`` seconds have passed since the start or the last line.
    """
    stream = stream if stream is not None else sys.stderr
    if not show:
        yield from iterable
        return
    if is_terminal(stream):
        yield from tqdm(iterable, desc=desc, leave=False, file=stream)
        return
    total = len(iterable) if hasattr(iterable, "__len__") else None
    start = last = time.monotonic()
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= heartbeat_s:
            last = now
            log.info("%s: %d%s batches, %.0f s", desc, i, f"/{total}" if total is not None else "", now - start)
