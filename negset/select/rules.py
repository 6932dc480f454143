"""The rules that leave candidates out, one unit each, in precedence order (``PIPELINE``).

A rule has a ``name`` (what ``rejected.parquet`` and the summary call it),
``reads`` (the ``select:`` parameters it reads), ``judge(ev, live)`` that
returns a :class:`~negset.select.ledger.Verdict` (mask of the rows that break
it, their score, a detail for some rows; ``None`` when the rule is off) and
``explain(row, score, detail, ev, facts)``, the sentence ``rejected.parquet``
gives as the reason. ``live`` are the candidates no earlier rule left out: a
rule whose test depends on the rest of the pool (a percentile, duplicate
groups) judges those only.

Adding a rule: write its class here, put an instance in ``PIPELINE`` at its
precedence and add its row to README's rules table.
"""

from __future__ import annotations

import numpy as np

from negset.core import similarity as sim
from negset.select.evidence import Evidence
from negset.select.ledger import Verdict
from negset.tag import quality

HASH_PAIRS_MAX = 5e7  # candidates x positives compared bit by bit; beyond, identical hashes only


class Rule:
    name: str = ""
    reads: tuple[str, ...] = ()
    suspects_positive: bool = False  # True: only a suspicion, so an image a person reviewed as no_target is spared

    def judge(self, ev: Evidence, live: np.ndarray) -> Verdict | None:
        raise NotImplementedError

    def explain(self, row: int, score: float, detail: str | None, ev: Evidence, facts: dict) -> str:
        raise NotImplementedError


def scene_score(ev: Evidence) -> np.ndarray:
    """The scene similarity as the score of the context and quarantine rules."""
    return ev.pos_similarity.astype(np.float64)


class TargetLabel(Rule):
    name = "target_label"

    def judge(self, ev, live):
        return Verdict(live & ev.pool.has_target, 1.0)

    def explain(self, row, score, detail, ev, facts):
        return "labelled with the target class"


class ReviewedPositive(Rule):
    """A person saw the target (``negset review``, ``reviews.csv``): out for good, listed in new_positives.csv."""

    name = "reviewed_positive"

    def judge(self, ev, live):
        if ev.reviewed is None or not ev.reviewed.positive.any():
            return None
        return Verdict(live & ev.reviewed.positive, 1.0)

    def explain(self, row, score, detail, ev, facts):
        return f"contains the target: {ev.reviewed.of_row[row].describe()}; listed in new_positives.csv to be labelled"


class ExactDuplicate(Rule):
    """Same bytes as a positive (ingest merges equal bytes; this guards other catalogs)."""

    name = "exact_duplicate"

    def judge(self, ev, live):
        pos_sha = set(ev.pool.sha256[ev.positives].tolist())
        if not pos_sha:
            return None
        same = np.fromiter((s in pos_sha for s in ev.pool.sha256), dtype=bool, count=len(ev.pool.sha256))
        return Verdict(live & same, 1.0)

    def explain(self, row, score, detail, ev, facts):
        return "same bytes (sha256) as a positive"


class NearDuplicate(Rule):
    """A copy of a positive: close in the embedding, or by difference hash (strong resizes move in the embedding)."""

    name = "near_duplicate"
    reads = ("leaks.near_duplicate", "leaks.hash_bits")

    def judge(self, ev, live):
        leaks = ev.cfg.leaks
        dist = 1.0 - ev.nearest_similarity.astype(np.float64)
        mask = live & (dist < leaks.near_duplicate)
        detail: dict[int, str] = {}
        if ev.pool.dhash is not None and leaks.hash_bits > 0 and len(ev.positives):
            for r, pos_row, bits in self.hash_matches(ev, np.flatnonzero(live & ~mask)):
                mask[r] = True
                detail[r] = (
                    f"difference hash within {bits} bits of positive {ev.name_of(pos_row)}"
                    if bits is not None else f"difference hash identical to positive {ev.name_of(pos_row)}"
                )
        return Verdict(mask, dist, detail)

    @staticmethod
    def hash_matches(ev: Evidence, rows: np.ndarray) -> list[tuple[int, int, int | None]]:
        """(row, nearest positive by hash, bits apart) for the rows within ``leaks.hash_bits`` of a positive.

        Very large pools compare identical hashes only (bits None).
        """
        hp = ev.pool.dhash[ev.positives]
        out = []
        if len(rows) * len(ev.positives) <= HASH_PAIRS_MAX:
            for start in range(0, len(rows), 4096):
                part = rows[start : start + 4096]
                ham = quality.hamming(ev.pool.dhash[part], hp)
                j = ham.argmin(axis=1)
                bits = ham[np.arange(len(part)), j]
                hit = bits <= ev.cfg.leaks.hash_bits
                out += [(int(r), int(ev.positives[pj]), int(b)) for r, pj, b in zip(part[hit], j[hit], bits[hit])]
            return out
        order = np.argsort(hp, kind="stable")
        at = np.minimum(np.searchsorted(hp[order], ev.pool.dhash[rows]), len(hp) - 1)
        hit = hp[order[at]] == ev.pool.dhash[rows]
        return [(int(r), int(ev.positives[order[a]]), None) for r, a in zip(rows[hit], at[hit])]

    def explain(self, row, score, detail, ev, facts):
        if detail:
            return f"{detail} (cosine distance {score:.4f})"
        near = ev.name_of(ev.nearest_positive[row])
        return f"cosine distance {score:.4f} to positive {near} is under {ev.cfg.leaks.near_duplicate}"


def box_text(box) -> str:
    return "[" + ", ".join(f"{float(v):.0f}" for v in box) + "]" if box is not None else "[?]"


class DetectedTarget(Rule):
    """An unlabelled candidate on which a detector (or the user's predictions) finds the target at or above
    the source's calibrated threshold (``detect.calibration``): a suspected positive, quarantined.

    Labelled candidates are known negatives: a detection of the target on one is a false positive of
    that source (offered first as a hard negative when it is the user's own model), never a reason to
    leave it out. Reads the detect step's evidence (``negset/detect/store.py``); off when detect has not run.
    """

    name = "detected_target"
    suspects_positive = True  # a detector's word is a suspicion: a person's "no target" review clears it
    reads = ("weak_detection_percentile",)  # detect.calibration decides the threshold (data/detect/calibration.json)

    def judge(self, ev, live):
        d = ev.pool.detections
        if d is None:
            return None
        unlabelled = ~ev.pool.labelled if ev.pool.labelled is not None else np.ones(len(ev.pool.sha256), bool)
        mask = live & unlabelled & d.detected
        detail: dict[int, str] = {}
        facts: dict = {}
        pct = ev.cfg.weak_detection_percentile
        rest = live & unlabelled & ~mask
        if pct is not None and rest.any():
            # a weak target detection (under the threshold) on an image that also looks like the positives
            # (object hardness at or above this percentile of the unlabelled candidates): quarantined too
            like = ev.likeness if ev.likeness is not None else ev.hardness
            edge = float(np.percentile(like[rest], pct))
            if ev.exact is not None and ev.likeness_by == "image":  # approximate: exact near the edge
                ev.rescore_near("topk", np.flatnonzero(rest & (d.target_score > 0)), edge, "weak_detection")
            weak = rest & (d.target_score > 0) & (like >= edge)
            for r in np.flatnonzero(weak):
                detail[int(r)] = (f"{ev.likeness_by} similarity {float(like[r]):.3f} >= p{pct:g} of the unlabelled "
                                  f"candidates' ({edge:.3f})")
            mask |= weak
            facts["weak_edge"] = edge
        return Verdict(mask, d.target_score.copy(), detail, facts=facts)

    def explain(self, row, score, detail, ev, facts):
        d = ev.pool.detections
        found = f"{d.source[row]} detects '{d.cls[row]}' at score {score:.3f}"
        where = f"in box {box_text(d.box[row])}"
        if detail:
            return f"suspected positive: weak detection: {found} (under the threshold {float(d.threshold[row]):.3f}) {where}, and {detail}"
        return f"suspected positive: {found} (calibrated threshold {float(d.threshold[row]):.3f}) {where}"


class QualityCheck(Rule):
    """An overly simple image by one check of ``negset.tag.quality`` (score under the threshold)."""

    def __init__(self, check: str):
        self.check = check
        self.name = f"quality:{check}"
        self.reads = (f"quality.{check}",)

    def judge(self, ev, live):
        thr = getattr(ev.cfg.quality, self.check)
        s = ev.pool.scores.get(f"q_{self.check}")
        if thr is None or s is None:
            return None
        s = np.asarray(s, np.float64)
        return Verdict(live & (s < thr), s)

    def explain(self, row, score, detail, ev, facts):
        return f"{self.check} score {score:.3f} is under {getattr(ev.cfg.quality, self.check)}"


class Quarantine(Rule):
    """A suspected unlabelled positive: as close to the positives as a typical positive is to the others,
    or nearer to a positive than to any labelled negative. Listed in quarantine.csv for a person."""

    name = "quarantine"
    suspects_positive = True
    reads = ("quarantine.enabled", "quarantine.positive_percentile", "quarantine.min_similarity",
             "quarantine.nearest_labelled", "quarantine.reference_max", "top_k", "seed")

    def judge(self, ev, live):
        q = ev.cfg.quarantine
        if not (q.enabled and len(ev.positives) >= 2):
            return None
        loo = sim.leave_one_out_similarity(ev.P, ev.cfg.top_k)
        threshold = max(float(np.percentile(loo, q.positive_percentile)), q.min_similarity)
        pool = ev.pool
        unlabelled = ~pool.labelled if pool.labelled is not None else np.ones(len(pool.sha256), bool)
        if ev.exact is not None:  # approximate similarity: the rows near the threshold decide on exact values
            ev.rescore_near("topk", np.flatnonzero(live & unlabelled), threshold, "quarantine")
        mask = live & unlabelled & (ev.pos_similarity >= threshold)
        detail: dict[int, str] = {}
        if q.nearest_labelled and pool.labelled is not None:
            for r, pos_sim, neg_sim in self.nearer_to_a_positive(ev, np.flatnonzero(live & unlabelled & ~mask)):
                mask[r] = True
                detail[r] = f"nearest labelled image is a positive ({pos_sim:.3f} vs {neg_sim:.3f} for the nearest labelled negative)"
        return Verdict(mask, scene_score(ev), detail, facts=dict(threshold=threshold))

    @staticmethod
    def nearer_to_a_positive(ev: Evidence, rows: np.ndarray) -> list[tuple[int, float, float]]:
        """(row, nearest positive's similarity, nearest labelled negative's) for the rows nearer to a positive.

        The labelled negatives are the labelled candidates without the target
        (at most ``reference_max``, a seeded sample beyond).
        """
        pool, q = ev.pool, ev.cfg.quarantine
        ref = np.flatnonzero(ev.candidates & pool.labelled & ~pool.has_target)
        if len(ref) > q.reference_max:
            ref = np.sort(np.random.default_rng(ev.cfg.seed).choice(ref, q.reference_max, replace=False))
        if not (len(rows) and len(ref)):
            return []
        R = np.asarray(pool.vectors[ref], np.float32)
        # the labelled negatives spread over the whole pool (no clusters to list): brute force when approximate
        neg = sim.estimate_similarity(sim.RowView(pool.vectors, rows), R, 1, ev.approx_above, seed=ev.cfg.seed,
                                      index=False)
        neg_best = neg.best
        if ev.exact is not None or not neg.exact:  # approximate: close calls are decided on exact values
            pos = ev.estimate if ev.exact is not None else sim.Estimate(*(np.zeros(0),) * 3, "exact float32")
            unsure = sim.unsure_order(pos, ev.nearest_similarity[rows], neg, neg_best)
            if pos.refine is not None:  # int8 estimates: the unsure ones' float32 values first (lower bounds)
                at = np.flatnonzero(unsure & ~ev.exact[rows])
                if len(at):
                    ev.refine_rows(rows[at])
                    unsure[at] = sim.unsure_order(pos.refined, ev.nearest_similarity[rows[at]], neg, neg_best[at])
            ev.rescore(rows[unsure], "nearest_labelled")
            if not neg.exact and unsure.any():
                neg_best[unsure] = sim.exact_similarity(pool.vectors, rows[unsure], R, 1, numpy_ok=False)[1]
                ev.rescored["nearest_labelled_negative"] = ev.rescored.get("nearest_labelled_negative", 0) + int(unsure.sum())
        pos_best = ev.nearest_similarity[rows]
        hit = pos_best > neg_best
        return list(zip(rows[hit].tolist(), pos_best[hit], neg_best[hit]))

    def explain(self, row, score, detail, ev, facts):
        near = ev.name_of(ev.nearest_positive[row])
        if detail:
            return f"suspected positive: {detail}; nearest positive {near}"
        return (
            f"suspected positive: similarity {score:.3f} to the positives reaches {facts['threshold']:.3f} "
            f"(p{ev.cfg.quarantine.positive_percentile:g} of the positives' own); nearest positive {near}"
        )


def spared_distractors(ev: Evidence, verdict: Verdict) -> Verdict:
    """A context rule's verdict without the detector distractors (``select.distractors`` on): a candidate the
    detector nearly mistakes for the target is relevant whatever its scene; how many were spared is a fact."""
    d = ev.pool.detections
    if d is None or ev.cfg.distractors <= 0:
        return verdict
    spare = verdict.mask & (d.distractor_evidence() >= ev.cfg.distractor_min)
    return Verdict(verdict.mask & ~spare, verdict.score, verdict.detail,
                   facts=dict(verdict.facts, spared_distractors=int(spare.sum())))


class ContextBackground(Rule):
    name = "context:background"
    reads = ("context.require_positive_background",)

    def judge(self, ev, live):
        bg = ev.pool.background
        if not (ev.cfg.context.require_positive_background and bg is not None and len(ev.positives)):
            return None
        return spared_distractors(ev, Verdict(live & ~np.isin(bg, np.unique(bg[ev.positives])), scene_score(ev)))

    def explain(self, row, score, detail, ev, facts):
        return "its background cluster has no positive"


class ContextIrrelevant(Rule):
    """The least similar share of what is left (a percentile of the live candidates)."""

    name = "context:irrelevant"
    reads = ("context.irrelevant_below_percentile",)

    def judge(self, ev, live):
        pct = ev.cfg.context.irrelevant_below_percentile
        if not (pct > 0 and live.any() and len(ev.positives)):
            return None
        low = float(np.percentile(ev.pos_similarity[live], pct))
        return spared_distractors(ev, Verdict(live & (ev.pos_similarity < low), scene_score(ev), facts=dict(below=low)))

    def explain(self, row, score, detail, ev, facts):
        return f"similarity {score:.3f} to the positives is under p{ev.cfg.context.irrelevant_below_percentile:g} of the pool"


class PoolDuplicate(Rule):
    """Near-duplicate groups inside the pool keep one image (the largest, then by seeded key).

    Pools up to ``leaks.pool_dedup_max`` eligible candidates are grouped here
    (facts ``whole_pool``); larger ones check the picks instead
    (:meth:`among_picks`, called by the selection after the picks).
    """

    name = "pool_duplicate"
    reads = ("leaks.near_duplicate", "leaks.pool_dedup_max", "seed")

    def judge(self, ev, live):
        rows = np.flatnonzero(live)
        whole = 0 < len(rows) <= ev.cfg.leaks.pool_dedup_max
        n = len(ev.pool.sha256)
        mask, score, detail = np.zeros(n, bool), np.full(n, np.nan), {}
        if whole:
            area = ev.pool.area[rows] if ev.pool.area is not None else np.zeros(len(rows))
            pref = rows[np.lexsort((ev.keys[rows], -np.asarray(area, np.float64)))]
            keep_of = sim.near_duplicate_groups(ev.pool.vectors, pref, ev.cfg.leaks.near_duplicate)
            dup = keep_of >= 0
            V = ev.pool.vectors
            for r, k in zip(pref[dup], pref[keep_of[dup]]):
                mask[r] = True
                score[r] = 1.0 - float(np.dot(np.asarray(V[r], np.float32), np.asarray(V[k], np.float32)))
                detail[int(r)] = str(ev.pool.sha256[k])
        return Verdict(mask, score, detail, facts=dict(whole_pool=bool(whole)))

    def among_picks(self, ev: Evidence, rows: np.ndarray) -> Verdict:
        """Near-duplicates among the picks (in pick order: the earlier pick is kept); no score."""
        mask = np.zeros(len(ev.pool.sha256), bool)
        detail: dict[int, str] = {}
        keep_of = sim.near_duplicate_groups(ev.pool.vectors, rows, ev.cfg.leaks.near_duplicate)
        for i in np.flatnonzero(keep_of >= 0):
            mask[rows[i]] = True
            detail[int(rows[i])] = str(ev.pool.sha256[rows[keep_of[i]]])
        return Verdict(mask, float("nan"), detail)

    def explain(self, row, score, detail, ev, facts):
        return f"near-duplicate of candidate {(detail or '?')[:12]}, which is kept"


# precedence = order: an image that breaks several rules is left out by the first
PIPELINE: tuple[Rule, ...] = (
    TargetLabel(),
    ReviewedPositive(),
    ExactDuplicate(),
    NearDuplicate(),
    DetectedTarget(),
    *(QualityCheck(c) for c in quality.CHECKS),
    Quarantine(),
    ContextBackground(),
    ContextIrrelevant(),
    PoolDuplicate(),
)
RULES = tuple(rule.name for rule in PIPELINE)
BY_NAME = {rule.name: rule for rule in PIPELINE}
