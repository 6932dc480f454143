"""Progress on long work: a live bar on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("negset")


_reporters: list[Callable[[str, int, int | None], None]] = []


@contextlib.contextmanager
def reporting(fn: Callable[[str, int, int | None], None]) -> Iterator[None]:
    """Also send (what, done, total) of every ``track`` to ``fn`` (an orchestrator's progress view)."""
    _reporters.append(fn)
    try:
        yield
    finally:
        _reporters.remove(fn)


def _reported(items: Iterable[T], total: int | None, what: str, every_s: float = 2.0) -> Iterator[T]:
    def send(done: int) -> None:
        for fn in list(_reporters):
            try:
                fn(what, done, total)
            except Exception as exc:  # progress must never break the work
                log.debug("progress reporter failed: %s", exc)

    send(0)
    last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        if time.monotonic() - last >= every_s:
            send(done)
            last = time.monotonic()
    send(done)


def track(items: Iterable[T], total: int | None, what: str, every_s: float = 10.0,
          nbytes: Callable[[T], int] | None = None) -> Iterator[T]:
    """Yield ``items``; show count, rate and ETA while doing so (and MB, MB/s when ``nbytes`` sizes an item)."""
    if _reporters:
        items = _reported(items, total, what)
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        if nbytes is not None:
            columns.append(TextColumn("{task.fields[mb]:.1f} MB"))
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(what, total=total, mb=0.0)
            size = 0
            for item in items:
                yield item
                size += nbytes(item) if nbytes is not None else 0
                bar.update(task, advance=1, mb=size / 1e6)
        return
    start = last = time.monotonic()
    done = size = 0
    for item in items:
        yield item
        done += 1
        size += nbytes(item) if nbytes is not None else 0
        now = time.monotonic()
        if now - last >= every_s:
            rate = done / (now - start)
            eta = f", eta {(total - done) / rate:.0f}s" if total and rate > 0 else ""
            mb = f", {size / 1e6:.1f} MB at {size / 1e6 / (now - start):.2f} MB/s" if nbytes is not None else ""
            log.info("%s: %d%s done, %.1f/s%s%s", what, done, f"/{total}" if total else "", rate, mb, eta)
            last = now
    elapsed = time.monotonic() - start
    mb = f" ({size / 1e6:.1f} MB, {size / 1e6 / max(elapsed, 1e-9):.2f} MB/s)" if nbytes is not None else ""
    log.info("%s: %d done in %.1fs%s", what, done, elapsed, mb)
