"""Atomic writes: write beside the target, then rename over it.

A crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; the results get the usual permissions
_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _vector_columns(schema) -> list[str]:
    import pyarrow as pa

    return [f.name for f in schema if pa.types.is_fixed_size_list(f.type) and pa.types.is_floating(f.type.value_type)]


def write_parquet(table, path: Path) -> None:
    """Write a pyarrow Table atomically (deterministic bytes for equal tables).

    Vector columns (fixed-size lists of floats: embeddings, centroids) are written
    without dictionary encoding and with BYTE_STREAM_SPLIT before zstd: measured on
    10,000 1280-d embeddings, 35 MB instead of 37 MB and read in 0.14 s instead of
    0.26 s (every step after embed reads them).
    """
    import pyarrow.parquet as pq

    vectors = _vector_columns(table.schema)
    options = {}
    if vectors:
        options = {
            # (nested columns are named by their leaf: a list column's values are NAME.list.element)
            "use_dictionary": [path for name in table.column_names if name not in vectors
                               for path in (name, f"{name}.list.element")],
            "use_byte_stream_split": [f"{name}.list.element" for name in vectors],
        }
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", **options)


def write_npy(path: Path, array) -> None:
    """Write one NumPy array as a ``.npy`` file atomically (readable with ``np.load(mmap_mode="r")``)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def write_npz(path: Path, **arrays) -> None:
    """Write named NumPy arrays as one uncompressed ``.npz`` file atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a folder under a temporary name, then swap it in whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
