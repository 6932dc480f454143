"""Read a negative-set manifest (``manifest.parquet`` or ``manifest.csv``) with clear errors.

Consumers of a release (training code, ``dvc get``) read the manifest with
``read_manifest``; a wrong or damaged file names the column or row at fault.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from negset.core.errors import NegsetError

REQUIRED = {"uri": pa.string(), "sha256": pa.string(), "stratum": pa.string(), "reason": pa.string()}
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read_manifest(path: Path | str) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise NegsetError(f"{path}: manifest not found", hint="build it with `negset build` or `dvc repro`")
    try:
        if path.suffix == ".csv":
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=dict(REQUIRED)))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, ValueError) as exc:
        raise NegsetError(f"{path}: not a readable manifest: {str(exc).splitlines()[0][:200]}") from None
    for name, kind in REQUIRED.items():
        if name not in table.column_names:
            raise NegsetError(f"{path}: column '{name}' is missing", hint=f"a manifest has columns {', '.join(REQUIRED)}")
        if table.schema.field(name).type not in (kind, pa.large_string()):
            raise NegsetError(f"{path}: column '{name}' should be text, found {table.schema.field(name).type}")
    for i, (uri, sha) in enumerate(zip(table.column("uri").to_pylist(), table.column("sha256").to_pylist())):
        if not uri:
            raise NegsetError(f"{path}: row {i}: empty uri")
        if not isinstance(sha, str) or not SHA256.match(sha):
            raise NegsetError(f"{path}: row {i}: sha256 {sha!r} is not 64 lowercase hex digits")
    shas = table.column("sha256").to_pylist()
    if len(set(shas)) != len(shas):
        raise NegsetError(f"{path}: the same image (sha256) is listed twice")
    return table
