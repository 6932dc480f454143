"""List files: one entry a line in a text file, or one column of a CSV (positives lists, URL lists)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable


def read_list_entries(
    path: Path, columns: tuple[str, ...], unknown_header: Callable[[list[str]], None] | None = None
) -> list[tuple[int, str]]:
    """(line number, entry) of each non-empty entry of ``path``.

    A ``.csv`` gives the first of ``columns`` its header names (case and spaces
    ignored), or its first column when the first row names none of them (the
    first row is then an entry too); any other file gives its lines, blank
    lines and ``#`` comments skipped.
    """
    if path.suffix.lower() != ".csv":
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        return [(n, line) for n, line in enumerate(lines, 1) if line and not line.startswith("#")]
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    col = next((header.index(c) for c in columns if c in header), None)
    if col is None and unknown_header is not None:
        unknown_header(rows[0])
    body, start = (rows[1:], 2) if col is not None else (rows, 1)
    col = col or 0
    return [(n, r[col].strip()) for n, r in enumerate(body, start) if len(r) > col and r[col].strip()]
