"""Cosine-similarity kernels: NumPy float32 for small products, torch (float32 or bfloat16) for large ones.

Rows are unit vectors, so a dot product is a cosine similarity. The public
functions pick the kernel by the size of the product:

- up to ``NUMPY_BELOW`` values: float32 in NumPy, because importing torch
  costs more than the math (measured on 2 cores: torch's import ~1.3 s; a
  5,000 x 5,000 x 1,280 product ~0.8 s in NumPy float32). The NumPy kernels
  compute what the torch float32 path computes (same float32 products, top-k
  sorted in descending order before the mean), so a refresh's ``select`` runs
  without importing torch;
- larger: torch, exact float32 up to ``EXACT_BELOW`` (candidates x positives)
  or ``EXACT_PAIRS_BELOW`` (pool x pool), else bfloat16 (AMX/AVX-512 where the
  CPU has them); decisions that bfloat16 could get wrong near a threshold are
  recomputed in float32 (``RECHECK_MARGIN``).
"""

from __future__ import annotations

import numpy as np

# products (rows x rows) up to this size run in NumPy float32 (exact), larger ones in torch
NUMPY_BELOW = 3e7
EXACT_BELOW = 5e8  # candidates x positives under this: exact float32 similarities
EXACT_PAIRS_BELOW = 1e7  # pool x pool / positives x positives products under this: float32
RECHECK_MARGIN = 0.02  # approximate (bfloat16) similarities this close to a threshold are recomputed


def _torch():
    import torch

    return torch


class RowView:
    """Some rows of a (memmapped) matrix, read a slice at a time (``view[a:b]`` gathers rows a..b)."""

    def __init__(self, V, rows):
        self.V, self.rows = V, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, sl):
        return self.V[self.rows[sl]]


# ---------------------------------------------------------------- NumPy float32 kernels


def _topk_rows(sims: np.ndarray, k: int) -> np.ndarray:
    """The k largest values of each row, in descending order."""
    m = sims.shape[1]
    part = sims if k >= m else np.partition(sims, m - k, axis=1)[:, m - k :]
    return -np.sort(-part, axis=1)


def _numpy_similarity_to_positives(C, P: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _numpy_leave_one_out(P: np.ndarray, k: int, chunk: int) -> np.ndarray:
    m = len(P)
    P32 = np.ascontiguousarray(P, dtype=np.float32)
    out = np.empty(m, np.float32)
    for start in range(0, m, chunk):
        sims = P32[start : start + chunk] @ P32.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -2.0
        out[start : start + len(sims)] = _topk_rows(sims, k).mean(axis=1, dtype=np.float32)
    return out


def _numpy_neighbours(V, order: np.ndarray, limit: float, chunk: int) -> tuple[np.ndarray, dict]:
    """(the rows ``order`` of V as float32, earlier rows at similarity >= ``limit`` of each row)."""
    n = len(order)
    X = np.ascontiguousarray(np.asarray(V[order]), dtype=np.float32)
    neighbours: dict[int, list[int]] = {}
    for start in range(0, n, chunk):
        sims = X[start : start + chunk] @ X.T
        rows, cols = np.nonzero(sims >= limit)
        for r, c in zip(rows + start, cols):
            if c < r:
                neighbours.setdefault(int(r), []).append(int(c))
    return X, neighbours


def keep_from_neighbours(keep_of: np.ndarray, neighbours: dict, X, threshold: float) -> np.ndarray:
    """Greedy groups: row r duplicates the first earlier kept row c in ``neighbours[r]`` within ``threshold``
    (exact float32 test on X's rows: numpy arrays or torch tensors)."""
    for r in sorted(neighbours):
        for c in neighbours[r]:
            if keep_of[c] == -1 and float(X[r] @ X[c]) >= 1.0 - threshold:
                keep_of[r] = c
                break
    return keep_of


# ---------------------------------------------------------------- the kernels select calls


def similarity_to_positives(
    C: np.ndarray, P: np.ndarray, k: int = 5, chunk: int = 8192, exact: bool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean of the top-k cosine similarities, max similarity, index of the nearest positive) per row of C.

    Rows are unit vectors; C may be float16, a memmap or a :class:`RowView`
    (read in chunks). ``exact=None`` picks float32 for small products and
    bfloat16 for large ones.
    """
    n, m = len(C), len(P)
    topk = np.zeros(n, np.float32)
    best = np.full(n, -1.0, np.float32)
    arg = np.zeros(n, np.int64)
    if m == 0 or n == 0:
        return topk, best, arg
    k = max(1, min(k, m))
    if exact is None:
        exact = n * m <= EXACT_BELOW
    if n * m <= NUMPY_BELOW:  # float32 in NumPy: no torch import
        return _numpy_similarity_to_positives(C, P, k, chunk)
    torch = _torch()
    dtype = torch.float32 if exact else torch.bfloat16
    Pt = torch.from_numpy(np.ascontiguousarray(P, dtype=np.float32)).to(dtype)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            block = np.asarray(C[start : start + chunk])
            if block.dtype not in (np.float16, np.float32):
                block = block.astype(np.float32)
            block = torch.from_numpy(np.ascontiguousarray(block)).to(dtype)
            sims = block @ Pt.T
            vals, idx = torch.topk(sims, k, dim=1)
            vals = vals.float()
            topk[start : start + len(block)] = vals.mean(dim=1).numpy()
            best[start : start + len(block)] = vals[:, 0].numpy()
            arg[start : start + len(block)] = idx[:, 0].numpy()
    return topk, best, arg


def exact_nearest(C: np.ndarray, P: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 (max similarity, nearest positive) for the given rows of C."""
    best = np.empty(len(rows), np.float32)
    arg = np.empty(len(rows), np.int64)
    P32 = np.ascontiguousarray(P, dtype=np.float32)
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk]
        s = np.asarray(C[r], dtype=np.float32) @ P32.T
        arg[start : start + len(r)] = s.argmax(axis=1)
        best[start : start + len(r)] = s.max(axis=1)
    return best, arg


def leave_one_out_similarity(P: np.ndarray, k: int = 5, chunk: int = 4096) -> np.ndarray:
    """Each positive's mean top-k cosine similarity to the *other* positives."""
    m = len(P)
    if m < 2:
        return np.zeros(m, np.float32)
    k = max(1, min(k, m - 1))
    exact = m * m <= EXACT_PAIRS_BELOW
    if m * m <= NUMPY_BELOW:  # float32 in NumPy: no torch import
        return _numpy_leave_one_out(P, k, chunk)
    torch = _torch()
    dtype = torch.float32 if exact else torch.bfloat16
    Pt = torch.from_numpy(np.ascontiguousarray(P, dtype=np.float32)).to(dtype)
    out = np.empty(m, np.float32)
    with torch.inference_mode():
        for start in range(0, m, chunk):
            sims = (Pt[start : start + chunk] @ Pt.T).float()
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -2.0
            out[start : start + len(sims)] = torch.topk(sims, k, dim=1).values.mean(dim=1).numpy()
    return out


def near_duplicate_groups(V: np.ndarray, order: np.ndarray, threshold: float, chunk: int = 2048) -> np.ndarray:
    """For rows ``order`` (in preference order) of V: -1 for kept rows, else the kept row (index into
    ``order``) it duplicates.

    Greedy: a row is kept unless it is within cosine distance ``threshold``
    of a row kept before it, so each group keeps its most preferred image.
    """
    n = len(order)
    keep_of = np.full(n, -1, np.int64)
    if n < 2:
        return keep_of
    if n * n <= NUMPY_BELOW:  # float32 in NumPy: no torch import
        X, neighbours = _numpy_neighbours(V, order, 1.0 - threshold, chunk)
        return keep_from_neighbours(keep_of, neighbours, X, threshold)
    torch = _torch()
    X = torch.from_numpy(np.ascontiguousarray(V[order], dtype=np.float32))
    exact = n * n <= EXACT_PAIRS_BELOW
    Xd = X if exact else X.to(torch.bfloat16)
    limit = 1.0 - threshold - (0 if exact else RECHECK_MARGIN)
    neighbours: dict[int, list[int]] = {}
    with torch.inference_mode():
        for start in range(0, n, chunk):
            sims = (Xd[start : start + chunk] @ Xd.T).float().numpy()
            rows, cols = np.nonzero(sims >= limit)
            for r, c in zip(rows + start, cols):
                if c < r:
                    neighbours.setdefault(int(r), []).append(int(c))
    return keep_from_neighbours(keep_of, neighbours, X, threshold)
