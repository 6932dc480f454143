"""What the rules, bands and picks read: each candidate's similarity to the positives.

Computed once per selection, before any rule runs:

- *scene similarity* (``pos_similarity``): mean of the top-k cosine
  similarities between the whole image and the positives;
- the nearest positive and its similarity (``nearest_similarity``), exact in
  float32 wherever a near-duplicate decision depends on it;
- *hardness*, what the bands rank by: the scene similarity, or (regions
  embedded, ``select.hardness`` auto/regions) the best match between the image
  or one of its crops and a target object cropped from a positive; or
  (``evidence``) the detect step's distractor evidence, a weak target score
  relative to its threshold or a confuser's score; or (``combined``) the mean
  of the percentile ranks of the object similarity and that evidence;
- a seeded key per image (first picks, ties, preference inside duplicate groups).

Pools over ``similarity.INDEX_ABOVE`` candidates x positives get an
approximate scene similarity (``similarity.estimate_similarity``: an index
over the positives, its error measured on a sample). Every row whose
near-duplicate decision lies within the measured margin of the threshold is
then re-scored exactly (float32, all dimensions, all positives) before any
rule runs; the quarantine rules and the selection re-score the rows near
their own thresholds and every pick (:meth:`Evidence.rescore`), so no leak
rule is weakened and every reason quotes exact numbers where it decides.

``data/select/scores.parquet`` records these per image, so the report shows
what the selection used instead of computing it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from negset.core import similarity as sim
from negset.core.config import Select
from negset.core.errors import NegsetError
from negset.select.pool import Pool, owner_rows
from negset.select.reviewed import Reviewed


@dataclass
class Evidence:
    pool: Pool
    cfg: Select
    positives: np.ndarray  # pool rows of the positives
    candidates: np.ndarray  # bool per pool row
    P: np.ndarray  # the positives' vectors, float32
    pos_similarity: np.ndarray  # float32 per row, NaN for positives
    nearest_similarity: np.ndarray  # float32 per row, NaN for positives
    nearest_positive: np.ndarray  # pool row of the nearest positive, -1 = none
    hardness: np.ndarray  # what the bands use: pos_similarity, or the region-to-object similarity
    hardness_by: str  # image | regions | evidence | combined:image | combined:regions
    keys: np.ndarray  # seeded uint64 key per row
    reviewed: Reviewed | None = None  # a person's decisions (reviews.csv), set by choose
    hardness_parts: dict = field(default_factory=dict)  # evidence / combined: the signals (per row) behind hardness
    likeness: np.ndarray | None = None  # the similarity part of hardness (regions or image), never the detections
    likeness_by: str = "image"
    estimate: sim.Estimate | None = None  # how the scene similarity was computed, and its measured error
    exact: np.ndarray | None = None  # approximate estimate: bool per row, scored exactly (None: every row is exact)
    rescored: dict = field(default_factory=dict)  # approximate estimate: rows re-scored exactly, by cause
    margins_used: dict = field(default_factory=dict)  # approximate estimate: cause -> threshold and margins
    approx_above: float = sim.INDEX_ABOVE  # products over this are approximated (here and in the quarantine)
    projected_at: np.ndarray | None = None  # pool row -> row of estimate.projected (-1: none), when it was made

    def projected_rows(self, rows: np.ndarray) -> np.ndarray | None:
        """The k-center projections (float32, not normalised) of pool ``rows`` made in the similarity pass, or
        None when that pass made none for some of them (small pools: exact, no index)."""
        if self.projected_at is None:
            return None
        at = self.projected_at[rows]
        return self.estimate.projected[at] if len(at) and (at >= 0).all() else None

    def name_of(self, row: int) -> str:
        """The uri of a pool row, '?' for none (-1)."""
        return self.pool.name_of(row) if row >= 0 else "?"

    def rescore_near(self, kind: str, rows: np.ndarray, threshold: float, cause: str) -> int:
        """Re-score exactly the ``rows`` whose approximate ``kind`` (topk: scene similarity, best: nearest
        similarity) could lie on the other side of ``threshold``; the margins used are kept for the report."""
        if self.exact is None or not len(rows):
            return 0
        values = self.pos_similarity[rows] if kind == "topk" else self.nearest_similarity[rows]
        down, up = self.estimate.bounds(kind, threshold)
        self.margins_used[cause] = dict(threshold=round(float(threshold), 5), below=round(up, 5), above=round(down, 5))
        near = self.estimate.near(kind, values, threshold) & ~self.exact[rows]
        if self.estimate.refine is not None and near.any():
            # int8 estimates near the threshold: their float32 values over the same probed lists first (lower
            # bounds, as a float32 index gives); only those near it by the float32 values' own error are re-scored
            at = np.flatnonzero(near)
            firm = self.refine_rows(rows[at])[0 if kind == "topk" else 1]
            near[at] = self.estimate.refined.near(kind, firm, threshold)
            down, up = self.estimate.refined.bounds(kind, threshold)
            self.margins_used[cause].update(refined=len(at), below_float32=round(up, 5), above_float32=round(down, 5))
        return self.rescore(rows[near], cause)

    def refine_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The float32 estimates (over the same probed lists) in place of the int8 ones for pool ``rows``: their
        (scene similarity, nearest similarity), now stored (the hardness follows where it is the scene similarity)."""
        t, b, nearest = self.estimate.refine(sim.RowView(self.pool.vectors, rows))
        self.store_scene(rows, t, b, nearest)
        return t, b

    def store_scene(self, rows: np.ndarray, topk: np.ndarray, best: np.ndarray, nearest: np.ndarray) -> None:
        """Scene similarity, nearest similarity and nearest positive (an index of P) for pool ``rows``, written
        into the evidence and into the arrays holding the scene similarity as hardness or likeness."""
        self.pos_similarity[rows], self.nearest_similarity[rows] = topk, best
        self.nearest_positive[rows] = self.positives[nearest]
        for arr in {id(c): c for c in self._scene_copies()}.values():
            arr[rows] = topk

    def rescore(self, rows: np.ndarray, cause: str) -> int:
        """Exact float32 scene similarity, nearest similarity and nearest positive for ``rows`` (pool rows) not
        yet exact; the hardness follows where it is the scene similarity. Returns how many were re-scored."""
        if self.exact is None:
            return 0
        rows = np.asarray(rows, np.int64)
        rows = rows[~self.exact[rows]]
        self.rescored[cause] = self.rescored.get(cause, 0) + len(rows)
        if len(rows):
            exact_rows(self, rows)
        return len(rows)

    def _scene_copies(self) -> list[np.ndarray]:
        """The arrays that hold the scene similarity as hardness or likeness."""
        out = [self.hardness] if self.hardness_by == "image" else []
        if "image" in self.hardness_parts:
            out.append(self.hardness_parts["image"])
        if self.likeness is not None and self.likeness_by == "image":
            out.append(self.likeness)
        return out

    def similarity_report(self) -> dict:
        """How the scene similarity was computed: method, sampled error, margins at the leak thresholds, re-scored rows."""
        out = self.estimate.summary() if self.estimate is not None else dict(method="exact float32", exact=True)
        if self.exact is not None:
            out.update(margins=dict(self.margins_used), rescored=dict(self.rescored),
                       exact_rows=int(self.exact[self.candidates].sum()), candidates=int(self.candidates.sum()))
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


def scene_similarity(pool: Pool, cand_rows: np.ndarray, pos_rows: np.ndarray, P: np.ndarray, cfg: Select,
                     approx_above: float = sim.INDEX_ABOVE):
    """(mean top-k similarity, nearest similarity, nearest positive row per pool row (NaN / -1 elsewhere), Estimate).

    Over ``approx_above`` products the estimate is approximate (see
    ``similarity.estimate_similarity``); the caller re-scores the rows that
    need exact values.
    """
    n = len(pool.sha256)
    topk = np.full(n, np.nan, np.float32)
    best = np.full(n, np.nan, np.float32)
    nearest = np.full(n, -1, np.int64)
    if not (len(pos_rows) and len(cand_rows)):
        return topk, best, nearest, None
    lo, hi = int(cand_rows[0]), int(cand_rows[-1]) + 1
    # contiguous candidates: a view, no copy; else gathered chunk by chunk
    C = pool.vectors[lo:hi] if hi - lo == len(cand_rows) else sim.RowView(pool.vectors, cand_rows)
    # the k-center projection of the picks comes from the same pass over the pool (index path only)
    project = sim.random_projection(cfg.seed, P.shape[1], sim.PROJECTION_DIMS) if cfg.diversity == "kcenter" else None
    est = sim.estimate_similarity(C, P, cfg.top_k, approx_above, seed=cfg.seed, project=project)
    topk[cand_rows], best[cand_rows], nearest[cand_rows] = est.topk, est.best, pos_rows[est.arg]
    return topk, best, nearest, est


def exact_rows(ev: Evidence, rows: np.ndarray) -> None:
    """Exact float32 scene similarity, nearest similarity and positive for pool ``rows``, written into the
    evidence (``Evidence.store_scene``); they are marked exact."""
    # only an approximate selection re-scores rows, and it runs torch already: torch for every size
    t, b, a = sim.exact_similarity(ev.pool.vectors, rows, ev.P, ev.cfg.top_k, numpy_ok=False)
    ev.store_scene(rows, t, b, a)
    ev.exact[rows] = True


def percentile_ranks(x: np.ndarray) -> np.ndarray:
    """Each value's rank in [0, 1] (ties share their mean rank; one value: 0.5)."""
    if len(x) <= 1:
        return np.full(len(x), 0.5)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts + 1) / 2.0  # 0-based mean rank of each distinct value
    return mean_rank[inverse] / (len(x) - 1)


def evidence_hardness(pool: Pool, cand_rows: np.ndarray, base: np.ndarray, base_by: str, how: str):
    """(hardness, by, parts) for ``select.hardness`` evidence or combined, from the detect step's evidence."""
    if pool.detections is None:
        raise NegsetError(
            f"select.hardness: {how} needs the detect step's evidence (data/detect/evidence.parquet with a source)",
            hint="give detect a source (detect.sources: [{model: builtin:yolox_nano}]), or hardness: auto",
        )
    e = pool.detections.evidence_hardness()
    hard = base.copy()
    if how == "evidence":
        hard[cand_rows] = e[cand_rows]
        return hard, "evidence", {"evidence": e}
    hard[cand_rows] = 0.5 * (percentile_ranks(base[cand_rows]) + percentile_ranks(e[cand_rows]))
    return hard, f"combined:{base_by}", {base_by: base, "evidence": e}


def object_hardness(pool: Pool, cand_rows: np.ndarray, topk: np.ndarray, cfg: Select) -> tuple[np.ndarray, str, dict]:
    """(hardness per pool row, by, parts): what ``select.hardness`` asks for and the pool allows.

    by = image | regions | evidence | combined:<image or regions>; parts = the signals a combined hardness joins.
    """
    hard = topk.copy()
    by = "image"
    if cfg.hardness != "image" and pool.object_vectors is not None and len(cand_rows):
        own = pool.object_owner
        objects = pool.object_vectors[pool.positive[own]] if len(own) else pool.object_vectors[:0]
        if len(objects):
            hard[cand_rows] = region_hardness(pool, cand_rows, objects)
            by = "regions"
    if cfg.hardness == "regions" and by != "regions":
        raise NegsetError(
            "select.hardness: regions needs region embeddings of the pool and target objects (boxes) on the positives",
            hint="set embed.regions: 3 (and label the positives with boxes), or hardness: auto",
        )
    if cfg.hardness in ("evidence", "combined"):
        return evidence_hardness(pool, cand_rows, hard, by, cfg.hardness)
    return hard, by, {}


def gather_evidence(pool: Pool, cfg: Select, approx_above: float = sim.INDEX_ABOVE) -> Evidence:
    """Every candidate's scene similarity, nearest positive and hardness (exact near the near-duplicate threshold)."""
    pos_rows = np.flatnonzero(pool.positive)
    cand = ~pool.positive
    cand_rows = np.flatnonzero(cand)
    P = np.asarray(pool.vectors[pos_rows], dtype=np.float32) if len(pos_rows) else np.zeros((0, 1), np.float32)
    topk, best, nearest, est = scene_similarity(pool, cand_rows, pos_rows, P, cfg, approx_above)
    ev = Evidence(
        pool=pool, cfg=cfg, positives=pos_rows, candidates=cand, P=P,
        pos_similarity=topk, nearest_similarity=best, nearest_positive=nearest,
        hardness=topk, hardness_by="image", keys=np.zeros(0, np.uint64), estimate=est, approx_above=approx_above,
    )
    if est is not None and est.projected is not None:
        ev.projected_at = np.full(len(pool.sha256), -1, np.int64)
        ev.projected_at[cand_rows] = np.arange(len(cand_rows))
    if est is not None and not est.exact:
        # near-duplicates of a positive: every row near the threshold (or over it) is scored exactly first
        ev.exact = ~cand.copy()
        nd = 1.0 - cfg.leaks.near_duplicate
        ev.rescore_near("best", cand_rows, nd, "near_duplicate")
        # and every row over the threshold: a near-duplicate's reason quotes its exact distance and positive
        ev.rescore(cand_rows[best[cand_rows] >= nd], "near_duplicate")
    hard, by, parts = object_hardness(pool, cand_rows, topk, cfg)
    likeness_by = by.removeprefix("combined:") if by != "evidence" else None
    likeness = parts.get(likeness_by, hard) if likeness_by else None
    if likeness is None:  # evidence hardness: the similarity it replaced (regions when embedded)
        likeness, likeness_by, _ = object_hardness(pool, cand_rows, topk, cfg.model_copy(update={"hardness": "auto"}))
    ev.hardness, ev.hardness_by, ev.hardness_parts = hard, by, parts
    ev.likeness, ev.likeness_by = likeness, likeness_by
    ev.keys = seeded_keys(pool.sha256, cfg.seed)
    return ev
