"""Candidate sources behind one small interface.

A source lists ``SourceObject``s; each can be read as bytes and carries the
version information that pins it (``pin``: key, ETag, VersionId,
last-modified). Remote sources read concurrently (``workers``) and, given the
previous ingest's pins (``Previous``), reuse the stored bytes of an object
whose key and ETag did not change instead of downloading it again.

A key or URL is only ever a *name*: bytes are stored content-addressed by
sha256 (``Layout.object_path``), never under a path made from a key.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

from negset.core import atomic

log = logging.getLogger("negset.sources")


@dataclass
class Pin:
    """What identifies one version of an object in its source."""

    key: str = ""  # object key (S3) or URL (HTTP); a name, never a path
    etag: str = ""
    version_id: str = ""  # S3 VersionId when the bucket is versioned
    last_modified: str = ""  # ISO 8601, UTC


@dataclass(frozen=True)
class SourceObject:
    uri: str  # portable name (relative to the project when local and inside it; s3://bucket/key; the URL)
    source: str  # the source it came from
    size: int
    version: str  # ETag/VersionId for object stores; "" for local files (sha256 pins them)
    read: Callable[[], bytes]
    local_path: Path | None = None
    pin: Pin = field(default_factory=Pin)  # remote sources fill it in (read() completes it from the response)
    reused: bool = False  # read() returns the bytes stored by the previous ingest (unchanged key + ETag)


class FetchError(Exception):
    """An object that could not be read (after retries where they could help)."""

    def __init__(self, rule: str, reason: str):
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


class Source(Protocol):
    name: str
    workers: int

    def list(self) -> Iterable[SourceObject]: ...


class FetchStats:
    """Counters a remote source keeps; updated from the download threads."""

    FIELDS = ("listed", "filtered", "downloaded", "reused", "bytes", "retries", "failed", "requests")

    def __init__(self):
        self._lock = threading.Lock()
        self._n = dict.fromkeys(self.FIELDS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._n[name] += n

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._n[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict:
        with self._lock:
            return dict(self._n)


class Previous:
    """The previous ingest's pins: reuse stored bytes for unchanged objects."""

    def __init__(self, rows: Iterable[dict], layout):
        self.layout = layout
        self.by_uri: dict[str, dict] = {r["uri"]: r for r in rows}

    @classmethod
    def load(cls, layout) -> "Previous":
        path = layout.ingest / "pins.parquet"
        from negset.core import parquet as pq

        rows: list[dict] = []
        if path.is_file():
            try:
                rows = pq.read_table(path).to_pylist()
            except Exception as exc:  # a damaged pins file only costs a full download
                log.warning("%s: unreadable (%s); downloading everything again", path, exc)
        journal = layout.ingest / "pins-journal.jsonl"  # left by a run that was killed
        if journal.is_file():
            import json

            kept = 0
            for line in journal.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                    kept += 1
                except json.JSONDecodeError:  # the line being written when the run died
                    continue
            log.info("%s: resuming: %d objects stored by an interrupted ingest", journal, kept)
        return cls(rows, layout)

    def match(self, uri: str, etag: str, version_id: str = "") -> dict | None:
        """The previous pin of this exact object version when its bytes are still stored."""
        row = self.by_uri.get(uri)
        if row is None or not etag or row["etag"] != etag:
            return None
        if version_id and row["version_id"] and row["version_id"] != version_id:
            return None
        if row["status"] != "image" or not row["sha256"]:
            return None
        path = self.layout.object_path(row["sha256"])
        return row if path.is_file() else None

    # rejections that depend on the bytes alone (not on parameters such as max_image_pixels)
    CONTENT_REJECTS = ("not_image: empty file", "not_image: not an image (content not recognised)")

    def match_rejected(self, uri: str, etag: str) -> FetchError | None:
        """The previous verdict on this exact object when it was refused for its content alone."""
        row = self.by_uri.get(uri)
        if row is None or not etag or row["etag"] != etag or row["status"] != "rejected":
            return None
        if row["reason"] not in self.CONTENT_REJECTS:
            return None
        rule, _, reason = row["reason"].partition(": ")
        return FetchError(rule, f"{reason} (unchanged since the last ingest)")

    def read_stored(self, row: dict) -> bytes:
        data = self.layout.object_path(row["sha256"]).read_bytes()
        if atomic.sha256_bytes(data) != row["sha256"]:
            raise OSError(f"stored object {row['sha256']} is damaged")
        return data


def backoff_delay(attempt: int, base: float = 0.05, cap: float = 20.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def retrying(call: Callable[[], bytes], what: str, attempts: int, retryable: Callable[[Exception], str | None],
             stats: FetchStats | None = None, logger: logging.Logger = log, sleep=time.sleep):
    """Run ``call``; retry while ``retryable(exc)`` names a transient reason, logging each retry."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classified below
            reason = retryable(exc)
            if reason is None:
                raise
            if attempt == attempts:
                raise FetchError("unavailable", f"gave up after {attempts} attempts: {reason}") from None
            delay = backoff_delay(attempt)
            if stats is not None:
                stats.add("retries")
            logger.info("%s: %s; retry %d/%d in %.2fs", what, reason, attempt, attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def fetch(objects: Iterable[SourceObject], workers: int) -> Iterator[tuple[SourceObject, bytes | None, Exception | None]]:
    """Read objects with up to ``workers`` in flight; yield ``(obj, data, error)`` in listing order."""

    def read(obj: SourceObject):
        try:
            return obj, obj.read(), None
        except (OSError, FetchError) as exc:
            return obj, None, exc

    if workers <= 1:
        for obj in objects:
            yield read(obj)
        return
    window: deque = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="negset-fetch") as pool:
        for obj in objects:
            window.append(pool.submit(read, obj))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def build_sources(specs, root: Path, layout, previous: Previous | None = None) -> list[Source]:
    from negset.ingest.sources.local import LocalSource

    out: list[Source] = []
    for spec in specs:
        if spec.type == "local":
            out.append(LocalSource((root / spec.path).resolve(), recursive=spec.recursive, layout=layout,
                                   follow_symlinks=spec.follow_symlinks))
        elif spec.type == "s3":
            from negset.ingest.sources.s3 import S3Source

            out.append(S3Source(spec, previous=previous))
        elif spec.type == "http":
            from negset.ingest.sources.http import HttpSource

            out.append(HttpSource(spec, root=root, previous=previous))
        else:  # pragma: no cover - config.py validates the type
            raise ValueError(spec.type)
    return out
