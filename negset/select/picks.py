"""The picks: diverse negatives inside each stratum and band, then the shortfall fill.

Inside each cell (stratum x band) the candidates are ordered by a seeded key
and picked by k-center greedy on the embeddings (each pick the farthest from
the picks before it in the stratum), or seeded random (``diversity:
random``). Cells larger than ``KCENTER_POOL_MAX`` are subsampled (seeded);
cells over ``KCENTER_PROJECT_ABOVE`` values run on a seeded 128-d random
projection (one float32 matrix per seed). A pool large enough for the approximate
similarity has every candidate projected in that same pass over the vectors
(``Evidence.projected_rows``); smaller pools project each cell here, gathered,
converted and projected in torch on every core once over
``KCENTER_TORCH_ABOVE`` values. Labelled candidates the user's own model fires on (model false
positives) are offered before any quota. What the strata could not give is
filled from the rest with the same band mix and k-center diversity (far from
every negative chosen), never hardest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from negset.core import similarity as sim
from negset.select.bands import BANDS, Bands
from negset.select.evidence import Evidence
from negset.select.quotas import Stratum, band_quotas

KCENTER_POOL_MAX = 20_000  # larger cells are subsampled (seeded) before k-center greedy
KCENTER_PROJECT_ABOVE = 1e6  # cells with more values (rows x dims): k-center on a 128-d random projection
KCENTER_DIMS = sim.PROJECTION_DIMS
# cells with more values: gathered, converted and projected in torch (threaded; numpy's float16 gather and
# conversion run on one core); smaller cells keep the numpy path (no torch import for a small pool)
KCENTER_TORCH_ABOVE = 2e6


@dataclass(frozen=True)
class Pick:
    """One chosen negative and what its reason says."""

    row: int  # pool row
    rule: str  # model_false_positive (offered first) | quota (a stratum's quota) | fill (the shortfall fill)
    band: str
    stratum: str
    quota: int  # the stratum's quota (0 for a fill)
    rank: int  # k-center / random pick number inside its cell (fill: inside the fill)
    distance: float  # cosine distance to the earlier picks at pick time (NaN / inf: none)
    available: int  # candidates of its cell
    band_quota: int  # picks asked of its cell


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


def _unit_rows(X: np.ndarray) -> np.ndarray:
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


def pick_cell(ev: Evidence, rows: np.ndarray, q: int, chosen: list[int], stop: float) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``q`` of ``rows`` (in seeded order), far from each other and from ``chosen``: (indices into rows, distances)."""
    cfg = ev.cfg
    if cfg.diversity != "kcenter":
        k = min(q, len(rows))
        return np.arange(k), np.full(k, np.nan, np.float32)
    V = ev.pool.vectors
    centers = np.asarray(V[np.sort(np.asarray(chosen, np.int64))], np.float32) if chosen else None
    size = len(rows) * V.shape[1]
    made = ev.projected_rows(rows) if size > KCENTER_PROJECT_ABOVE else None
    if made is not None:  # a large pool: projected in the similarity pass already (one read of the vectors)
        X = _unit_rows(made)
        if centers is not None:
            centers = _unit_rows(centers @ projection(cfg.seed, V.shape[1]))
        return kcenter_greedy(X, q, centers, stop)
    if size > KCENTER_TORCH_ABOVE:  # large cell: projected in torch, on every core
        R = projection(cfg.seed, V.shape[1])
        X = projected_rows(V, rows, R)
        if centers is not None:
            centers = _unit_rows(centers @ R)
        return kcenter_greedy(X, q, centers, stop)
    by_pos = np.argsort(rows, kind="stable")
    X = np.empty((len(rows), V.shape[1]), np.float32)
    X[by_pos] = V[rows[by_pos]]  # read in file order, keep the seeded order
    if size > KCENTER_PROJECT_ABOVE:  # memory-bound: diversity on a seeded random projection
        R = projection(cfg.seed, X.shape[1])
        X = _unit_rows(X @ R)
        if centers is not None:
            centers = _unit_rows(centers @ R)
    return kcenter_greedy(X, q, centers, stop)


def projection(seed: int, dims: int) -> np.ndarray:
    """The seeded (dims x KCENTER_DIMS) float32 random projection (the same for every cell: made once per seed)."""
    return sim.random_projection(seed, dims, KCENTER_DIMS)


def projected_rows(V, rows: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Unit rows of ``V[rows] @ R`` (in the order of ``rows``), float32: gathered in file order, converted and
    projected in torch (float32 products, every core), never holding the cell at full width in numpy."""
    import warnings

    import torch

    by_pos = np.argsort(rows, kind="stable")
    with warnings.catch_warnings():  # a read-only memory map: only read here
        warnings.simplefilter("ignore", UserWarning)
        Vt = torch.from_numpy(V) if isinstance(V, np.ndarray) else torch.from_numpy(np.asarray(V))
    with torch.inference_mode():
        Xp = (Vt.index_select(0, torch.from_numpy(rows[by_pos])).float() @ torch.from_numpy(R)).numpy()
    X = np.empty_like(Xp)
    X[by_pos] = Xp
    return _unit_rows(X)


def pick_strata(ev: Evidence, eligible: np.ndarray, bands: Bands, strata: list[Stratum],
                quotas: dict[str, int], stop: float) -> list[Pick]:
    """Each stratum's quota, split over its bands, picked cell by cell (strata and bands in order)."""
    rng = np.random.default_rng(ev.cfg.seed)  # one stream for the subsampling of every large cell
    mix = ev.cfg.bands.mix
    picks: list[Pick] = []
    for st in strata:
        q = quotas.get(st.name, 0)
        per_band = band_quotas(q, st, mix)
        s_rows = np.flatnonzero(eligible & (ev.pool.stratum == st.code))  # ascending: one sequential read
        s_band = bands.code[s_rows]
        chosen_here: list[int] = []
        for bi, band in enumerate(BANDS):
            bq = per_band[band]
            if bq <= 0:
                continue
            rows = s_rows[s_band == bi]
            rows = rows[np.argsort(ev.keys[rows], kind="stable")]
            avail = len(rows)
            if len(rows) > KCENTER_POOL_MAX:
                rows = np.sort(rng.choice(rows, KCENTER_POOL_MAX, replace=False))
                rows = rows[np.argsort(ev.keys[rows], kind="stable")]
            idx, at = pick_cell(ev, rows, bq, chosen_here, stop)
            for rank, (j, d) in enumerate(zip(idx, at), 1):
                r = int(rows[j])
                chosen_here.append(r)
                picks.append(Pick(r, "quota", band, st.name, q, rank, float(d), avail, bq))
    return picks


def shortfall_fill(ev: Evidence, rest: np.ndarray, bands: Bands, picks: list[Pick], want: int) -> list[Pick]:
    """What the strata could not give, from ``rest``: split over the bands by ``bands.mix`` (a band short of
    candidates passes its share on) and picked by k-center greedy inside each band, far from every negative
    already chosen (a candidate within ``leaks.near_duplicate`` of one is never taken). Never hardest first."""
    missing = want - len(picks)
    rows = np.flatnonzero(rest)
    if missing <= 0 or not len(rows):
        return []
    by_band = tuple(int((bands.code[rows] == bi).sum()) for bi in range(len(BANDS)))
    per_band = band_quotas(missing, Stratum(-1, "fill", 0, len(rows), by_band), ev.cfg.bands.mix)
    chosen = [p.row for p in picks]
    out: list[Pick] = []
    for bi, band in enumerate(BANDS):
        bq = per_band[band]
        if bq <= 0:
            continue
        cell = rows[bands.code[rows] == bi]
        cell = cell[np.argsort(ev.keys[cell], kind="stable")]
        if len(cell) > KCENTER_POOL_MAX:
            cell = np.sort(np.random.default_rng(ev.cfg.seed).choice(cell, KCENTER_POOL_MAX, replace=False))
            cell = cell[np.argsort(ev.keys[cell], kind="stable")]
        idx, at = pick_cell(ev, cell, bq, chosen, ev.cfg.leaks.near_duplicate)
        for rank, (j, d) in enumerate(zip(idx, at), 1):
            r = int(cell[j])
            chosen.append(r)
            out.append(Pick(r, "fill", band, ev.pool.stratum_names[ev.pool.stratum[r]], 0, rank, float(d), len(cell), bq))
    return out


def model_false_positives(ev: Evidence, eligible: np.ndarray, bands: Bands, want: int) -> list[Pick]:
    """Labelled candidates (known negatives) on which the user's own model detects the target: the most
    valuable hard negatives, offered before any quota (highest score first, then by seeded key)."""
    d = ev.pool.detections
    if d is None or ev.pool.labelled is None or want <= 0:
        return []
    hit = np.fromiter((h is not None for h in d.user_hit), bool, len(d.user_hit))
    rows = np.flatnonzero(eligible & ev.pool.labelled & hit)
    score = np.asarray([d.user_hit[r]["score"] for r in rows], np.float64)
    rows = rows[np.lexsort((ev.keys[rows], -score))][:want]
    return [Pick(int(r), "model_false_positive", bands.name_of(r), ev.pool.stratum_names[ev.pool.stratum[r]], 0, i,
                 float("nan"), len(rows), len(rows)) for i, r in enumerate(rows, 1)]


def distractor_evidence(ev: Evidence) -> np.ndarray | None:
    """Per pool row, the detector's distractor evidence (:meth:`Detections.distractor_evidence`); None: no detect step."""
    d = ev.pool.detections
    return None if d is None else d.distractor_evidence()


NO_OBJECT_HARDNESS = (
    "no object-level hardness: the detector saw no confuser of the target (detect.confusers) in any candidate and "
    "no regions were embedded, so hard negatives are ranked by whole-image similarity only; set detect.confusers "
    "to detector classes that look like the target (or a target_map), or embed.regions: 3 for object similarity"
)


def no_object_hardness(ev: Evidence, cfg) -> bool:
    """Whether nothing object-level ranks the hard negatives: no confuser detection among the candidates and
    hardness by the whole image (README "Detector distractors")."""
    if not ev.hardness_by.endswith("image"):
        return False
    e = distractor_evidence(ev)
    return cfg.distractors <= 0 or e is None or not bool((e[ev.candidates] > 0).any())


def detector_distractors(ev: Evidence, eligible: np.ndarray, bands: Bands, want: int, chosen: list[int]) -> list[Pick]:
    """Up to ``select.distractors`` x ``want`` eligible candidates the detector nearly mistakes for the target
    (:func:`distractor_evidence` at least ``select.distractor_min``), strongest first (ties by seeded key),
    offered before the strata quotas; a candidate within ``leaks.near_duplicate`` of an earlier pick is skipped."""
    cfg = ev.cfg
    e = distractor_evidence(ev)
    n = int(np.floor(cfg.distractors * want + 1e-9))
    if e is None or n <= 0:
        return []
    rows = np.flatnonzero(eligible & (e >= cfg.distractor_min))
    rows = rows[np.lexsort((ev.keys[rows], -e[rows]))]
    V = ev.pool.vectors
    taken = [np.asarray(V[r], np.float32) for r in chosen]
    out: list[Pick] = []
    for r in rows:
        if len(out) >= n:
            break
        v = np.asarray(V[r], np.float32)
        d = min((1.0 - float(v @ t) for t in taken), default=float("inf"))
        if d < cfg.leaks.near_duplicate:
            continue
        taken.append(v)
        out.append(Pick(int(r), "distractor", bands.name_of(int(r)), ev.pool.stratum_names[ev.pool.stratum[r]], 0,
                        len(out) + 1, d, len(rows), n))
    return out


def distractor_text(ev: Evidence, row: int) -> str:
    """What the detector saw in a distractor pick, in words."""
    d = ev.pool.detections
    return (f"confuser '{d.confuser_class[row]}' at score {float(d.confuser_score[row]):.3f} "
            f"(target threshold of its source {float(d.confuser_threshold[row]):.3f})")


def hardness_text(ev: Evidence, row: int) -> str:
    """What a pick's hardness is made of, in words."""
    scene = float(ev.pos_similarity[row])
    h = float(ev.hardness[row])
    if ev.hardness_by == "regions":
        return f"object similarity {h:.3f} (best crop vs the positives' target objects), scene similarity {scene:.3f}"
    if ev.hardness_by == "image":
        return f"similarity {scene:.3f} to the positives"
    d = ev.pool.detections
    told = f"target score {float(d.target_score[row]):.3f}" + (
        f" of threshold {float(d.threshold[row]):.3f}" if np.isfinite(d.threshold[row]) else "")
    if d.confuser_class[row]:
        told += f", confuser '{d.confuser_class[row]}' {float(d.confuser_score[row]):.3f}"
    if ev.hardness_by == "evidence":
        return f"detection evidence {h:.3f} ({told}), scene similarity {scene:.3f}"
    base = ev.hardness_by.split(":", 1)[1]
    return (f"combined hardness {h:.3f} (mean rank of {base} similarity {float(ev.hardness_parts[base][row]):.3f} and "
            f"detection evidence {float(ev.hardness_parts['evidence'][row]):.3f}: {told}), scene similarity {scene:.3f}")


def pick_reason(p: Pick, ev: Evidence, bands: Bands, want: int) -> str:
    """The sentence ``selection.parquet`` gives for a pick: its hardness and band, its quota, how it was picked."""
    cfg = ev.cfg
    what = hardness_text(ev, p.row)
    if p.rule == "model_false_positive":
        h = ev.pool.detections.user_hit[p.row]
        box = "[" + ", ".join(f"{v:.0f}" for v in h["box"]) + "]"
        return (
            f"model false positive: labelled without the target, but {h['source']} detects '{h['class']}' at score "
            f"{h['score']:.3f} (threshold {h['threshold']:.3f}) in box {box}; the most valuable hard negative, offered "
            f"first ({p.rank} of {p.available}); {p.band} band, {what}; seed {cfg.seed}"
        )
    if p.rule == "distractor":
        e = float(ev.pool.detections.distractor_evidence(np.asarray([p.row]))[0])  # one row, not the pool per pick
        return (
            f"detector distractor: the detector sees {distractor_text(ev, p.row)} (evidence {e:.3f}, at least "
            f"select.distractor_min {cfg.distractor_min:g}); offered before the strata quotas, strongest first "
            f"({p.rank} of up to {p.band_quota} from {p.available}); {p.band} band, {what}; seed {cfg.seed}"
        )
    lo, up = bands.edges(p.band)
    if p.rule == "fill":
        how = (f"k-center pick {p.rank} of {p.band_quota} from {p.available} (cosine distance {p.distance:.3f} to earlier picks)"
               if cfg.diversity == "kcenter" and np.isfinite(p.distance) else f"pick {p.rank} of {p.band_quota} from {p.available}")
        return (
            f"shortfall fill: the positives' strata had too few eligible candidates; {p.band} negative by the band mix: "
            f"{what} (band {lo:.3f}..{up:.3f}), stratum '{p.stratum}'; {how}; seed {cfg.seed}"
        )
    if cfg.diversity == "kcenter" and np.isfinite(p.distance):
        how = f"k-center pick {p.rank} of {p.band_quota} from {p.available} (cosine distance {p.distance:.3f} to earlier picks)"
    else:
        first = "first k-center" if cfg.diversity == "kcenter" else "seeded random"
        how = f"{first} pick {p.rank} of {p.band_quota} from {p.available}"
    return (
        f"{p.band} negative: {what} (band {lo:.3f}..{up:.3f}); "
        f"stratum '{p.stratum}' quota {p.quota} of {want} ({cfg.quota}); {how}; seed {cfg.seed}"
    )


def strata_table(strata: list[Stratum], quotas: dict[str, int], picks: list[Pick]) -> list[dict]:
    """One row per stratum: positives, eligible candidates (per band), quota and negatives chosen (fill included)."""
    chosen: dict[str, int] = {}
    for p in picks:
        chosen[p.stratum] = chosen.get(p.stratum, 0) + 1
    return [
        dict(stratum=s.name, positives=s.positives, available=s.available, available_hard=s.by_band[0],
             available_medium=s.by_band[1], available_context=s.by_band[2], quota=int(quotas.get(s.name, 0)),
             chosen=chosen.get(s.name, 0))
        for s in strata
    ]
