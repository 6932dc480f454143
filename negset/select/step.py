"""Step 4, select: choose negatives that are actually good.

Every rule is a named step with a score, and every image it leaves out is
listed in ``rejected.parquet`` (uri, sha256, rule, score, reason); every
image chosen carries the reason it was chosen. Rules, in order
(``select:`` in params.yaml sets each one):

1. ``target_label``: a candidate labelled with the target is never chosen;
2. ``exact_duplicate``: a candidate with the bytes (sha256) of a positive;
3. ``near_duplicate``: cosine distance to the nearest positive under
   ``leaks.near_duplicate``, or a difference hash within ``leaks.hash_bits``
   of a positive's (resized / recompressed copies of positives);
4. ``quality:<check>``: overly simple images (dark, light, low information,
   near-uniform, blurry, odd aspect ratio, tiny; scores from negset.quality);
5. ``quarantine``: suspected unlabelled positives: an unlabelled candidate as
   similar to the positives (mean top-k cosine) as a typical positive is to
   the other positives, or whose nearest labelled image is a positive; they
   go to ``quarantine.csv`` for a person to review;
6. ``context:background`` / ``context:irrelevant``: candidates in a
   background cluster no positive has, or in the lowest similarity percentile;
7. ``pool_duplicate``: near-duplicate groups inside the pool keep one image;
8. bands: the eligible candidates' similarity to the positives makes
   hard / medium / context bands; each stratum's quota is split by
   ``bands.mix`` (a band, not only the very nearest, is mined);
9. strata and quotas (DuckDB over the (lighting, background, occlusion)
   strata): ``match`` the positives' distribution or ``uniform``, a minimum
   per stratum, shortfalls redistributed, then filled from the rest;
10. diversity: inside each stratum and band, k-center greedy on the
    embeddings (first pick and ties by a seeded key): deterministic for a seed.
    Cells larger than 20,000 are subsampled (seeded); cells over about 800
    images run on a seeded 128-d random projection (distances kept within a few
    per cent; the picks are still checked for near-duplicates on the full vectors).

The core (:func:`choose`) works on arrays (vectors may be a float16 memmap),
so a pool of a million candidates never becomes Python lists; the similarity
to the positives is a chunked matrix product in torch (bfloat16 on large
pools, with an exact float32 re-check of every near-duplicate decision).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from negset.core import atomic, catalog
from negset.core import similarity as simmath
from negset.core.config import Params, Select
from negset.core.layout import Layout
from negset.tag import quality

log = logging.getLogger("negset.select")

BANDS = ("hard", "medium", "context")
KCENTER_POOL_MAX = 20_000  # larger cells are subsampled (seeded) before k-center greedy
EXACT_BELOW = 5e8  # candidates x positives under this: exact float32 similarities
EXACT_PAIRS_BELOW = 1e7  # pool x pool / positives x positives products under this: float32
KCENTER_PROJECT_ABOVE = 1e6  # cells with more values (rows x dims): k-center on a 128-d random projection
KCENTER_DIMS = 128
HASH_PAIRS_MAX = 5e7  # candidates x positives compared bit by bit; beyond, identical hashes only
RECHECK_MARGIN = 0.02  # approximate (bfloat16) similarities this close to a leak threshold are recomputed

# rule order = precedence when an image breaks several
RULES = ("target_label", "exact_duplicate", "near_duplicate") + tuple(
    f"quality:{c}" for c in quality.CHECKS
) + ("quarantine", "context:background", "context:irrelevant", "pool_duplicate")


def allocate(
    total: int, weights: dict[str, float], capacity: dict[str, int], minimum: int = 0
) -> dict[str, int]:
    """Split ``total`` over strata by ``weights`` (largest remainder), capped by ``capacity``.

    Every stratum with weight gets ``minimum`` first (or what it holds, or
    what is left). What a full stratum cannot take goes to the others with
    room, in proportion to their weights. Strata with zero weight get nothing.
    """
    quota = {s: 0 for s in weights}
    remaining = total
    if minimum > 0:
        for s in sorted(weights, key=lambda s: (-weights[s], s)):
            if weights[s] > 0 and remaining > 0:
                take = min(minimum, capacity.get(s, 0), remaining)
                quota[s] += take
                remaining -= take
    open_ = {s for s, w in weights.items() if w > 0 and capacity.get(s, 0) > quota[s]}
    while remaining > 0 and open_:
        wsum = sum(weights[s] for s in open_)
        ideal = {s: remaining * weights[s] / wsum for s in open_}
        give = {s: math.floor(ideal[s]) for s in open_}
        left = remaining - sum(give.values())
        for s in sorted(open_, key=lambda s: (-(ideal[s] - give[s]), -weights[s], s))[:left]:
            give[s] += 1
        progressed = 0
        for s in sorted(open_):
            room = capacity[s] - quota[s]
            take = min(give[s], room)
            quota[s] += take
            progressed += take
        remaining -= progressed
        open_ = {s for s in open_ if quota[s] < capacity[s]}
        if progressed == 0:
            break
    return quota


# --------------------------------------------------------------------------
# similarity


def _torch():
    import torch

    return torch


def similarity_to_positives(
    C: np.ndarray, P: np.ndarray, k: int = 5, chunk: int = 8192, exact: bool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean of the top-k cosine similarities, max similarity, index of the nearest positive) per row of C.

    Rows are unit vectors; C may be float16 or a memmap (read in chunks).
    ``exact=None`` picks float32 for small products and bfloat16 (AMX/AVX-512
    where the CPU has them) for large ones.
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
    if n * m <= simmath.NUMPY_BELOW:  # float32 in NumPy: no torch import
        return simmath.similarity_to_positives(C, P, k, chunk)
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


def positive_similarity(layout: Layout, roles: dict[str, str], k: int = 5) -> dict[str, float]:
    """Mean top-k cosine similarity to the positives of every embedded image, by sha256 (for reports)."""
    from negset.embed.store import read_embeddings

    shas, vectors = read_embeddings(layout)
    pos = np.array([roles.get(s) == "positive" for s in shas], dtype=bool)
    topk, _, _ = similarity_to_positives(vectors, vectors[pos], k)
    return dict(zip(shas, topk.tolist()))


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
    if m * m <= simmath.NUMPY_BELOW:  # float32 in NumPy: no torch import
        return simmath.leave_one_out_similarity(P, k, chunk)
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


def seeded_keys(sha256: np.ndarray | list, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 key per image (splitmix64 of the sha256 prefix and the seed)."""
    x = np.fromiter((int(s[:16], 16) for s in sha256), dtype=np.uint64, count=len(sha256))
    with np.errstate(over="ignore"):
        x = x ^ np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def near_duplicate_groups(V: np.ndarray, order: np.ndarray, threshold: float, chunk: int = 2048) -> np.ndarray:
    """For rows ``order`` (in preference order) of V: -1 for kept rows, else the kept row it duplicates.

    Greedy: a row is kept unless it is within cosine distance ``threshold``
    of a row kept before it, so each group keeps its most preferred image.
    """
    n = len(order)
    keep_of = np.full(n, -1, np.int64)
    if n < 2:
        return keep_of
    if n * n <= simmath.NUMPY_BELOW:  # float32 in NumPy: no torch import
        return simmath.near_duplicate_groups(V, order, threshold, 1.0 - threshold, chunk)
    torch = _torch()
    X = torch.from_numpy(np.ascontiguousarray(V[order], dtype=np.float32))
    exact = n * n <= EXACT_PAIRS_BELOW
    Xd = X if exact else X.to(torch.bfloat16)
    limit = 1.0 - threshold - (0 if exact else RECHECK_MARGIN)
    neighbours: dict[int, np.ndarray] = {}
    with torch.inference_mode():
        for start in range(0, n, chunk):
            sims = (Xd[start : start + chunk] @ Xd.T).float().numpy()
            rows, cols = np.nonzero(sims >= limit)
            for r, c in zip(rows + start, cols):
                if c < r:
                    neighbours.setdefault(int(r), []).append(int(c))
    return simmath.keep_from_neighbours(keep_of, neighbours, X, threshold)


def kcenter_greedy(X: np.ndarray, q: int, centers: np.ndarray | None = None, stop_below: float = 0.0):
    """Pick up to ``q`` rows of X (unit vectors), each the farthest (cosine) from those picked before.

    ``centers`` are earlier picks the new ones must also be far from. The
    first pick (no centers) is row 0, and ties go to the lower row: order X
    by a seeded key to make the picks seeded. Stops when the farthest row is
    under ``stop_below`` from the picks (the rest are near-duplicates).
    Returns (rows, their distance to the earlier picks at pick time).
    """
    n = len(X)
    X = np.ascontiguousarray(X, dtype=np.float32)
    dist = np.full(n, np.inf, np.float32)
    if centers is not None and len(centers):
        dist = (1.0 - (X @ np.asarray(centers, np.float32).T).max(axis=1)).astype(np.float32)
    picked, at = [], []
    for _ in range(min(q, n)):
        j = int(np.argmax(dist))
        d = float(dist[j])
        if d == -np.inf or (d < stop_below and np.isfinite(d)):
            break
        picked.append(j)
        at.append(d)
        # einsum: one thread, no BLAS call overhead (hundreds of small products run here)
        dist = np.minimum(dist, 1.0 - np.einsum("ij,j->i", X, X[j]))
        dist[j] = -np.inf
    return np.asarray(picked, np.int64), np.asarray(at, np.float32)


# --------------------------------------------------------------------------
# the core: arrays in, arrays out


class _Rows:
    """Some rows of a (memmapped) matrix, read a slice at a time."""

    def __init__(self, V, rows):
        self.V, self.rows = V, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, sl):
        return self.V[self.rows[sl]]


@dataclass
class Pool:
    """One row per image (positives and candidates)."""

    sha256: np.ndarray  # str
    vectors: np.ndarray  # (n, d) unit rows; float16/float32; may be a memmap
    positive: np.ndarray  # bool
    has_target: np.ndarray  # bool
    stratum: np.ndarray  # int codes into stratum_names
    stratum_names: list[str]
    background: np.ndarray | None = None  # int cluster id
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # q_<check>: [0, 1], NaN = unknown
    area: np.ndarray | None = None  # pixels, prefers larger images inside a duplicate group
    uri: np.ndarray | None = None
    labelled: np.ndarray | None = None  # bool; labelled candidates are known negatives (never quarantined)
    dhash: np.ndarray | None = None  # int64 difference hash (negset.quality.dhash)
    # region embeddings (negset.regions): crops of images and the positives' target objects
    region_vectors: np.ndarray | None = None  # (r, d) unit rows, float16; may be a memmap
    region_owner: np.ndarray | None = None  # pool row of each region, -1 = none (skipped)
    object_vectors: np.ndarray | None = None  # (m, d) target objects cropped from positives
    object_owner: np.ndarray | None = None  # pool row of each object

    def subset(self, idx: np.ndarray, positive: np.ndarray | None = None) -> "Pool":
        """The rows ``idx`` (in that order) as a pool of their own; regions and objects follow their rows."""
        idx = np.asarray(idx, np.int64)
        remap = np.full(len(self.sha256), -1, np.int64)
        remap[idx] = np.arange(len(idx))

        def rows(a):
            return None if a is None else a[idx]

        def follow(vectors, owner):
            if vectors is None:
                return None, None
            new_owner = owner_rows(owner, remap)
            keep = new_owner >= 0
            return vectors[keep], new_owner[keep]

        rv, ro = follow(self.region_vectors, self.region_owner)
        ov, oo = follow(self.object_vectors, self.object_owner)
        return Pool(
            sha256=self.sha256[idx], vectors=self.vectors[idx],
            positive=self.positive[idx] if positive is None else positive,
            has_target=self.has_target[idx], stratum=self.stratum[idx], stratum_names=self.stratum_names,
            background=rows(self.background), scores={k: v[idx] for k, v in self.scores.items()},
            area=rows(self.area), uri=rows(self.uri), labelled=rows(self.labelled), dhash=rows(self.dhash),
            region_vectors=rv, region_owner=ro, object_vectors=ov, object_owner=oo,
        )


def owner_rows(owner: np.ndarray, position: np.ndarray) -> np.ndarray:
    """``position[owner]``, where an owner of -1 (no pool row) stays -1."""
    owner = np.asarray(owner, np.int64)
    return np.where(owner >= 0, position[np.maximum(owner, 0)], -1) if len(position) else np.full(len(owner), -1)


def region_hardness(pool: Pool, rows: np.ndarray, objects: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Per row: the highest cosine similarity between the image or any of its crops and any target object."""
    O = np.asarray(objects, np.float32).T
    out = np.full(len(rows), -1.0, np.float32)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        out[start : start + len(part)] = (np.asarray(pool.vectors[part], np.float32) @ O).max(axis=1)
    if pool.region_vectors is not None and len(pool.region_vectors):
        at = np.full(len(pool.sha256), -1, np.int64)
        at[rows] = np.arange(len(rows))
        slot = owner_rows(pool.region_owner, at)
        mine = np.flatnonzero(slot >= 0)
        # chunk by chunk: region_vectors may be a memory map of regions.npy (memory stays flat)
        for start in range(0, len(mine), chunk):
            part = mine[start : start + chunk]
            sims = (np.asarray(pool.region_vectors[part], np.float32) @ O).max(axis=1)
            np.maximum.at(out, slot[part], sims)
    return out


@dataclass
class Choice:
    rows: np.ndarray  # chosen pool rows, in pick order
    rule: list[str]  # quota | fill
    band: list[str]
    quota: list[int]
    pick_rank: list[int]
    pick_distance: list[float]
    reason: list[str]
    status: np.ndarray  # per pool row: '' eligible/chosen/positive, else the rule that left it out
    status_score: np.ndarray  # the rule's score
    pos_similarity: np.ndarray  # mean top-k similarity to the positives (scene)
    hardness: np.ndarray  # what the bands use: pos_similarity, or the region-to-object similarity
    hardness_by: str  # image | regions
    nearest_similarity: np.ndarray
    nearest_positive: np.ndarray  # pool row of the nearest positive
    band_of: np.ndarray  # per pool row: band code (-1 = not eligible)
    band_edges: tuple[float, float]
    quarantine_threshold: float
    strata: list[dict]
    want: int
    fill: int = 0
    info: dict = field(default_factory=dict)


def choose(pool: Pool, cfg: Select, want: int) -> Choice:
    """Apply every rule to the pool and choose ``want`` negatives."""
    import time

    import duckdb

    clock = [time.perf_counter()]
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now

    n = len(pool.sha256)
    pos_rows = np.flatnonzero(pool.positive)
    cand = ~pool.positive
    cand_rows = np.flatnonzero(cand)
    code = np.zeros(n, np.int16)  # 0 = not left out; else 1 + index into RULES
    score = np.full(n, np.nan, np.float64)
    detail: dict[int, str] = {}

    def reject(mask: np.ndarray, rule: str, s: np.ndarray | float) -> None:
        m = mask & (code == 0)
        code[m] = RULES.index(rule) + 1
        score[m] = s[m] if isinstance(s, np.ndarray) else s

    # 1. labelled with the target
    reject(cand & pool.has_target, "target_label", 1.0)
    # 2. exact duplicates of positives (ingest merges equal bytes; this guards other catalogs)
    pos_sha = set(pool.sha256[pos_rows].tolist())
    if pos_sha:
        same = np.fromiter((s in pos_sha for s in pool.sha256), dtype=bool, count=n)
        reject(cand & same, "exact_duplicate", 1.0)

    lap("labels")
    # similarity to the positives
    P = np.asarray(pool.vectors[pos_rows], dtype=np.float32) if len(pos_rows) else np.zeros((0, 1), np.float32)
    topk = np.full(n, np.nan, np.float32)
    best = np.full(n, np.nan, np.float32)
    nearest = np.full(n, -1, np.int64)
    if len(pos_rows) and len(cand_rows):
        lo, hi_ = int(cand_rows[0]), int(cand_rows[-1]) + 1
        C = pool.vectors[lo:hi_] if hi_ - lo == len(cand_rows) else None  # contiguous: a view, no copy
        if C is None:
            C = _Rows(pool.vectors, cand_rows)  # gathered chunk by chunk
        t, b, a = similarity_to_positives(C, P, cfg.top_k)
        exact = len(cand_rows) * len(pos_rows) <= EXACT_BELOW
        near_limit = 1.0 - cfg.leaks.near_duplicate
        if not exact:  # re-check every approximate decision close to the leak threshold
            close = np.flatnonzero(b >= near_limit - RECHECK_MARGIN)
            if len(close):
                eb, ea = exact_nearest(pool.vectors, P, cand_rows[close])
                b[close], a[close] = eb, ea
        topk[cand_rows], best[cand_rows], nearest[cand_rows] = t, b, pos_rows[a]
    # hardness: whole-image similarity, or the best crop-to-target-object match (negset.regions)
    hard_sim = topk.copy()
    hardness_by = "image"
    if cfg.hardness != "image" and pool.object_vectors is not None and len(cand_rows):
        own = pool.object_owner
        objects = pool.object_vectors[pool.positive[own]] if len(own) else pool.object_vectors[:0]
        if len(objects):
            hard_sim[cand_rows] = region_hardness(pool, cand_rows, objects)
            hardness_by = "regions"
    if cfg.hardness == "regions" and hardness_by != "regions":
        from negset.core.errors import NegsetError

        raise NegsetError(
            "select.hardness: regions needs region embeddings of the pool and target objects (boxes) on the positives",
            hint="set embed.regions: 3 (and label the positives with boxes), or hardness: auto",
        )
    lap("similarity")
    # 3. near-duplicates of positives
    dist = 1.0 - best.astype(np.float64)
    reject(cand & (dist < cfg.leaks.near_duplicate), "near_duplicate", dist)
    # ... and by perceptual hash (strongly resized / recompressed copies move further in the embedding)
    if pool.dhash is not None and cfg.leaks.hash_bits > 0 and len(pos_rows):
        live = np.flatnonzero(cand & (code == 0))
        hp = pool.dhash[pos_rows]
        if len(live) * len(pos_rows) <= HASH_PAIRS_MAX:
            for start in range(0, len(live), 4096):
                rows_ = live[start : start + 4096]
                ham = quality.hamming(pool.dhash[rows_], hp)
                j = ham.argmin(axis=1)
                bits = ham[np.arange(len(rows_)), j]
                hit = bits <= cfg.leaks.hash_bits
                for r, pj, b in zip(rows_[hit], j[hit], bits[hit]):
                    code[r] = RULES.index("near_duplicate") + 1
                    score[r] = dist[r]
                    nearest[r] = pos_rows[pj]
                    detail[int(r)] = f"difference hash within {int(b)} bits of positive"
        else:  # very large pools: identical hashes only
            hit = live[np.isin(pool.dhash[live], hp)]
            code[hit] = RULES.index("near_duplicate") + 1
            score[hit] = dist[hit]
            for r in hit:
                detail[int(r)] = "identical difference hash to a positive"

    # 4. overly simple images
    for check in quality.CHECKS:
        thr = getattr(cfg.quality, check)
        s = pool.scores.get(f"q_{check}")
        if thr is None or s is None:
            continue
        s = np.asarray(s, np.float64)
        reject(cand & (s < thr), f"quality:{check}", s)

    # 5. quarantine: as close to the positives as a typical positive is to the others
    q_thr = float("inf")
    if cfg.quarantine.enabled and len(pos_rows) >= 2:
        loo = leave_one_out_similarity(P, cfg.top_k)
        q_thr = max(float(np.percentile(loo, cfg.quarantine.positive_percentile)), cfg.quarantine.min_similarity)
        unlabelled = ~pool.labelled if pool.labelled is not None else np.ones(n, bool)
        reject(cand & unlabelled & (topk >= q_thr), "quarantine", topk.astype(np.float64))
        if cfg.quarantine.nearest_labelled and pool.labelled is not None:
            # counter-evidence from labelled negatives: suspected when a positive is nearer than any of them
            u_rows = np.flatnonzero(cand & unlabelled & (code == 0))
            ref = np.flatnonzero(cand & pool.labelled & ~pool.has_target)
            if len(ref) > cfg.quarantine.reference_max:
                ref = np.sort(np.random.default_rng(cfg.seed).choice(ref, cfg.quarantine.reference_max, replace=False))
            if len(u_rows) and len(ref):
                _, neg_best, _ = similarity_to_positives(
                    _Rows(pool.vectors, u_rows), np.asarray(pool.vectors[ref], np.float32), 1
                )
                sus = u_rows[best[u_rows] > neg_best]
                mask = np.zeros(n, bool)
                mask[sus] = True
                reject(mask, "quarantine", topk.astype(np.float64))
                for r, nb in zip(u_rows, neg_best):
                    if mask[r]:
                        detail[int(r)] = f"nearest labelled image is a positive ({best[r]:.3f} vs {nb:.3f} for the nearest labelled negative)"

    # 6. context
    if cfg.context.require_positive_background and pool.background is not None and len(pos_rows):
        pos_bg = np.unique(pool.background[pos_rows])
        reject(cand & ~np.isin(pool.background, pos_bg), "context:background", topk.astype(np.float64))
    eligible = cand & (code == 0)
    if cfg.context.irrelevant_below_percentile > 0 and eligible.any() and len(pos_rows):
        low = float(np.percentile(topk[eligible], cfg.context.irrelevant_below_percentile))
        reject(eligible & (topk < low), "context:irrelevant", topk.astype(np.float64))
        eligible = cand & (code == 0)

    lap("rules")
    keys = seeded_keys(pool.sha256, cfg.seed)
    lap("keys")
    # 7. near-duplicate groups inside the pool keep one image (the largest, then by seeded key)
    elig_rows = np.flatnonzero(eligible)
    full_dedup = 0 < len(elig_rows) <= cfg.leaks.pool_dedup_max
    if full_dedup:
        area = pool.area[elig_rows] if pool.area is not None else np.zeros(len(elig_rows))
        pref = elig_rows[np.lexsort((keys[elig_rows], -np.asarray(area, np.float64)))]
        keep_of = near_duplicate_groups(pool.vectors, pref, cfg.leaks.near_duplicate)
        dup = keep_of >= 0
        for r, k in zip(pref[dup], pref[keep_of[dup]]):
            code[r] = RULES.index("pool_duplicate") + 1
            score[r] = 1.0 - float(np.dot(np.asarray(pool.vectors[r], np.float32), np.asarray(pool.vectors[k], np.float32)))
            detail[int(r)] = str(pool.sha256[k])
        eligible = cand & (code == 0)
        elig_rows = np.flatnonzero(eligible)

    lap("pool_dedup")
    # 8. bands
    band = np.full(n, -1, np.int8)
    if len(elig_rows):
        s = hard_sim[elig_rows]
        if cfg.bands.by == "percentile":
            hi, mid = (float(np.percentile(s, cfg.bands.hard)), float(np.percentile(s, cfg.bands.medium)))
        else:
            hi, mid = cfg.bands.hard, cfg.bands.medium
        band[elig_rows] = np.where(s >= hi, 0, np.where(s >= mid, 1, 2))
    else:
        hi = mid = float("nan")

    # 9. strata and quotas (DuckDB)
    con = duckdb.connect()
    con.register(
        "pool",
        pa.table(
            {
                "stratum": pa.array(pool.stratum.astype(np.int32)),
                "positive": pa.array(pool.positive.astype(bool)),
                "eligible": pa.array(eligible.astype(bool)),
                "band": pa.array(band.astype(np.int8)),
            }
        ),
    )
    strata_rows = con.execute(
        """
        SELECT stratum,
               count(*) FILTER (WHERE positive) AS positives,
               count(*) FILTER (WHERE eligible) AS available,
               count(*) FILTER (WHERE eligible AND band = 0) AS hard,
               count(*) FILTER (WHERE eligible AND band = 1) AS medium,
               count(*) FILTER (WHERE eligible AND band = 2) AS context
        FROM pool GROUP BY stratum ORDER BY stratum
        """
    ).fetchall()
    con.close()
    names = pool.stratum_names
    weights = {
        names[s]: (float(p) if cfg.quota == "match" else (1.0 if (a or p) else 0.0)) for s, p, a, *_ in strata_rows
    }
    capacity = {names[s]: int(a) for s, _, a, *_ in strata_rows}
    quota = allocate(want, weights, capacity, cfg.min_per_stratum)
    mix = [cfg.bands.mix.get(b, 0.0) for b in BANDS]

    lap("bands_quotas")
    # 10. diverse picks inside each stratum and band
    picked: list[int] = []
    meta: list[tuple] = []
    V = pool.vectors
    stop = cfg.leaks.near_duplicate if not full_dedup else 0.0
    rng = np.random.default_rng(cfg.seed)
    stratum_code = pool.stratum
    strata_out = []
    for s, p, a, *band_counts in strata_rows:
        name = names[s]
        q = quota.get(name, 0)
        band_quota = allocate(
            q, {b: w for b, w in zip(BANDS, mix)}, {b: int(c) for b, c in zip(BANDS, band_counts)}
        )
        if sum(band_quota.values()) < q:  # a band with zero mix may still hold what is missing
            extra = allocate(
                q - sum(band_quota.values()),
                {b: 1.0 for b in BANDS},
                {b: int(c) - band_quota[b] for b, c in zip(BANDS, band_counts)},
            )
            band_quota = {b: band_quota[b] + extra[b] for b in BANDS}
        in_stratum = eligible & (stratum_code == s)
        s_rows = np.flatnonzero(in_stratum)  # ascending: one sequential read of this stratum's vectors
        s_band = band[s_rows]
        chosen_here: list[int] = []
        for bi, bname in enumerate(BANDS):
            bq = band_quota[bname]
            if bq <= 0:
                continue
            rows = s_rows[s_band == bi]
            rows = rows[np.argsort(keys[rows], kind="stable")]
            avail = len(rows)
            if len(rows) > KCENTER_POOL_MAX:
                rows = np.sort(rng.choice(rows, KCENTER_POOL_MAX, replace=False))
                rows = rows[np.argsort(keys[rows], kind="stable")]
            if cfg.diversity == "kcenter":
                centers = np.asarray(V[np.sort(np.asarray(chosen_here, np.int64))], np.float32) if chosen_here else None
                by_pos = np.argsort(rows, kind="stable")
                X = np.empty((len(rows), V.shape[1]), np.float32)
                X[by_pos] = V[rows[by_pos]]  # read in file order, keep the seeded order
                if X.size > KCENTER_PROJECT_ABOVE:  # memory-bound: diversity on a seeded random projection
                    R = np.random.default_rng(cfg.seed).standard_normal((X.shape[1], KCENTER_DIMS)).astype(np.float32)
                    X = X @ R
                    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
                    if centers is not None:
                        centers = centers @ R
                        centers /= np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
                idx, at = kcenter_greedy(X, bq, centers, stop)
            else:
                idx, at = np.arange(min(bq, len(rows))), np.full(min(bq, len(rows)), np.nan, np.float32)
            for rank, (j, d) in enumerate(zip(idx, at), 1):
                r = int(rows[j])
                picked.append(r)
                chosen_here.append(r)
                meta.append(("quota", bname, q, rank, float(d), name, avail, bq))
        strata_out.append(
            dict(
                stratum=name,
                positives=int(p),
                available=int(a),
                available_hard=int(band_counts[0]),
                available_medium=int(band_counts[1]),
                available_context=int(band_counts[2]),
                quota=int(q),
                chosen=len(chosen_here),
            )
        )

    lap("picks")
    # cross-stratum near-duplicates among the picks (large pools only: small ones were grouped above)
    if not full_dedup and len(picked) > 1:
        order = np.asarray(picked, np.int64)
        keep_of = near_duplicate_groups(V, order, cfg.leaks.near_duplicate)
        for i in np.flatnonzero(keep_of >= 0):
            code[order[i]] = RULES.index("pool_duplicate") + 1
            score[order[i]] = float("nan")
            detail[int(order[i])] = str(pool.sha256[order[keep_of[i]]])
        keep = keep_of < 0
        picked = [r for r, k in zip(picked, keep) if k]
        meta = [m for m, k in zip(meta, keep) if k]

    # shortfall fill: what the strata could not give, from the rest (closest context first)
    missing = want - len(picked)
    fill = 0
    if missing > 0:
        taken = np.zeros(n, bool)
        taken[np.asarray(picked, np.int64)] = True
        rest = np.flatnonzero(eligible & ~taken & (code == 0))
        rest = rest[np.lexsort((keys[rest], -hard_sim[rest]))]
        chosen_vecs = np.asarray(V[np.asarray(picked, np.int64)], np.float32) if picked else np.zeros((0, P.shape[1] if len(P) else 1), np.float32)
        for r in rest:
            if missing <= 0:
                break
            v = np.asarray(V[r], np.float32)
            if len(chosen_vecs) and float((chosen_vecs @ v).max()) >= 1.0 - cfg.leaks.near_duplicate:
                continue
            picked.append(int(r))
            chosen_vecs = np.vstack([chosen_vecs, v[None]]) if len(chosen_vecs) else v[None]
            fill += 1
            missing -= 1
            meta.append(("fill", BANDS[band[r]] if band[r] >= 0 else "", 0, fill, float("nan"), names[pool.stratum[r]], 0, 0))
        for st in strata_out:
            st["chosen"] = 0
        counts: dict[str, int] = {}
        for r in picked:
            counts[names[pool.stratum[r]]] = counts.get(names[pool.stratum[r]], 0) + 1
        for st in strata_out:
            st["chosen"] = counts.get(st["stratum"], 0)

    lap("dedup_fill")
    # reasons
    edges = {"hard": (hi, 1.0), "medium": (mid, hi), "context": (-1.0, mid)}
    reasons = []
    for r, (rule, bname, q, rank, d, name, avail, bq) in zip(picked, meta):
        sim = float(topk[r])
        what = (
            f"object similarity {float(hard_sim[r]):.3f} (best crop vs the positives' target objects), "
            f"scene similarity {sim:.3f}"
            if hardness_by == "regions"
            else f"similarity {sim:.3f} to the positives"
        )
        if rule == "quota":
            lo, up = edges[bname]
            how = (
                f"k-center pick {rank} of {bq} from {avail} (cosine distance {d:.3f} to earlier picks)"
                if cfg.diversity == "kcenter" and np.isfinite(d)
                else f"{'first k-center' if cfg.diversity == 'kcenter' else 'seeded random'} pick {rank} of {bq} from {avail}"
            )
            reasons.append(
                f"{bname} negative: {what} (band {lo:.3f}..{up:.3f}); "
                f"stratum '{name}' quota {q} of {want} ({cfg.quota}); {how}; seed {cfg.seed}"
            )
        else:
            reasons.append(
                f"shortfall fill: the positives' strata had too few eligible candidates; hardest left "
                f"({what}, stratum '{name}'); seed {cfg.seed}"
            )
    lap("reasons")
    status = np.full(n, "", dtype=object)
    left_out = code > 0
    status[left_out] = np.asarray(RULES, dtype=object)[code[left_out] - 1]
    return Choice(
        rows=np.asarray(picked, np.int64),
        rule=[m[0] for m in meta],
        band=[m[1] for m in meta],
        quota=[m[2] for m in meta],
        pick_rank=[m[3] for m in meta],
        pick_distance=[m[4] for m in meta],
        reason=reasons,
        status=status,
        status_score=score,
        pos_similarity=topk,
        hardness=hard_sim,
        hardness_by=hardness_by,
        nearest_similarity=best,
        nearest_positive=nearest,
        band_of=band,
        band_edges=(hi, mid),
        quarantine_threshold=q_thr,
        strata=strata_out,
        want=want,
        fill=fill,
        info=dict(detail=detail, full_pool_dedup=bool(full_dedup), timings=timings),
    )


def rejection_reason(rule: str, s: float, row: int, choice: Choice, pool: Pool, cfg: Select) -> str:
    """One sentence on why a pool row was left out."""
    near = choice.nearest_positive[row]
    near_uri = (pool.uri[near] if pool.uri is not None else pool.sha256[near]) if near >= 0 else "?"
    if rule == "target_label":
        return "labelled with the target class"
    if rule == "exact_duplicate":
        return "same bytes (sha256) as a positive"
    if rule == "near_duplicate":
        if int(row) in choice.info["detail"]:
            return f"{choice.info['detail'][int(row)]} {near_uri} (cosine distance {s:.4f})"
        return f"cosine distance {s:.4f} to positive {near_uri} is under {cfg.leaks.near_duplicate}"
    if rule == "quarantine":
        if int(row) in choice.info["detail"]:
            return f"suspected positive: {choice.info['detail'][int(row)]}; nearest positive {near_uri}"
        return (
            f"suspected positive: similarity {s:.3f} to the positives reaches {choice.quarantine_threshold:.3f} "
            f"(p{cfg.quarantine.positive_percentile:g} of the positives' own); nearest positive {near_uri}"
        )
    if rule.startswith("quality:"):
        check = rule.split(":", 1)[1]
        return f"{check} score {s:.3f} is under {getattr(cfg.quality, check)}"
    if rule == "context:background":
        return "its background cluster has no positive"
    if rule == "context:irrelevant":
        return f"similarity {s:.3f} to the positives is under p{cfg.context.irrelevant_below_percentile:g} of the pool"
    if rule == "pool_duplicate":
        kept = choice.info["detail"].get(int(row), "?")
        return f"near-duplicate of candidate {kept[:12]}, which is kept"
    return rule


# --------------------------------------------------------------------------
# the step


def load_pool(con, layout: Layout, axes: list[str]) -> Pool:
    from negset.embed.store import read_embeddings

    catalog.load(con, layout, "images", "tags")
    tag_cols = {r[0] for r in con.execute("DESCRIBE tags").fetchall()}
    qcols = [f"q_{c}" for c in quality.PIXEL_CHECKS if f"q_{c}" in tag_cols]
    hash_sql = ", t.dhash" if "dhash" in tag_cols else ""
    stratum_sql = " || ' | ' || ".join(f"t.{a}" for a in axes)
    t = con.sql(
        f"""
        SELECT i.sha256, i.uri, i.role = 'positive' AS positive, coalesce(i.has_target, false) AS has_target,
               coalesce(i.labelled, false) AS labelled,
               i.width, i.height, {stratum_sql} AS stratum, t.background_cluster
               {''.join(', t.' + c for c in qcols)}{hash_sql}
        FROM images i JOIN tags t USING (sha256) ORDER BY i.sha256
        """
    ).to_arrow_table()
    shas, vectors = read_embeddings(layout)
    index = {s: i for i, s in enumerate(shas)}
    sha = np.asarray(t.column("sha256").to_pylist(), dtype=object)
    vec = vectors[np.asarray([index[s] for s in sha], np.int64)] if len(sha) else vectors[:0]
    strata = t.column("stratum").to_pylist()
    names = sorted(set(strata))
    code = {s: i for i, s in enumerate(names)}
    width = t.column("width").to_numpy(zero_copy_only=False).astype(np.float64)
    height = t.column("height").to_numpy(zero_copy_only=False).astype(np.float64)
    scores = {c: t.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in qcols}
    scores.update(quality.geometry_scores(width, height))
    return Pool(
        sha256=sha,
        vectors=vec,
        positive=t.column("positive").to_numpy(zero_copy_only=False).astype(bool),
        has_target=t.column("has_target").to_numpy(zero_copy_only=False).astype(bool),
        stratum=np.asarray([code[s] for s in strata], np.int32),
        stratum_names=names,
        background=t.column("background_cluster").to_numpy(zero_copy_only=False).astype(np.int64),
        scores=scores,
        area=width * height,
        uri=np.asarray(t.column("uri").to_pylist(), dtype=object),
        labelled=t.column("labelled").to_numpy(zero_copy_only=False).astype(bool),
        dhash=t.column("dhash").to_numpy(zero_copy_only=False).astype(np.int64) if hash_sql else None,
        **_regions_of(layout, {s: i for i, s in enumerate(sha)}),
    )


def _regions_of(layout: Layout, row_of: dict) -> dict:
    from negset.embed.store import read_regions

    got = read_regions(layout)
    if got is None:
        return {}
    shas, kinds, vec = got
    owner = np.asarray([row_of.get(s, -1) for s in shas], np.int64)
    grid = (kinds == "grid") & (owner >= 0)
    obj = (kinds == "object") & (owner >= 0)
    # the grid crops stay in the memory map (row owner -1 = not a grid crop of this pool); objects are few
    return dict(region_vectors=vec, region_owner=np.where(grid, owner, -1),
                object_vectors=np.asarray(vec[obj]), object_owner=owner[obj])


def run(params: Params, layout: Layout) -> dict:
    cfg = params.select
    axes = list(cfg.strata)
    with catalog.connect(layout) as con:
        pool = load_pool(con, layout, axes)
        axis_values = con.execute(
            f"SELECT i.sha256, {', '.join('t.' + a for a in axes)} FROM images i JOIN tags t USING (sha256) ORDER BY i.sha256"
        ).fetchall()
    n_pos = int(pool.positive.sum())
    want = cfg.size_for(n_pos)
    choice = choose(pool, cfg, want)
    by_sha = {r[0]: r[1:] for r in axis_values}

    rows = []
    for i, r in enumerate(choice.rows):
        sha = pool.sha256[r]
        row = dict(sha256=sha, uri=pool.uri[r])
        row.update(zip(axes, by_sha[sha]))
        row.update(
            stratum=pool.stratum_names[pool.stratum[r]],
            band=choice.band[i],
            pos_similarity=float(choice.pos_similarity[r]),
            nearest_similarity=float(choice.nearest_similarity[r]),
            hardness=float(choice.hardness[r]),
            quota=int(choice.quota[i]),
            pick_rank=int(choice.pick_rank[i]),
            pick_distance=None if not np.isfinite(choice.pick_distance[i]) else float(choice.pick_distance[i]),
            rule=choice.rule[i],
            reason=choice.reason[i],
        )
        rows.append(row)
    schema_cols = ["sha256", "uri", *axes, "stratum", "band", "pos_similarity", "nearest_similarity", "hardness",
                   "quota", "pick_rank", "pick_distance", "rule", "reason"]
    selection = pa.Table.from_pylist(rows, schema=pa.schema(
        [(c, pa.string()) for c in ["sha256", "uri", *axes, "stratum", "band"]]
        + [("pos_similarity", pa.float64()), ("nearest_similarity", pa.float64()), ("hardness", pa.float64()),
           ("quota", pa.int64()),
           ("pick_rank", pa.int64()), ("pick_distance", pa.float64()), ("rule", pa.string()), ("reason", pa.string())]
    ))
    assert selection.column_names == schema_cols
    atomic.write_parquet(selection, layout.select / "selection.parquet")

    out_rows = np.flatnonzero(choice.status != "")
    out_rows = out_rows[np.lexsort((pool.uri[out_rows].astype(str), [RULES.index(s) for s in choice.status[out_rows]]))]
    rejected = pa.table(
        {
            "uri": pa.array([pool.uri[r] for r in out_rows], pa.string()),
            "sha256": pa.array([pool.sha256[r] for r in out_rows], pa.string()),
            "step": pa.array(["select"] * len(out_rows), pa.string()),
            "rule": pa.array([choice.status[r] for r in out_rows], pa.string()),
            "score": pa.array([None if np.isnan(choice.status_score[r]) else float(choice.status_score[r]) for r in out_rows], pa.float64()),
            "reason": pa.array(
                [rejection_reason(choice.status[r], float(choice.status_score[r]), int(r), choice, pool, cfg) for r in out_rows],
                pa.string(),
            ),
        }
    )
    atomic.write_parquet(rejected, layout.select / "rejected.parquet")
    qrows = [r for r in out_rows if choice.status[r] == "quarantine"]
    qrows.sort(key=lambda r: -float(choice.pos_similarity[r]))
    quarantine = pa.table(
        {
            "uri": pa.array([pool.uri[r] for r in qrows], pa.string()),
            "sha256": pa.array([pool.sha256[r] for r in qrows], pa.string()),
            "similarity": pa.array([float(choice.pos_similarity[r]) for r in qrows], pa.float64()),
            "nearest_positive": pa.array([pool.uri[choice.nearest_positive[r]] for r in qrows], pa.string()),
            "nearest_similarity": pa.array([float(choice.nearest_similarity[r]) for r in qrows], pa.float64()),
        }
    )
    import pyarrow.csv as pacsv

    with atomic.atomic_path(layout.select / "quarantine.csv") as tmp:
        pacsv.write_csv(quarantine, tmp)

    total_pos = max(1, n_pos)
    for st in choice.strata:
        st["positive_share"] = st["positives"] / total_pos
        st["target"] = round(want * st["positives"] / total_pos, 3) if cfg.quota == "match" else float(st["quota"])
        st["shortfall"] = max(0.0, round(st["target"] - st["chosen"], 3))
    strata = pa.Table.from_pylist(choice.strata)
    atomic.write_parquet(strata, layout.select / "strata.parquet")
    rules: dict[str, int] = {}
    for s in choice.status[out_rows]:
        rules[s] = rules.get(s, 0) + 1
    bands: dict[str, int] = {}
    for b in choice.band:
        bands[b] = bands.get(b, 0) + 1
    summary = dict(
        requested=want,
        chosen=int(len(choice.rows)),
        positives=n_pos,
        candidates=int((~pool.positive).sum()),
        eligible=int((choice.band_of >= 0).sum()),
        filled_outside_strata=choice.fill,
        rejected=int(len(out_rows)),
        rejected_by_rule=dict(sorted(rules.items())),
        quarantined=len(qrows),
        quarantine_threshold=None if not np.isfinite(choice.quarantine_threshold) else round(choice.quarantine_threshold, 4),
        band_edges=dict(hard=round(choice.band_edges[0], 4), medium=round(choice.band_edges[1], 4)),
        hardness=choice.hardness_by,
        chosen_by_band=dict(sorted(bands.items())),
        strata_unfilled=[s["stratum"] for s in choice.strata if s["positives"] and s["shortfall"] >= 1],
        seed=cfg.seed,
        quota=cfg.quota,
        diversity=cfg.diversity,
        axes=axes,
    )
    atomic.write_json(layout.select / "summary.json", summary)
    if len(choice.rows) < want:
        log.warning("select: asked for %d negatives, the pool had only %d eligible", want, len(choice.rows))
    log.info(
        "select: %d negatives (%s), %d left out (%s), %d quarantined",
        len(choice.rows), bands, len(out_rows), rules, len(qrows),
    )
    return summary
