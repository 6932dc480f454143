"""Readers of the embed step's outputs (what later steps import): vectors, regions, class names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from negset.core import parquet as pq
from negset.core.errors import NegsetError
from negset.core.layout import Layout


def imagenet_names() -> list[str]:
    """The 1,000 ImageNet class names (first synonym), shipped with negset: no timm import."""
    return (Path(__file__).with_name("imagenet_classes.txt")).read_text(encoding="utf-8").splitlines()


_EMBEDDINGS_READ: dict = {}


def read_embeddings(layout: Layout) -> tuple[list[str], np.ndarray]:
    """(sha256 per row, float32 vectors) of ``data/embed/embeddings.parquet``.

    The vectors are read once per process while the file is unchanged (report
    asks twice) and are read-only: callers that change them take a copy.
    """
    path = layout.embed / "embeddings.parquet"
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _EMBEDDINGS_READ:
        t = pq.read_table(path, columns=["sha256", "embedding"])
        shas = t.column("sha256").to_pylist()
        col = t.column("embedding").combine_chunks()
        dim = col.type.list_size
        vectors = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
        vectors.flags.writeable = False
        _EMBEDDINGS_READ.clear()
        _EMBEDDINGS_READ[key] = (shas, vectors)
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
