"""What ingest learnt about local files, kept by path and file status, so a refresh does not re-read them.

A local file whose size, modification time, change time and inode are those
recorded when it was last read (and whose stored object is still there) is
not read, hashed or probed again: its sha256 and header come from here. This
is the test DVC and git use for their own state; ``ctime`` cannot be set back
by a program, so a rewrite of the same size within the same second is still
seen. The cache lives in ``data/cache/ingest/`` (not a DVC output): without it
ingest reads everything, with the same result.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from negset.core import atomic
from negset.core import parquet as pq
from negset.core.imageio import ImageInfo

log = logging.getLogger("negset.ingest")

# a file changed this recently may change again within the file system's timestamp
# granularity without its status showing it ("racy" in git's terms): it is not recorded
RACY_NS = 2_000_000_000

SCHEMA = pa.schema(
    [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("ctime_ns", pa.int64()),
     ("ino", pa.int64()), ("sha256", pa.string()), ("format", pa.string()), ("width", pa.int32()),
     ("height", pa.int32())]
)


@dataclass(frozen=True)
class KnownImage:
    """Stands in for a local file's bytes when the file is unchanged since it was last read."""

    sha256: str
    info: ImageInfo
    size: int

    def __len__(self) -> int:  # no bytes were read
        return 0


def _status(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class LocalStatCache:
    def __init__(self, layout):
        self.layout = layout
        self.path = layout.data / "cache" / "ingest" / "local.parquet"
        self.rows: dict[str, dict] = {}
        self.seen: dict[str, dict] = {}
        self.reused = 0
        if self.path.is_file():
            try:
                self.rows = {r["path"]: r for r in pq.read_table(self.path).to_pylist()}
            except Exception as exc:  # a damaged cache costs a full read, nothing else
                log.warning("%s: unreadable (%s); reading every local file", self.path, exc)

    def lookup(self, path: Path, max_pixels: int) -> KnownImage | None:
        """The recorded image when ``path`` is unchanged and its object is stored; else None."""
        row = self.rows.get(str(path))
        if row is None:
            return None
        status = _status(path)
        if status is None or status != (row["size"], row["mtime_ns"], row["ctime_ns"], row["ino"]):
            return None
        if row["width"] < 1 or row["height"] < 1 or row["width"] * row["height"] > max_pixels:
            return None  # the limit changed: probe it again for the exact verdict
        if not os.path.isfile(self.layout.object_file(row["sha256"])):
            return None
        self.seen[str(path)] = row
        self.reused += 1
        return KnownImage(row["sha256"], ImageInfo(row["format"], row["width"], row["height"]), row["size"])

    def record(self, path: Path, data: bytes, sha256: str, info: ImageInfo) -> None:
        """Remember an image just read from ``path`` (its status now; skipped if it changed meanwhile)."""
        status = _status(path)
        if status is None or status[0] != len(data):
            return
        size, mtime_ns, ctime_ns, ino = status
        if time.time_ns() - max(mtime_ns, ctime_ns) < RACY_NS:
            return
        self.seen[str(path)] = dict(path=str(path), size=size, mtime_ns=mtime_ns, ctime_ns=ctime_ns, ino=ino,
                                    sha256=sha256, format=info.format, width=info.width, height=info.height)

    def save(self) -> None:
        """Keep what this run saw (files that left the sources are dropped)."""
        if self.seen == self.rows:
            return
        rows = [self.seen[k] for k in sorted(self.seen)]
        atomic.write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), self.path)
