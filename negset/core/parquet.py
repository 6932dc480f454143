"""Reading one Parquet file without ``pyarrow.dataset``.

``pyarrow.parquet.read_table`` imports ``pyarrow.dataset`` (about 0.45 s on this
machine) even for a single file, and every pipeline step is its own process
under ``dvc repro``; ``ParquetFile.read`` returns the same table without it.
Modules use it as ``from negset import parquet as pq``.
"""

from __future__ import annotations

import pyarrow.parquet as _pq


def read_table(source, columns: list[str] | None = None):
    """The table in one Parquet file (a path or a file-like object), optionally only ``columns``."""
    with _pq.ParquetFile(source) as f:
        return f.read(columns=columns)
