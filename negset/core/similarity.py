"""Cosine-similarity kernels in NumPy float32, for the pool sizes where importing torch costs more than the math.

``negset.select`` uses these for exact (float32) products and for approximate
ones small enough that float32 in NumPy beats torch's import plus a bfloat16
product (measured on 2 cores: torch's import ~1.3 s; a 5,000 x 5,000 x 1,280
product ~0.8 s in NumPy float32). They compute what the torch float32 path
computes (same float32 products, top-k sorted in descending order before the
mean), so a refresh's ``select`` and ``report`` run without importing torch.
"""

from __future__ import annotations

import numpy as np

# products (rows x rows) up to this size run here in float32 (exact), larger ones in torch
# (float32, or bfloat16 on large pools; see negset.select)
NUMPY_BELOW = 3e7


def _topk_rows(sims: np.ndarray, k: int) -> np.ndarray:
    """The k largest values of each row, in descending order."""
    m = sims.shape[1]
    part = sims if k >= m else np.partition(sims, m - k, axis=1)[:, m - k :]
    return -np.sort(-part, axis=1)


def similarity_to_positives(C, P: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean top-k similarity, max similarity, index of the nearest positive) per row of C; float32."""
    n = len(C)
    topk = np.zeros(n, np.float32)
    best = np.full(n, -1.0, np.float32)
    arg = np.zeros(n, np.int64)
    P32 = np.ascontiguousarray(P, dtype=np.float32)
    for start in range(0, n, chunk):
        block = np.asarray(np.asarray(C[start : start + chunk]), dtype=np.float32)
        sims = block @ P32.T
        vals = _topk_rows(sims, k)
        topk[start : start + len(block)] = vals.mean(axis=1, dtype=np.float32)
        best[start : start + len(block)] = vals[:, 0]
        arg[start : start + len(block)] = sims.argmax(axis=1)
    return topk, best, arg


def leave_one_out_similarity(P: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Each row's mean top-k similarity to the other rows of P; float32."""
    m = len(P)
    P32 = np.ascontiguousarray(P, dtype=np.float32)
    out = np.empty(m, np.float32)
    for start in range(0, m, chunk):
        sims = P32[start : start + chunk] @ P32.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -2.0
        out[start : start + len(sims)] = _topk_rows(sims, k).mean(axis=1, dtype=np.float32)
    return out


def near_duplicate_groups(V, order: np.ndarray, threshold: float, limit: float, chunk: int) -> np.ndarray:
    """``negset.select.step.near_duplicate_groups`` in float32: candidates at similarity >= ``limit``, then the exact test."""
    n = len(order)
    keep_of = np.full(n, -1, np.int64)
    X = np.ascontiguousarray(np.asarray(V[order]), dtype=np.float32)
    neighbours: dict[int, list[int]] = {}
    for start in range(0, n, chunk):
        sims = X[start : start + chunk] @ X.T
        rows, cols = np.nonzero(sims >= limit)
        for r, c in zip(rows + start, cols):
            if c < r:
                neighbours.setdefault(int(r), []).append(int(c))
    return keep_from_neighbours(keep_of, neighbours, X, threshold)


def keep_from_neighbours(keep_of: np.ndarray, neighbours: dict, X, threshold: float) -> np.ndarray:
    """Greedy groups: row r duplicates the first earlier kept row c in ``neighbours[r]`` within ``threshold``
    (exact float32 test on X's rows: numpy arrays or torch tensors)."""
    for r in sorted(neighbours):
        for c in neighbours[r]:
            if keep_of[c] == -1 and float(X[r] @ X[c]) >= 1.0 - threshold:
                keep_of[r] = c
                break
    return keep_of
