"""Progress on long work: a live bar on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("negset")


def track(items: Iterable[T], total: int | None, what: str, every_s: float = 10.0) -> Iterator[T]:
    """Yield ``items``; show count, rate and ETA while doing so."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(what, total=total)
            for item in items:
                yield item
                bar.advance(task)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            rate = done / (now - start)
            eta = f", eta {(total - done) / rate:.0f}s" if total and rate > 0 else ""
            log.info("%s: %d%s done, %.1f/s%s", what, done, f"/{total}" if total else "", rate, eta)
            last = now
    elapsed = time.monotonic() - start
    log.info("%s: %d done in %.1fs", what, done, elapsed)
