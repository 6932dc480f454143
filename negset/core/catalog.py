"""The DuckDB catalog: one database under data/ with every step's table.

Each step writes its results as Parquet (what DVC versions) and loads them
here, so the catalog can always be rebuilt from the step outputs. All
stratification and quota queries run against these tables.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

from negset.core.errors import NegsetError, damaged_input
from negset.core.layout import Layout


# the step (and so the command, `negset STEP`) that writes each table's Parquet file
TABLE_STEP = {
    "images": "ingest",
    "labels": "ingest",
    "rejected_ingest": "ingest",
    "embeddings": "embed",
    "detections": "detect",
    "evidence": "detect",
    "tags": "tag",
    "selection": "select",
    "strata": "select",
}


def table_files(layout: Layout) -> dict[str, Path]:
    return {
        "images": layout.ingest / "images.parquet",
        "labels": layout.ingest / "labels.parquet",
        "rejected_ingest": layout.ingest / "rejected.parquet",
        "embeddings": layout.embed / "embeddings.parquet",
        "detections": layout.detect / "detections.parquet",
        "evidence": layout.detect / "evidence.parquet",
        "tags": layout.tags / "tags.parquet",
        "selection": layout.select / "selection.parquet",
        "strata": layout.select / "strata.parquet",
    }


@contextmanager
def connect(layout: Layout, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    layout.data.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(layout.catalog), read_only=read_only)
    except duckdb.IOException as exc:
        text = " ".join(str(exc).split())
        if "lock" in text.lower():  # DuckDB's own file lock: another process has the database open
            raise NegsetError(
                f"{layout.catalog}: the catalog is in use by another process ({text})",
                hint="close the other process (a `duckdb` shell on it, another build) and run again",
            ) from None
        raise NegsetError(  # unwritable, not a DuckDB file, a folder in its place...
            f"{layout.catalog}: cannot open the catalog ({text})",
            hint="make it writable, or delete it: every step rebuilds the tables it needs from data/",
        ) from None
    try:
        yield con
    finally:
        con.close()


def load(con: duckdb.DuckDBPyConnection, layout: Layout, *names: str) -> None:
    """(Re)load the named tables from their step's Parquet file."""
    files = table_files(layout)
    for name in names:
        path = files[name]
        if not path.exists():
            step = TABLE_STEP[name]
            raise NegsetError(f"{path}: missing; the '{step}' step has not run", hint=f"run `negset {step}` first")
        try:
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM read_parquet(?)", [str(path)])
        except (duckdb.InvalidInputException, duckdb.IOException) as exc:
            raise damaged_input(path, str(exc).splitlines()[0]) from None
