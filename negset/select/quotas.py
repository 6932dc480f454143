"""Quotas: how many negatives each stratum, and each band inside it, gets.

The strata are the (lighting, background, occlusion) tag combinations
(``select.strata``); DuckDB counts the positives and the eligible candidates
of each (per band). ``match`` gives each stratum the positives' share,
``uniform`` an even share; ``min_per_stratum`` first; what a stratum cannot
hold goes to the others (:func:`allocate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from negset.core.config import Select
from negset.select.bands import BANDS
from negset.select.pool import Pool


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


@dataclass(frozen=True)
class Stratum:
    code: int  # index into Pool.stratum_names
    name: str
    positives: int
    available: int  # eligible candidates
    by_band: tuple[int, int, int]  # eligible candidates per band (BANDS order)


def count_strata(pool: Pool, eligible: np.ndarray, band: np.ndarray) -> list[Stratum]:
    """Positives and eligible candidates (per band) of every stratum in the pool (DuckDB), by stratum code."""
    import duckdb

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
    rows = con.execute(
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
    return [Stratum(int(s), pool.stratum_names[s], int(p), int(a), (int(h), int(m), int(c))) for s, p, a, h, m, c in rows]


def stratum_quotas(strata: list[Stratum], want: int, cfg: Select) -> dict[str, int]:
    """Negatives per stratum name: ``match`` (the positives' proportions) or ``uniform``, capped by what each holds."""
    weights = {
        s.name: (float(s.positives) if cfg.quota == "match" else (1.0 if (s.available or s.positives) else 0.0))
        for s in strata
    }
    capacity = {s.name: s.available for s in strata}
    return allocate(want, weights, capacity, cfg.min_per_stratum)


def band_quotas(quota: int, stratum: Stratum, mix: dict[str, float]) -> dict[str, int]:
    """A stratum's quota split over the bands by ``bands.mix``; a band short of candidates passes its share on
    (to any band with candidates left, a band with zero mix too)."""
    capacity = dict(zip(BANDS, stratum.by_band))
    out = allocate(quota, {b: mix.get(b, 0.0) for b in BANDS}, capacity)
    if sum(out.values()) < quota:
        extra = allocate(quota - sum(out.values()), {b: 1.0 for b in BANDS}, {b: capacity[b] - out[b] for b in BANDS})
        out = {b: out[b] + extra[b] for b in BANDS}
    return out


UNKNOWN = "unknown"


def usable_axes(pool: Pool, axes: list[str], share: float | None) -> tuple[list[str], list[dict]]:
    """The stratum axes to keep, and those left out: an axis whose value is ``unknown`` for more than
    ``share`` of the candidates while it is not for most positives (occlusion of a raw pool without
    boxes or detections) would leave no stratum of the positives with a candidate; it is left out of the
    quotas instead (each left-out axis: name, unknown share of candidates and of positives)."""
    if share is None or pool.axis_values is None:
        return list(axes), []
    cand, pos = ~pool.positive, pool.positive
    keep, dropped = [], []
    for a in axes:
        unknown = pool.axis_values[a] == UNKNOWN
        c = float(unknown[cand].mean()) if cand.any() else 0.0
        p = float(unknown[pos].mean()) if pos.any() else 0.0
        if c > share and p <= share:
            dropped.append(dict(axis=a, unknown_candidates=round(c, 4), unknown_positives=round(p, 4)))
        else:
            keep.append(a)
    if not keep:  # every axis unknown: one stratum for all
        return [], dropped
    return keep, dropped


def axis_warning(d: dict, share: float) -> str:
    return (f"stratum axis '{d['axis']}' left out of the quotas: 'unknown' for {d['unknown_candidates']:.0%} of the "
            f"candidates (over {share:.0%}) but {d['unknown_positives']:.0%} of the positives; its strata could hold no "
            f"candidate (label the pool, or give detect a source for occlusion)")
