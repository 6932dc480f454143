"""Readers of the embed step's outputs (what later steps import): vectors, regions, class names."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from negset.core import parquet as pq
from negset.core.errors import NegsetError, damaged_input, missing_input
from negset.core.layout import Layout


def imagenet_names() -> list[str]:
    """The 1,000 ImageNet class names (first synonym), shipped with negset: no timm import."""
    return (Path(__file__).with_name("imagenet_classes.txt")).read_text(encoding="utf-8").splitlines()


_EMBEDDINGS_READ: dict = {}

VECTORS_FILE = "vectors.npy"  # the whole-image vectors as one float32 array, rows in embeddings.parquet's order
VECTORS_DIGEST = b"vectors_sha256"  # embeddings.parquet's schema metadata: sha256 of vectors.npy's array bytes


def vectors_digest(vectors: np.ndarray) -> str:
    """sha256 of a C-contiguous float32 array's bytes (0.03-0.08 s for 10,000 x 1,280, as it pages in)."""
    return hashlib.sha256(np.ascontiguousarray(vectors, np.float32).reshape(-1).view(np.uint8)).hexdigest()


def _mapped_vectors(layout: Layout, digest: bytes, rows: int) -> np.ndarray:
    """vectors.npy as a read-only memory map, checked against the digest embeddings.parquet records."""
    path = layout.embed / VECTORS_FILE
    if not path.exists():
        raise missing_input(path)
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise damaged_input(path, str(exc)) from None
    if vectors.dtype != np.float32 or vectors.ndim != 2 or len(vectors) != rows:
        raise damaged_input(path, f"{vectors.dtype} {vectors.shape}, embeddings.parquet has {rows} rows of float32 vectors")
    if vectors_digest(vectors) != digest.decode():
        raise damaged_input(path, "not the array embeddings.parquet was written with (sha256 differs)")
    return np.asarray(vectors)


def read_embeddings(layout: Layout) -> tuple[list[str], np.ndarray]:
    """(sha256 per row, float32 vectors) of ``data/embed/``: embeddings.parquet's rows, vectors.npy's array.

    The vectors are a memory map of ``vectors.npy``, whose sha256 the Parquet
    file's metadata records (the map and that check take 0.05 s at 10,000
    images; decoding a Parquet vector column and copying it out took
    0.25-0.9 s in each of tag and select). A file of an older version (or
    other code) without that digest has the vectors in its ``embedding``
    column, which is read instead. They are read once per process while the
    files are unchanged and are read-only: callers that change them take a copy.
    """
    path = layout.embed / "embeddings.parquet"
    npy = layout.embed / VECTORS_FILE
    st = os.stat(path)
    npy_st = npy.stat() if npy.exists() else None
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino,
           npy_st and (npy_st.st_size, npy_st.st_mtime_ns, npy_st.st_ino))
    if key not in _EMBEDDINGS_READ:
        t = pq.read_table(path, columns=["sha256"])
        digest = (t.schema.metadata or {}).get(VECTORS_DIGEST)
        if digest is not None:
            vectors = _mapped_vectors(layout, digest, t.num_rows)
        else:
            t = pq.read_table(path, columns=["sha256", "embedding"])
            col = t.column("embedding").combine_chunks()
            dim = col.type.list_size
            vectors = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
            vectors.flags.writeable = False
        _EMBEDDINGS_READ.clear()
        _EMBEDDINGS_READ[key] = (t.column("sha256").to_pylist(), vectors)
    shas, vectors = _EMBEDDINGS_READ[key]
    return list(shas), vectors


def vectors_path(layout: Layout) -> Path:
    return layout.embed / "regions.npy"


def read_regions(layout: Layout):
    """(sha256 list, kind array, vectors float16) of regions.parquet + regions.npy, or None when regions are off.

    The vectors are a read-only memory map of regions.npy (row i is the index's row i).
    """
    path = layout.embed / "regions.parquet"
    if not path.exists():
        return None
    t = pq.read_table(path)
    vec = np.load(vectors_path(layout), mmap_mode="r", allow_pickle=False)
    if len(vec) != t.num_rows:
        raise NegsetError(f"{vectors_path(layout)}: {len(vec)} vectors for {t.num_rows} rows of {path}; run `negset embed` again")
    return t.column("sha256").to_pylist(), np.asarray(t.column("kind").to_pylist()), vec
