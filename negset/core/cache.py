"""Results cached by key (an image's sha256, or sha256 plus more) in parts under one folder.

For work that depends on the pixels (and the model) alone: whole-image
embeddings, region vectors, pixel statistics, report thumbnails. Each part is
one file written atomically and never changed, so a killed run keeps the parts
it finished and a refresh computes only what is new.

A part is named by the hash of its keys plus a random suffix
(``part-<keys hash>-<random>.<ext>``): processes that add parts to one folder at
once (Dask workers, two steps) never pick the same name, so none overwrites
another's part. When two parts hold one key (two workers did the same image),
the first by name is used: both hold the same work on the same pixels.

How a part stores its values is the cache's ``PartFormat``: rows of scalar
fields in Parquet (``RowParts``, here), vectors in the step that makes them.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path
from typing import Generic, Mapping, Protocol, TypeVar

from negset.core import atomic
from negset.core import parquet as pq

log = logging.getLogger("negset.cache")

V = TypeVar("V")


class PartFormat(Protocol[V]):
    """How one part file holds {key: value}."""

    suffix: str  # the file extension, with its dot (a format may also read ``legacy_suffixes``)

    def write(self, path: Path, rows: Mapping[str, V]) -> None: ...

    def read(self, path: Path) -> dict[str, V]: ...


def part_name(keys, suffix: str) -> str:
    """``part-<hash of the keys>-<random>``: unique even when two writers cache the same keys."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    return f"part-{digest}-{uuid.uuid4().hex[:12]}{suffix}"


class PartCache(Generic[V]):
    """{key: value} read from every part in ``folder``; ``add`` writes a new part."""

    def __init__(self, folder: Path, fmt: PartFormat[V]):
        self.folder = Path(folder)
        self.format = fmt
        self.rows: dict[str, V] = {}
        self.parts: list[Path] = []  # the parts read and written (what ``compact`` may merge)
        suffixes = (fmt.suffix, *getattr(fmt, "legacy_suffixes", ()))  # parts older versions wrote, still read
        for part in sorted(p for p in self.folder.glob("part-*") if p.suffix in suffixes):
            try:
                got = fmt.read(part)
            except Exception as exc:  # parts are written atomically; be safe anyway: its items are computed again
                log.warning("cache: ignoring unreadable %s (%s)", part, exc)
                continue
            self.parts.append(part)
            for key, value in got.items():
                self.rows.setdefault(key, value)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: str) -> V | None:
        return self.rows.get(key)

    def add(self, rows: Mapping[str, V]) -> Path | None:
        """Write ``rows`` as one new part (nothing when empty); return its path."""
        if not rows:
            return None
        path = self.folder / part_name(rows, self.format.suffix)
        self.format.write(path, rows)
        self.rows.update(rows)
        self.parts.append(path)
        return path

    def compact(self, most: int = 8) -> int:
        """Merge every part into one when there are more than ``most`` (or any in a legacy format); the number removed.

        A build writes a part per checkpoint and each refresh one more, and every
        step reads them all: 175 detector parts of 10,000 images took 0.6 s to
        read, one part 0.2 s. Call it when no other process adds parts to this
        folder (at the end of a step, after its workers). The merged part is
        written before the old ones go, so a killed compaction leaves duplicates
        of equal rows, never a gap. Rows of dicts with different fields (a cache
        that holds rows of older code too) are left as they are.
        """
        legacy = any(p.suffix != self.format.suffix for p in self.parts)  # rewritten in the current format
        if (len(self.parts) <= most and not legacy) or not self.rows:
            return 0
        values = iter(self.rows.values())
        first = next(values)
        if isinstance(first, dict) and any(set(v) != set(first) for v in values):
            return 0
        merged = self.add(dict(self.rows))
        old = [p for p in self.parts if p != merged]
        for part in old:
            part.unlink(missing_ok=True)
        self.parts = [merged]
        log.debug("cache: %d parts of %s merged into %s", len(old), self.folder, merged.name)
        return len(old)


class RowParts:
    """Parquet parts of one row of scalar fields per key (the key in column ``key_column``)."""

    suffix = ".parquet"

    def __init__(self, key_column: str = "sha256"):
        self.key_column = key_column

    def write(self, path: Path, rows: Mapping[str, dict]) -> None:
        import pyarrow as pa

        atomic.write_parquet(pa.Table.from_pylist([{self.key_column: k, **r} for k, r in rows.items()]), path)

    def read(self, path: Path) -> dict[str, dict]:
        out = {}
        for row in pq.read_table(path).to_pylist():
            out[row.pop(self.key_column)] = row
        return out


def row_cache(folder: Path) -> PartCache[dict]:
    """A cache of one row of fields per image sha256 (pixel statistics, thumbnails)."""
    return PartCache(folder, RowParts())


def fields(cache: PartCache[dict], key: str, names: set[str]) -> dict | None:
    """The cached row of ``key`` when it has exactly the fields ``names`` (rows of older code are not reused)."""
    row = cache.get(key)
    return row if row is not None and set(row) == names else None
