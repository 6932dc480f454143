"""Step 4, select: choose negatives that are actually good.

The selection is a pipeline of named units (:func:`choose`):

1. evidence (``evidence.py``): each candidate's scene similarity to the
   positives, its nearest positive and its hardness (whole image, or the best
   crop against the positives' target objects);
2. rules (``rules.py``, in precedence order): ``target_label``,
   ``reviewed_positive`` (a person's decisions in ``reviews.csv``:
   ``reviewed.py``), ``exact_duplicate``, ``near_duplicate``, ``detected_target`` (the detect
   step's evidence), ``quality:<check>``, ``quarantine``,
   ``context:background``, ``context:irrelevant``, ``pool_duplicate``. A ledger (``ledger.py``) records the first rule each
   image broke, its score and detail; ``rejected.parquet`` lists them with
   each rule's sentence;
3. bands (``bands.py``): hard / medium / context by hardness;
4. quotas (``quotas.py``, DuckDB over the strata): ``match`` or ``uniform``,
   a minimum per stratum, shortfalls redistributed, split over the bands by
   ``bands.mix``;
5. picks (``picks.py``): model false positives first (labelled candidates
   the user's own model fires on), then k-center greedy (or seeded random)
   inside each stratum and band; deterministic for a seed; then the
   shortfall fill (band mix and k-center too). A stratum axis ``unknown``
   for most candidates is left out of the strata first (``quotas.usable_axes``).

Every image chosen carries its reason; ``outputs.py`` writes ``data/select/``.
The core works on arrays (vectors may be a float16 memmap), so a pool of a
million candidates never becomes Python lists; the similarity kernels
(``negset.core.similarity``) run in torch bfloat16 on large pools, with an
exact float32 re-check of every near-duplicate decision.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from negset.core import atomic, catalog
from negset.core import similarity as sim
from negset.core.config import Params, Select
from negset.core.layout import Layout
from negset.select import outputs
from negset.select.bands import assign_bands
from negset.select.choice import Choice
from negset.select.evidence import gather_evidence
from negset.select.ledger import Ledger
from negset.select.picks import (NO_OBJECT_HARDNESS, detector_distractors, model_false_positives, no_object_hardness,
                                 pick_reason, pick_strata, shortfall_fill, strata_table)
from negset.select.pool import Pool, load_pool
from negset.select.quotas import axis_warning, count_strata, stratum_quotas, usable_axes
from negset.review.decisions import CONTAINS_TARGET, read_reviews, reviews_path
from negset.select.reviewed import (Reviewed, image_sizes, new_positive_rows, new_positives_coco, new_positives_table,
                                    reviewed_in_pool)
from negset.select.rules import BY_NAME, PIPELINE, RULES

log = logging.getLogger("negset.select")


class _Stopwatch:
    def __init__(self):
        self.times: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self.last, 3)
        self.last = now


def _in_band(h: float, band: str, bands) -> bool:
    lo, up = bands.edges(band)
    return h >= lo and (h < up or band == "hard")


def choose(pool: Pool, cfg: Select, want: int, reviewed: Reviewed | None = None,
           approx_above: float = sim.INDEX_ABOVE) -> Choice:
    """Apply every rule to the pool and choose ``want`` negatives (honouring a person's ``reviewed`` decisions).

    ``approx_above``: candidates x positives over which the scene similarity is approximated (an index over the
    positives, exact re-scoring near the leak thresholds and of every pick).
    """
    clock = _Stopwatch()
    axes, dropped_axes = usable_axes(pool, list(cfg.strata), cfg.unknown_axis_share)
    if dropped_axes:
        pool = pool.restratified(axes)
        for d in dropped_axes:
            log.warning("select: %s", axis_warning(d, cfg.unknown_axis_share))
    ev = gather_evidence(pool, cfg, approx_above)
    ev.reviewed = reviewed if reviewed is not None else Reviewed.none(len(pool.sha256))
    clock.lap("similarity")
    ledger = Ledger(ev.candidates, RULES)
    for rule in PIPELINE:
        verdict = rule.judge(ev, ledger.live())
        if verdict is not None:
            if rule.suspects_positive:
                verdict = ev.reviewed.spare(rule.name, verdict, ledger.live())
            ledger.record(rule.name, verdict)
        clock.lap(rule.name)
    eligible = ledger.live()
    bands = assign_bands(ev.hardness, np.flatnonzero(eligible), cfg.bands)
    first = model_false_positives(ev, eligible, bands, want)  # offered before any quota
    rest = eligible.copy()
    rest[[p.row for p in first]] = False
    first += detector_distractors(ev, rest, bands, want - len(first), [p.row for p in first])  # then the distractors
    rest[[p.row for p in first]] = False
    warnings = [axis_warning(d, cfg.unknown_axis_share) for d in dropped_axes]
    if no_object_hardness(ev, cfg):
        warnings.append(NO_OBJECT_HARDNESS)
        log.warning("select: %s", NO_OBJECT_HARDNESS)
    strata = count_strata(pool, rest, bands.code)
    quotas = stratum_quotas(strata, want - len(first), cfg)
    clock.lap("bands_quotas")
    whole_pool = ledger.facts["pool_duplicate"]["whole_pool"]
    # pools grouped whole have no duplicates left; else each pick keeps off the near-duplicates of earlier ones
    picks = first + pick_strata(ev, rest, bands, strata, quotas, stop=0.0 if whole_pool else cfg.leaks.near_duplicate)
    clock.lap("picks")
    if not whole_pool and len(picks) > 1:  # near-duplicates across strata (large pools)
        dropped = ledger.record("pool_duplicate", BY_NAME["pool_duplicate"].among_picks(ev, np.asarray([p.row for p in picks])))
        picks = [p for p in picks if not dropped[p.row]]
    taken = np.zeros(len(pool.sha256), bool)
    taken[[p.row for p in picks]] = True
    picks += shortfall_fill(ev, ledger.live() & ~taken, bands, picks, want)
    clock.lap("dedup_fill")
    if ev.exact is not None:  # approximate similarity: every pick is re-scored exactly, so its reason quotes exact numbers
        ev.rescore(np.asarray([p.row for p in picks], np.int64), "picks")
        ev.rescored["picks_outside_band"] = sum(not _in_band(float(ev.hardness[p.row]), p.band, bands) for p in picks)
        clock.lap("exact_picks")
    reasons = [ev.reviewed.reason_of(p.row, pick_reason(p, ev, bands, want)) for p in picks]
    clock.lap("reasons")
    return Choice(picks=picks, reasons=reasons, evidence=ev, ledger=ledger, bands=bands,
                  strata=strata_table(strata, quotas, picks), want=want, timings=clock.times,
                  axes=axes, dropped_axes=dropped_axes,
                  warnings=warnings)


def run(params: Params, layout: Layout) -> dict:
    cfg = params.select
    axes = list(cfg.strata)
    reviews = read_reviews(reviews_path(layout))
    with catalog.connect(layout) as con:
        pool = load_pool(con, layout, axes)
        axis_values = con.execute(
            f"SELECT i.sha256, {', '.join('t.' + a for a in axes)} FROM images i JOIN tags t USING (sha256) ORDER BY i.sha256"
        ).fetchall()
        sizes = image_sizes(con, [s for s, r in reviews.items() if r.decision == CONTAINS_TARGET])
    n_pos = int(pool.positive.sum())
    want = cfg.size_for(n_pos)
    choice = choose(pool, cfg, want, reviewed_in_pool(pool, reviews))

    folder = layout.select
    atomic.write_parquet(outputs.selection_table(choice, pool, axes, {r[0]: r[1:] for r in axis_values}),
                         folder / "selection.parquet")
    atomic.write_parquet(outputs.rejected_table(choice, pool, cfg), folder / "rejected.parquet")
    import pyarrow.csv as pacsv

    with atomic.atomic_path(folder / "quarantine.csv") as tmp:
        pacsv.write_csv(outputs.quarantine_table(choice, pool), tmp)
    strata = outputs.strata_rows(choice, cfg, n_pos)
    import pyarrow as pa

    atomic.write_parquet(pa.Table.from_pylist(strata), folder / "strata.parquet")
    atomic.write_parquet(outputs.scores_table(choice, pool), folder / "scores.parquet")
    with atomic.atomic_path(folder / "new_positives.csv") as tmp:
        pacsv.write_csv(new_positives_table(choice, pool), tmp)
    atomic.write_json(folder / "new_positives.coco.json",
                      new_positives_coco(choice, pool, sizes, params.ingest.target, layout))
    summary = outputs.summary_of(choice, pool, cfg, strata, axes)
    summary.update(choice.evidence.reviewed.counts(), new_positives=len(new_positive_rows(choice)))
    if choice.evidence.exact is not None:  # approximate scene similarity: how, its measured error, what was re-scored
        summary["similarity"] = choice.evidence.similarity_report()
        log.info("select: scene similarity approximated: %s", summary["similarity"])
    atomic.write_json(folder / "summary.json", summary)
    if len(choice.picks) < want:
        log.warning("select: asked for %d negatives, the pool had only %d eligible", want, len(choice.picks))
    log.info(
        "select: %d negatives (%s), %d left out (%s), %d quarantined",
        len(choice.picks), summary["chosen_by_band"], summary["rejected"], summary["rejected_by_rule"],
        summary["quarantined"],
    )
    if reviews:
        log.info("select: reviews.csv: %d decision(s) applied (%s; cleared of a suspicion: %s), %d ignored "
                 "(not candidates now), %d new positive(s) in new_positives.csv", summary["reviews_applied"],
                 summary["reviews_by_decision"], summary["reviews_cleared"], summary["reviews_ignored"],
                 summary["new_positives"])
    return summary
