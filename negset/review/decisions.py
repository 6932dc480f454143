"""``reviews.csv``: what a person decided about an image, one row per decision.

The file lives in the project root (beside ``params.yaml``, meant for git) and
is a dependency of the select, export and report stages in ``dvc.yaml``. Its
columns are ``sha256,uri,decision,queue,reviewer,time``:

- ``decision``: ``no_target`` (the image does not contain the target),
  ``contains_target``, ``unsure``, or ``cleared`` (an undo back to "no
  decision": the image counts as never reviewed);
- ``queue``: the review queue it was decided in (``quarantine``: a suspected
  positive; ``audit``: the seeded random sample of the chosen negatives;
  ``hardest``: the hardest chosen negatives);
- ``reviewer``: ``negset review --reviewer`` or the user name; ``time``: UTC,
  ISO 8601 (``2025-01-31T12:00:00Z``).

Rows are only ever appended (``append_reviews``): the last row per image wins.
Each append holds an exclusive ``flock`` on the file and is ``fsync``'d before
it returns, so two browser tabs, two ``negset review`` servers or a killed one
lose no acknowledged decision and never interleave rows; a row cut short by a
kill (no final newline, not parseable) is dropped, and said, by the next append.

How ``select`` uses it (phase 2 of issue 17)::

    from negset.review.decisions import read_reviews, reviews_path, NO_TARGET, CONTAINS_TARGET

    reviews = read_reviews(reviews_path(layout))      # {sha256: Review}, last row per image
    r = reviews.get(sha)
    if r is not None and r.decision == CONTAINS_TARGET:
        ...  # rule reviewed_positive: excluded for good, listed in new_positives.csv
    elif r is not None and r.decision == NO_TARGET:
        ...  # quarantined but reviewed negative: eligible again; r.describe() for the reason

A decision on an image no longer in the pool is simply not looked up. A file
that does not exist means no reviews; a bad row is a ``NegsetError`` naming the
file and line.
"""

from __future__ import annotations

import csv
import datetime as _dt
import fcntl
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from negset.core.errors import NegsetError
from negset.core.layout import Layout

log = logging.getLogger("negset.review")

REVIEWS_FILE = "reviews.csv"
COLUMNS = ("sha256", "uri", "decision", "queue", "reviewer", "time")
HEADER = ",".join(COLUMNS) + "\n"

NO_TARGET = "no_target"
CONTAINS_TARGET = "contains_target"
UNSURE = "unsure"
CLEARED = "cleared"
DECISIONS = (NO_TARGET, CONTAINS_TARGET, UNSURE, CLEARED)
QUEUES = ("quarantine", "audit", "hardest")

SHA256 = re.compile(r"^[0-9a-f]{64}$")
_QUEUE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


@dataclass(frozen=True)
class Review:
    sha256: str
    uri: str
    decision: str
    queue: str
    reviewer: str
    time: str  # UTC, ISO 8601 with a trailing Z
    line: int = 0  # line of reviews.csv the row is on

    def describe(self) -> str:
        """``reviewed as no_target by ana on 2025-01-31T12:00:00Z (audit)``: for reasons."""
        return f"reviewed as {self.decision} by {self.reviewer} on {self.time} ({self.queue})"

    def row(self) -> list[str]:
        return [self.sha256, self.uri, self.decision, self.queue, self.reviewer, self.time]


def reviews_path(layout: Layout) -> Path:
    return layout.root / REVIEWS_FILE


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def clean_reviewer(name: str) -> str:
    """A reviewer name fit for one CSV cell: printable, trimmed, at most 80 characters."""
    text = "".join(ch for ch in str(name) if ch.isprintable()).strip()
    return text[:80] or "unknown"


def check_row(fields: list[str], where: str) -> Review:
    """One data row as a Review; ``where`` (``FILE:LINE``) names it in the error."""
    if len(fields) != len(COLUMNS):
        raise NegsetError(f"{where}: expected {len(COLUMNS)} fields ({','.join(COLUMNS)}), found {len(fields)}",
                          hint="fix or delete that line; each decision is one row written by `negset review`")
    sha, uri, decision, queue, reviewer, time = fields
    if not SHA256.match(sha):
        raise NegsetError(f"{where}: sha256 {sha[:80]!r} is not 64 lowercase hex digits")
    if decision not in DECISIONS:
        raise NegsetError(f"{where}: decision {decision[:40]!r} is not one of {', '.join(DECISIONS)}")
    if not _QUEUE.match(queue):
        raise NegsetError(f"{where}: queue {queue[:40]!r} is not a queue name (e.g. {', '.join(QUEUES)})")
    if not _TIME.match(time):
        raise NegsetError(f"{where}: time {time[:40]!r} is not a UTC time like 2025-01-31T12:00:00Z")
    if not reviewer.strip():
        raise NegsetError(f"{where}: empty reviewer")
    return Review(sha, uri, decision, queue, reviewer, time)


def _complete(line: str) -> bool:
    """A last line without its newline is still the header or a valid row."""
    if line.lstrip("\ufeff") == HEADER.rstrip("\n"):
        return True
    try:
        check_row(next(csv.reader([line])), "")
    except (NegsetError, StopIteration, csv.Error):
        return False
    return True


def read_review_rows(path: Path | str) -> list[Review]:
    """Every row of ``reviews.csv`` in file order (no file: none), each with its line number.

    A last line cut short by a killed writer (no newline, not a valid row) is
    skipped with a warning; any other bad line is a ``NegsetError``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH)  # never read half of an append
            try:
                data = fh.read()
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise NegsetError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise NegsetError(f"{path}:{line}: not UTF-8 text") from None
    if not text:
        return []
    torn = ""
    if not text.endswith("\n"):
        head, _, last = text.rpartition("\n")
        if not _complete(last):  # a hand-edited file may just lack its final newline: keep a valid row
            torn, text = last, (head + "\n" if head else "")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[Review] = []
    try:
        header = next(reader, None)
        if header is None:
            header = list(COLUMNS)  # only a cut-off header
        if [h.strip().lstrip("\ufeff") for h in header] != list(COLUMNS):
            raise NegsetError(f"{path}:1: header should be {','.join(COLUMNS)}; found {','.join(header)[:120]}",
                              hint="reviews.csv is written by `negset review`; restore its first line")
        start = 1
        for fields in reader:
            line = start + 1
            start = reader.line_num
            if not fields or fields == [""]:
                continue
            r = check_row(fields, f"{path}:{line}")
            rows.append(Review(r.sha256, r.uri, r.decision, r.queue, r.reviewer, r.time, line))
    except csv.Error as exc:
        raise NegsetError(f"{path}:{reader.line_num}: not a CSV row ({exc})") from None
    if torn:
        log.warning("%s: ignored an incomplete last line (a write cut short): %r", path, torn[:80])
    return rows


def latest(rows: Iterable[Review]) -> dict[str, Review]:
    """The last row per image; an image whose last row is ``cleared`` is left out."""
    out: dict[str, Review] = {}
    for r in rows:
        out.pop(r.sha256, None)  # re-insert: the dict's order is the order of the last decisions
        if r.decision != CLEARED:
            out[r.sha256] = r
    return out


def read_reviews(path: Path | str) -> dict[str, Review]:
    """``{sha256: Review}``: the decision in force per image (the last row wins; ``cleared`` removes).

    A missing file means no reviews. Bad rows raise ``NegsetError`` naming the
    file and line (``reviews.csv:7: decision 'maybe' is not one of ...``).
    """
    return latest(read_review_rows(path))


def _encode(rows: Iterable[Review]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in rows:
        writer.writerow(r.row())
    return buf.getvalue().encode("utf-8")


def _repair_tail(fd: int, path: Path) -> None:
    """Under the lock: make the file end with a newline; drop a row a killed writer cut short."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    chunk = min(size, 1 << 16)
    tail = os.pread(fd, chunk, size - chunk)
    cut = tail.rfind(b"\n")
    last = tail[cut + 1 :]
    try:
        complete = _complete(last.decode("utf-8"))
    except UnicodeDecodeError:
        complete = False
    if complete:  # a header or row without its newline (edited by hand): keep it
        os.write(fd, b"\n")
        return
    keep = size - len(last) if cut >= 0 else 0
    os.ftruncate(fd, keep)
    log.warning("%s: dropped %d bytes of an incomplete last row (a write cut short): %r", path, len(last), last[:80])


def append_reviews(path: Path | str, reviews: Iterable[Review]) -> None:
    """Append rows to ``reviews.csv`` durably: exclusive lock, one write, fsync.

    Creates the file (with its header) when it does not exist. Returns only
    once the rows are on disk, so a decision acknowledged to the page survives
    a kill of the server or the machine.
    """
    path = Path(path)
    data = _encode(reviews)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            _repair_tail(fd, path)
            if os.fstat(fd).st_size == 0:
                data = HEADER.encode() + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if created:  # the new directory entry is durable too
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def ensure_file(path: Path | str) -> bool:
    """Create a header-only ``reviews.csv`` when there is none (DVC needs the dependency); True when created."""
    path = Path(path)
    if path.exists():
        return False
    append_reviews(path, [])
    return True
