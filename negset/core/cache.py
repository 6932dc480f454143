"""Per-image results cached by sha256 in Parquet parts (for work that depends on pixels only).

Parts are written atomically; a killed run keeps what it finished and a
refresh computes only what is new.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from negset.core import atomic
from negset.core import parquet as pq

log = logging.getLogger("negset.cache")


class ShaCache:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.rows: dict[str, dict] = {}
        for part in sorted(self.folder.glob("part-*.parquet")):
            try:
                for row in pq.read_table(part).to_pylist():
                    self.rows[row["sha256"]] = row
            except Exception as exc:
                log.warning("cache: ignoring unreadable %s (%s)", part, exc)

    def get(self, sha256: str, keys: set[str] | None = None) -> dict | None:
        """The cached row, if present and (when ``keys`` is given) with exactly those fields."""
        row = self.rows.get(sha256)
        if row is None or (keys is not None and set(row) - {"sha256"} != keys):
            return None
        return {k: v for k, v in row.items() if k != "sha256"}

    def add(self, rows: dict[str, dict]) -> None:
        if not rows:
            return
        n = len(list(self.folder.glob("part-*.parquet"))) if self.folder.exists() else 0
        table = pa.Table.from_pylist([{"sha256": s, **r} for s, r in rows.items()])
        atomic.write_parquet(table, self.folder / f"part-{n:06d}.parquet")
        for s, r in rows.items():
            self.rows[s] = {"sha256": s, **r}
