"""Reading one Parquet file without ``pyarrow.dataset``.

``pyarrow.parquet.read_table`` imports ``pyarrow.dataset`` (about 0.45 s on this
machine) even for a single file, and every pipeline step is its own process
under ``dvc repro``; ``ParquetFile.read`` returns the same table without it.
Modules use it as ``from negset import parquet as pq``.

A missing or damaged file is a ``NegsetError`` naming it (and the step that
writes it), not an ``ArrowInvalid`` or ``FileNotFoundError``.
"""

from __future__ import annotations

import os

import pyarrow as _pa
import pyarrow.parquet as _pq

from negset.core.errors import damaged_input, missing_input


def read_table(source, columns: list[str] | None = None):
    """The table in one Parquet file (a path or a file-like object), optionally only ``columns``."""
    is_path = isinstance(source, (str, os.PathLike))
    if is_path and not os.path.exists(source):
        raise missing_input(source)
    try:
        with _pq.ParquetFile(source) as f:
            return f.read(columns=columns)
    except (_pa.ArrowInvalid, _pa.ArrowTypeError, OSError, KeyError) as exc:
        if not is_path or (isinstance(exc, OSError) and not isinstance(exc, _pa.ArrowException)
                           and getattr(exc, "errno", None) in (13, 1)):
            raise  # a permission problem: negset.core.errors.user_error names it
        raise damaged_input(source, exc) from None
