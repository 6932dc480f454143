"""Cosine-similarity kernels: NumPy float32 for small products, torch (float32 or bfloat16) for large ones,
an inverted-file index over the positives for the largest.

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

:func:`estimate_similarity` is what the selection calls for the candidates'
top-k similarity to the positives: up to ``INDEX_ABOVE`` (candidates x
positives) it is :func:`similarity_to_positives`, exact; above, a
:class:`PositiveIndex` (spherical k-means lists over the positives, each
candidate scored against the positives of its ``nprobe`` nearest lists only:
about ``PROBE_SHARE`` of the products; in float32 a top-k is the exact top-k
of a subset, never above the exact value; in int8 (:func:`int8_products`) it
may lie either side by the rounding, and ``Estimate.refine`` gives the
float32 values of rows near a threshold) answers, and a seeded
sample of rows is scored exactly too, so the :class:`Estimate` knows its own
error (recall of the top-k, largest error of the top-k mean and of the
nearest similarity). The selection then re-scores exactly (float32, all
dimensions, all positives: :func:`exact_similarity`) every row whose decision
lies within :meth:`Estimate.margin` of a threshold, and every pick.

Once a selection is approximate it runs torch anyway, so its exact re-scoring
and the estimate's error sample use torch at every size (``numpy_ok=False``):
NumPy's float32 product runs on one core here, at about a tenth of the speed.

Threads: the large paths run in torch (its intra-op threads: every core),
gathers of scattered rows (``RowView``: ``index_select``), float16 -> float32
conversions and top-k included; NumPy's fancy indexing, float16 conversion,
argmax and partition run on one core, so the NumPy kernels stay for the small
products only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

# products (rows x rows) up to this size run in NumPy float32 (exact), larger ones in torch
NUMPY_BELOW = 3e7
EXACT_BELOW = 5e8  # candidates x positives under this: exact float32 similarities
EXACT_PAIRS_BELOW = 1e7  # pool x pool / positives x positives products under this: float32
RECHECK_MARGIN = 0.02  # approximate (bfloat16) similarities this close to a threshold are recomputed
INDEX_ABOVE = EXACT_BELOW  # candidates x positives over this: estimate_similarity approximates (index or bfloat16)
INDEX_MIN_POSITIVES = 512  # fewer positives (or index=False): brute-force bfloat16 instead of an index
LIST_SIZE = 256  # positives per inverted list (about): products of this width run near the float32 peak
PROBE_SHARE = 0.05  # share of the lists each candidate is scored against (at least MIN_PROBE lists)
MIN_PROBE = 2
SAMPLE_ROWS = 2000  # rows of an approximate estimate scored exactly too, to measure its error
MARGIN_SAFETY = 2.0  # a decision is re-scored when within this x the sampled error (+ MARGIN_FLOOR) of its threshold
MARGIN_FLOOR = 0.002  # bfloat16 estimates: at least this (it rounds a similarity in [0.5, 1) by up to 2^-9)
INDEX_FLOOR = 0.001  # index estimates (float32): at least this, for what the sample did not see
FLOAT_SLACK = 1e-5  # float32 sums of the same products in another order differ by less
MARGIN_WINDOW_MIN = 30  # sampled rows near a threshold needed to measure the error there (else: the largest error)


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
    C: np.ndarray, P: np.ndarray, k: int = 5, chunk: int = 8192, exact: bool | None = None, numpy_ok: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean of the top-k cosine similarities, max similarity, index of the nearest positive) per row of C.

    Rows are unit vectors; C may be float16, a memmap or a :class:`RowView`
    (read in chunks). ``exact=None`` picks float32 for small products and
    bfloat16 for large ones. ``numpy_ok=False``: torch even for a small product (a selection that runs torch
    already: NumPy's product runs on one core at about a tenth of torch's speed here; the same float32 values
    up to the order of summation).
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
    if n * m <= NUMPY_BELOW and numpy_ok:  # float32 in NumPy: no torch import
        return _numpy_similarity_to_positives(C, P, k, chunk)
    torch = _torch()
    int8 = not exact and int8_products()
    dtype = torch.float32 if exact else torch.bfloat16
    Pt = torch.from_numpy(np.ascontiguousarray(P, dtype=np.float32))
    if int8:  # one scale for all of P: each row's int32 products order as its dequantised values do
        qPt, p_scale = _int8(Pt, per_row=False)
        qPt = qPt.T.contiguous()
    else:
        # P transposed once, contiguous: products with a (d x m) matrix ran 1.2-1.45x faster here than with P.T
        # (MKL float32 57 -> 83 GFLOPS a core at 1,024 x 1,280 x 10,000; int8 361 -> 430 GOPS)
        PtT = Pt.to(dtype).T.contiguous()
    # some rows of a matrix: gathered by torch (every core) instead of NumPy fancy indexing (one core)
    Vt = _tensor(C.V) if isinstance(C, RowView) else None
    if int8:
        chunk = min(chunk, INT8_CHUNK)

    def block_of(start: int) -> None:
        with torch.inference_mode():
            if Vt is not None:
                block = Vt.index_select(0, torch.from_numpy(np.asarray(C.rows[start : start + chunk], np.int64)))
            else:
                block = _tensor(np.ascontiguousarray(np.asarray(C[start : start + chunk])))
            if block.dtype not in (torch.float16, torch.float32):
                block = block.float()
            if int8:
                qx, x_scale = _int8(block.float())
                sims = torch._int_mm(qx, qPt)  # exact int32 sums of the int8 products
            else:
                sims = block.to(dtype) @ PtT
            if k == 1:  # the same value and index as topk, several times faster
                vals, idx = sims.max(dim=1, keepdim=True)
            else:
                vals, idx = torch.topk(sims, k, dim=1)
            vals = vals.float() * (x_scale[:, None] * p_scale) if int8 else vals.float()
            topk[start : start + len(block)] = vals.mean(dim=1).numpy()
            best[start : start + len(block)] = vals[:, 0].numpy()
            arg[start : start + len(block)] = idx[:, 0].numpy()

    in_threads(block_of, range(0, n, chunk))  # blocks in parallel, one torch thread each
    return topk, best, arg


# int8 blocks of at most this many rows: their float32 copy, codes and int32 products stay under glibc's 32 MB
# mmap threshold, so each block reuses freed heap memory instead of faulting in fresh pages (1.6x faster here)
INT8_CHUNK = 4096
_INT8: list[bool] = []


def int8_products() -> bool:
    """Whether the approximate products (the index's lists; the brute force, else bfloat16) run in int8
    (``torch._int_mm``, exact int32 sums): on CPUs with int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI,
    AMX). AMD EPYC Zen 4, one core, 4,096 x 1,280 x 2,000 against a contiguous transpose: int8 430 GOPS, bfloat16
    about 186, float32 83. Read once per process; ``NEGSET_INT8=0`` turns them off."""
    if not _INT8:
        import os

        flags = ""
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith("flags")), "")
        except OSError:
            pass
        vnni = any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
        _INT8.append(vnni and os.environ.get("NEGSET_INT8", "1") != "0" and hasattr(_torch(), "_int_mm"))
    return _INT8[0]


def _int8(X, per_row: bool = True):
    """(int8 codes, scale) of a float32 torch matrix: X ~ codes * scale, symmetric rounding to 127 levels, one
    scale per row (a column vector's worth) or one for the whole matrix."""
    torch = _torch()
    top = torch.linalg.vector_norm(X, ord=float("inf"), dim=1 if per_row else None)  # the largest |value|
    inv = 127.0 / torch.clamp(top, min=1e-12)
    codes = (X * (inv[:, None] if per_row else inv)).round_().to(torch.int8)
    return codes, 1.0 / inv if per_row else float(1.0 / inv)


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


# ---------------------------------------------------------------- approximate top-k: inverted lists over the positives


def spherical_kmeans(X: np.ndarray, lists: int, seed: int = 0, iters: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(unit centroids, list of each row): Lloyd iterations on cosine similarity, seeded first centroids.

    An emptied list takes the row farthest from its centroid, so every list
    keeps members.
    """
    rng = np.random.default_rng(seed)
    X = np.ascontiguousarray(X, dtype=np.float32)
    cent = X[np.sort(rng.choice(len(X), lists, replace=False))].copy()
    for _ in range(iters):
        sims = X @ cent.T
        assign = sims.argmax(axis=1)
        got = sims[np.arange(len(X)), assign]
        counts = np.bincount(assign, minlength=lists)
        for j in np.flatnonzero(counts == 0):
            far = int(np.argmin(got))
            assign[far], got[far] = j, 2.0
        order = np.argsort(assign, kind="stable")  # each list's rows contiguous: one block sum per list
        ends = np.searchsorted(assign[order], np.arange(lists + 1))
        Xo = X[order]
        cent = np.stack([Xo[a:b].sum(axis=0) for a, b in zip(ends[:-1], ends[1:])])
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    return cent, (X @ cent.T).argmax(axis=1)


class PositiveIndex:
    """Inverted lists over the positives: each candidate is scored against the positives of its nearest lists only.

    Scores are float32 products (the same as the exact kernels' up to the
    order of summation), so an estimated top-k is the exact top-k of a subset
    of the positives: never above the exact value. What it misses is measured
    by :func:`estimate_similarity` on a sample.
    """

    def __init__(self, P: np.ndarray, seed: int = 0, list_size: int = LIST_SIZE, probe_share: float = PROBE_SHARE,
                 int8: bool | None = None):
        P32 = np.ascontiguousarray(P, dtype=np.float32)
        self.lists = max(1, min(len(P32) // max(1, list_size), len(P32)))
        self.centroids, assign = spherical_kmeans(P32, self.lists, seed)
        order = np.argsort(assign, kind="stable")
        self.members = order  # positive index of each grouped row
        self.bounds = np.searchsorted(assign[order], np.arange(self.lists + 1))
        # LANES - 1 zero rows after the last list: every list's product can run LANES-wide (below)
        self.grouped = np.ascontiguousarray(np.concatenate([P32[order], np.zeros((LANES - 1, P32.shape[1]), np.float32)]))
        self.nprobe = min(self.lists, max(MIN_PROBE, int(np.ceil(probe_share * self.lists))))
        self.int8 = int8_products() if int8 is None else int8
        if self.int8:  # int8 codes of the grouped positives, one scale for all: int32 products order as values do
            codes, self.scale = _int8(_torch().from_numpy(self.grouped), per_row=False)
            self.codes = codes.T.contiguous()  # (d x positives): each list's columns a slice (1.14x a .T view)

    def describe(self) -> str:
        return (f"inverted lists: {self.lists} k-means lists of about {len(self.members) // self.lists} positives, "
                f"{self.nprobe} probed per row ({self.nprobe / self.lists:.1%} of the products), "
                f"{'int8' if self.int8 else 'float32'}")

    def search(self, C, k: int, chunk: int = 16384, project: np.ndarray | None = None, int8: bool | None = None):
        """(top-k similarities in descending order, their positive indices, projections or None) per row of C
        (approximate).

        A row whose probed lists hold fewer than k positives gets -3.0 (index 0) in the places left.
        ``project`` (dims x d, float32): each row's ``row @ project`` as well, from the same float32 block (the
        selection's k-center projection: no second read and conversion of the pool).
        Runs in torch (every core: gathers, conversions and top-k too). The lists' products are int8 where the
        index was made so (``int8``: False for float32 ones, whose top-k never exceeds the exact value).
        """
        torch = _torch()
        n = len(C)
        int8 = self.int8 if int8 is None else int8 and self.int8
        if int8:
            chunk = min(chunk, INT8_CHUNK)
        vals = np.empty((n, k), np.float32)
        idx = np.empty((n, k), np.int64)
        cent, grouped = torch.from_numpy(self.centroids), torch.from_numpy(self.grouped)
        # the probe and the projection in one product: the centroids' columns, then the projection's
        both = cent.T if project is None else torch.cat([cent.T, torch.from_numpy(np.asarray(project, np.float32))], 1)
        both = _lane_padded(both)
        proj = None if project is None else np.empty((n, project.shape[1]), np.float32)

        def block(start: int) -> None:
            with torch.inference_mode():
                X = _float32_tensor(np.asarray(C[start : start + chunk]))
                XB = X @ both
                if int8:
                    v, i = self._search_block(_int8(X), k, XB[:, : self.lists], self.codes)
                else:
                    v, i = self._search_block(X, k, XB[:, : self.lists], grouped)
                vals[start : start + len(X)], idx[start : start + len(X)] = v.numpy(), self.members[i.numpy()]
                if proj is not None:
                    proj[start : start + len(X)] = XB[:, self.lists : self.lists + proj.shape[1]].numpy()

        in_threads(block, range(0, n, chunk))
        return vals, idx, proj

    def _search_block(self, X, k: int, to_centroids, grouped):
        """One block: the (row, probed list) pairs grouped by list, one product per list against its positives,
        each pair's best k, then each row's best k of its probes (descending; grouped indices). X is float32 with
        ``grouped`` the grouped positives' rows, or (int8 codes, row scales) with ``grouped`` their int8 codes'
        columns."""
        torch = _torch()
        quantised = isinstance(X, tuple)
        if quantised:
            X, x_scale = X
        m, probe = len(X), self.nprobe
        probed = torch.topk(to_centroids, probe, dim=1).indices.reshape(-1)  # list of each (row, probe) pair
        order = torch.argsort(probed, stable=True)
        counts = torch.bincount(probed, minlength=self.lists).tolist()
        found_v = torch.full((m * probe, k), -3.0, dtype=torch.float32)
        found_i = torch.zeros((m * probe, k), dtype=torch.int64)
        at = 0
        for j, cnt in enumerate(counts):
            sel, at = order[at : at + cnt], at + cnt
            lo, hi = int(self.bounds[j]), int(self.bounds[j + 1])
            if cnt == 0 or hi == lo:
                continue
            # the product over a width rounded up to LANES (the next list's first rows, or the zero rows after
            # the last), its extra columns dropped before the top-k: the fast GEMM kernels for any list size
            of = sel // probe  # the block row of each pair
            if quantised:
                sims = torch._int_mm(X.index_select(0, of), grouped[:, lo : lo + _lanes(hi - lo)])
            else:
                sims = X.index_select(0, of) @ grouped[lo : lo + _lanes(hi - lo)].T
            v, cols = torch.topk(sims[:, : hi - lo], min(k, hi - lo), dim=1)
            if quantised:
                v = v.float() * (x_scale[of][:, None] * self.scale)
            found_v[sel, : v.shape[1]] = v
            found_i[sel, : v.shape[1]] = cols + lo
        top_v, top = torch.topk(found_v.reshape(m, probe * k), k, dim=1)
        return top_v, torch.gather(found_i.reshape(m, probe * k), 1, top)


LANES = 16  # products whose output width is a multiple of this ran 10-35% faster (MKL, AMD EPYC: 167 -> 176 columns)


def _lanes(width: int) -> int:
    return -(-width // LANES) * LANES


def _lane_padded(M):
    """The (d x w) torch matrix with zero columns up to a multiple of LANES (callers slice them off)."""
    torch = _torch()
    extra = _lanes(M.shape[1]) - M.shape[1]
    return M if extra == 0 else torch.cat([M, torch.zeros((M.shape[0], extra), dtype=M.dtype)], 1).contiguous()


PROJECTION_DIMS = 128  # the selection's k-center projection of large cells (negset.select.picks)
_PROJECTIONS: dict[tuple[int, int, int], np.ndarray] = {}


def random_projection(seed: int, dims: int, out: int) -> np.ndarray:
    """The seeded (dims x out) float32 Gaussian random projection (made once per seed and shape)."""
    key = (seed, dims, out)
    if key not in _PROJECTIONS:
        _PROJECTIONS.clear()  # one kept: a selection uses one seed
        _PROJECTIONS[key] = np.random.default_rng(seed).standard_normal((dims, out)).astype(np.float32)
    return _PROJECTIONS[key]


def in_threads(fn, items) -> None:
    """``fn(item)`` for every item, on one Python thread per core, each running torch on one thread.

    Blocks of rows in parallel instead of torch's threads inside each op: the
    many small ops of a block (one product and top-k per list) would each
    synchronise torch's threads, and on a machine shared with other work a
    descheduled thread stalls its partner at every op (measured: 3x the CPU
    time). Each block is computed by one thread alone, so results do not
    depend on the number of threads. torch releases the GIL inside its ops.
    """
    from concurrent.futures import ThreadPoolExecutor

    torch = _torch()
    items = list(items)
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        for it in items:
            fn(it)
        return

    def one(it):
        torch.set_num_threads(1)  # this thread's torch ops on itself only
        fn(it)

    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(one, items):
                pass
    finally:
        torch.set_num_threads(before)


def _tensor(a: np.ndarray):
    """A torch tensor sharing ``a``'s memory (a read-only memory map too: only read here)."""
    torch = _torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(a))


def _float32_tensor(block: np.ndarray):
    """A float32 torch tensor of a block (converted in torch: on every core)."""
    return _tensor(np.ascontiguousarray(block)).float()


def exact_similarity(V, rows: np.ndarray, P: np.ndarray, k: int, chunk: int = 4096, numpy_ok: bool = True):
    """Exact float32 (mean top-k similarity, nearest similarity, nearest positive index) of rows ``rows`` of V
    (NumPy for small products unless ``numpy_ok`` is False, torch float32 on every core for large ones: the same
    float32 products)."""
    return similarity_to_positives(RowView(V, np.asarray(rows, np.int64)), P, k, chunk, exact=True, numpy_ok=numpy_ok)


@dataclass
class Estimate:
    """The top-k similarity of each row to the positives, and what is known of its error.

    ``exact`` estimates are exact float32 (or torch float32). Approximate ones
    carry a seeded ``sample`` of rows scored exactly as well: the error
    measured there sets the :meth:`bounds` around a threshold inside which a
    decision is re-scored exactly. ``lower_bound``: the estimate is never
    above the exact value (an index: float32 scores of a subset of the
    positives), so only rows under a threshold can be wrong.
    """

    topk: np.ndarray
    best: np.ndarray
    arg: np.ndarray
    method: str
    exact: bool = True
    lower_bound: bool = False
    floor: float = MARGIN_FLOOR
    sample: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows of C
    sample_topk: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # exact values there
    sample_best: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    recall: float = 1.0  # mean share of the exact top-k positives the estimate found, on the sample
    projected: np.ndarray | None = None  # rows x d: each row @ the projection asked for (index path only), float32
    # int8 index estimates: rows (an array or RowView of unit vectors) -> their float32 (top-k, nearest, nearest
    # positive) over the same probed lists, lower bounds of the exact values (what a float32 index estimates), for
    # the rows near a threshold; ``refined``: the error of those values, measured on the same sample
    refine: Callable | None = None
    refined: Estimate | None = None

    def errors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(estimated value, exact - estimated) on the sample; kind: topk | best."""
        got = (self.topk if kind == "topk" else self.best)[self.sample]
        want = self.sample_topk if kind == "topk" else self.sample_best
        return got, want.astype(np.float64) - got

    def max_error(self, kind: str) -> float:
        return float(np.abs(self.errors(kind)[1]).max()) if len(self.sample) else 0.0

    def bounds(self, kind: str, threshold: float) -> tuple[float, float]:
        """(down, up): how far below / above its estimate an exact value near ``threshold`` may lie.

        MARGIN_SAFETY x the largest sampled error among the sampled rows
        estimated near the threshold (within the largest error overall), or
        the largest error overall when fewer than MARGIN_WINDOW_MIN are; plus
        the floor. A lower-bound estimate is never above: down is FLOAT_SLACK.
        """
        if self.exact:
            return 0.0, 0.0
        got, err = self.errors(kind)
        worst = float(np.abs(err).max()) if len(err) else 1.0
        near = np.abs(got - threshold) <= worst + self.floor
        seen = err[near] if near.sum() >= MARGIN_WINDOW_MIN else err
        up = MARGIN_SAFETY * max(float(seen.max()), 0.0) + self.floor
        down = FLOAT_SLACK if self.lower_bound else MARGIN_SAFETY * max(float(-seen.min()), 0.0) + self.floor
        return down, up

    def margin(self, kind: str, threshold: float) -> float:
        """The larger of :meth:`bounds` (0: exact)."""
        return max(self.bounds(kind, threshold))

    def near(self, kind: str, values: np.ndarray, threshold: float) -> np.ndarray:
        """Which estimated ``values`` could fall on the other side of ``threshold`` (value >= threshold) exactly."""
        down, up = self.bounds(kind, threshold)
        return (values >= threshold - up) & (values <= threshold + down)

    def bounds_at(self, kind: str, values: np.ndarray, step: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`bounds` for thresholds that vary by row (``values``), on a grid of ``step``."""
        if self.exact or not len(values):
            return np.zeros(len(values)), np.zeros(len(values))
        grid = np.round(np.asarray(values, np.float64) / step).astype(np.int64)
        at = {g: self.bounds(kind, g * step) for g in np.unique(grid).tolist()}
        got = np.asarray([at[g] for g in grid.tolist()]).reshape(-1, 2)
        return got[:, 0], got[:, 1]

    def summary(self) -> dict:
        out = dict(method=self.method, exact=self.exact)
        if not self.exact:
            out.update(sample=len(self.sample), recall=round(self.recall, 4),
                       max_error_topk=round(self.max_error("topk"), 5), max_error_best=round(self.max_error("best"), 5))
        return out


def unsure_order(a: Estimate, av: np.ndarray, b: Estimate, bv: np.ndarray) -> np.ndarray:
    """Rows where exact values could order differently than the estimates ``av`` > ``bv`` do."""
    a_down, a_up = a.bounds_at("best", av)
    b_down, b_up = b.bounds_at("best", bv)
    d = np.asarray(av, np.float64) - bv
    return (d >= -(a_up + b_down)) & (d <= a_down + b_up)


def _refined(ivf: PositiveIndex, k: int, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-k mean, nearest, nearest positive) of rows X over their probed lists in float32: never above the
    exact values."""
    v, i, _ = ivf.search(X, k, int8=False)
    return v.mean(axis=1, dtype=np.float32), v[:, 0].copy(), i[:, 0].copy()


def estimate_similarity(C, P: np.ndarray, k: int = 5, approx_above: float = INDEX_ABOVE, sample: int = SAMPLE_ROWS,
                        seed: int = 0, index: bool = True, project: np.ndarray | None = None) -> Estimate:
    """The top-k similarity of each row of C to the rows of P: exact up to ``approx_above`` products, else
    approximate with its error measured on ``sample`` rows: an index over P (``index`` and at least
    INDEX_MIN_POSITIVES rows), or brute-force bfloat16 (rows of P spread over the whole pool, where lists
    recall poorly). ``project``: on the index path, also each row @ ``project`` (``Estimate.projected``)."""
    n, m = len(C), len(P)
    if n * m <= approx_above or m == 0 or n == 0:
        t, b, a = similarity_to_positives(C, P, k, exact=True)
        return Estimate(t, b, a, "exact float32")
    k = max(1, min(k, m))
    V, at = (C.V, C.rows) if isinstance(C, RowView) else (C, np.arange(n))
    refine = None
    if m >= INDEX_MIN_POSITIVES and index:
        ivf = PositiveIndex(P, seed)
        vals, idx, projected = ivf.search(C, k, project=project)
        topk, best, arg = vals.mean(axis=1, dtype=np.float32), vals[:, 0].copy(), idx[:, 0].copy()
        short = np.flatnonzero(vals[:, -1] < -2.0)  # probed lists with fewer than k positives: exact
        if len(short):
            topk[short], best[short], arg[short] = exact_similarity(V, at[short], P, k, numpy_ok=False)
        # float32 scores of a subset of the positives never exceed the exact top-k; int8 ones may, by their rounding
        method, lower, floor = ivf.describe(), not ivf.int8, INDEX_FLOOR
        if ivf.int8:
            refine = partial(_refined, ivf, k)
    else:
        topk, best, arg = similarity_to_positives(C, P, k, exact=False)
        kind = "int8" if int8_products() else "bfloat16"
        idx, method, lower, floor, projected = None, f"brute force, {kind}", False, MARGIN_FLOOR, None
    rows = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    torch = _torch()  # the approximate paths run in torch already: its float32 product and top-k on every core
    with torch.inference_mode():
        sims = torch.from_numpy(np.asarray(V[at[rows]], np.float32)) @ torch.from_numpy(np.ascontiguousarray(P, np.float32)).T
        top = torch.topk(sims, k, dim=1)  # the exact top-k positives of the sampled rows, descending
    vals, want = top.values.numpy(), top.indices.numpy()
    st, sb = vals.mean(axis=1, dtype=np.float32), vals[:, 0]
    recall = 1.0
    if idx is not None:  # against the ones the index found
        recall = float(np.mean([len(set(w) & set(g)) / k for w, g in zip(want.tolist(), idx[rows].tolist())]))
    refined = None
    if refine is not None:  # the float32 values of the sampled rows: their own (lower-bound) error
        rt, rb, ra = refine(RowView(V, at[rows]))
        refined = Estimate(rt, rb, ra, "float32 over the probed lists", exact=False, lower_bound=True,
                           floor=INDEX_FLOOR, sample=np.arange(len(rows)), sample_topk=st, sample_best=sb)
    return Estimate(topk, best, arg, method, exact=False, lower_bound=lower, floor=floor, sample=rows, sample_topk=st,
                    sample_best=sb, recall=recall, projected=projected, refine=refine, refined=refined)
