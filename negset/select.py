"""Step 4, select: choose the negatives, stratified like the positives.

Rules, in order:
1. leak check: a candidate labelled with the target is never chosen
   (``rejected.parquet``, rule ``target_label``);
2. strata: every image's stratum is its (lighting, background, occlusion)
   tags (``select.strata`` picks the axes);
3. quotas: the requested count is split over the strata in proportion to
   the positives (``quota: match``) or evenly (``uniform``), capped by what
   the pool holds; shortfalls are redistributed to strata with room, and
   what is still missing is filled from the other strata, closest context first;
4. inside a stratum, images are picked in a seeded pseudo-random order.
Strata counts and the picks are DuckDB SQL over the catalog; the quota
arithmetic (a few rows) is plain Python in ``allocate``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa

from negset import atomic, catalog
from negset.config import Params
from negset.embed import read_embeddings
from negset.layout import Layout

log = logging.getLogger("negset.select")


def allocate(total: int, weights: dict[str, float], capacity: dict[str, int]) -> dict[str, int]:
    """Split ``total`` over strata by ``weights`` (largest remainder), capped by ``capacity``.

    What a full stratum cannot take goes to the others with room, in
    proportion to their weights. Strata with zero weight get nothing here.
    """
    quota = {s: 0 for s in weights}
    remaining = total
    open_ = {s for s, w in weights.items() if w > 0 and capacity.get(s, 0) > 0}
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


def positive_similarity(layout: Layout, roles: dict[str, str], k: int = 5) -> dict[str, float]:
    """Mean of the top-k cosine similarities of each candidate to the positives."""
    shas, vectors = read_embeddings(layout)
    pos = np.array([roles.get(s) == "positive" for s in shas])
    P = vectors[pos]
    k = max(1, min(k, len(P)))
    out = {}
    for start in range(0, len(shas), 4096):
        block = vectors[start : start + 4096]
        sims = block @ P.T
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]
        for s, v in zip(shas[start : start + 4096], top.mean(axis=1)):
            out[s] = float(v)
    return out


def run(params: Params, layout: Layout) -> dict:
    cfg = params.select
    axes = list(cfg.strata)
    stratum_sql = " || ' | ' || ".join(f"t.{a}" for a in axes)
    with catalog.connect(layout) as con:
        catalog.load(con, layout, "images", "tags", "embeddings")
        roles = dict(con.execute("SELECT sha256, role FROM images").fetchall())
        sims = positive_similarity(layout, roles)
        con.execute("CREATE OR REPLACE TEMP TABLE scores (sha256 VARCHAR, pos_similarity DOUBLE)")
        con.executemany("INSERT INTO scores VALUES (?, ?)", list(sims.items()))
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE tagged AS
            SELECT i.sha256, i.uri, i.role, i.has_target, {', '.join('t.' + a for a in axes)},
                   {stratum_sql} AS stratum, s.pos_similarity,
                   sha256(? || ':' || i.sha256) AS rand_key
            FROM images i JOIN tags t USING (sha256) JOIN scores s USING (sha256)
            """,
            [str(cfg.seed)],
        )
        n_pos = con.execute("SELECT count(*) FROM tagged WHERE role = 'positive'").fetchall()[0][0]
        want = cfg.size_for(n_pos)
        rejected = con.sql(
            """
            SELECT uri, sha256, 'select' AS step, 'target_label' AS rule,
                   'labelled with the target class' AS reason, 1.0 AS score
            FROM tagged WHERE role = 'candidate' AND has_target ORDER BY uri
            """
        ).to_arrow_table()
        strata_rows = con.execute(
            """
            SELECT stratum,
                   count(*) FILTER (WHERE role = 'positive') AS positives,
                   count(*) FILTER (WHERE role = 'candidate' AND NOT has_target) AS available
            FROM tagged GROUP BY stratum ORDER BY stratum
            """
        ).fetchall()
        weights = {s: (float(p) if cfg.quota == "match" else (1.0 if a else 0.0)) for s, p, a in strata_rows}
        capacity = {s: int(a) for s, _, a in strata_rows}
        quota = allocate(want, weights, capacity)
        con.execute("CREATE OR REPLACE TEMP TABLE quotas (stratum VARCHAR, quota INTEGER)")
        con.executemany("INSERT INTO quotas VALUES (?, ?)", sorted(quota.items()))
        picked = con.execute(
            """
            WITH ranked AS (
                SELECT c.*, row_number() OVER (PARTITION BY stratum ORDER BY rand_key) AS pick_rank,
                       count(*) OVER (PARTITION BY stratum) AS available
                FROM tagged c WHERE role = 'candidate' AND NOT has_target
            )
            SELECT r.*, q.quota FROM ranked r JOIN quotas q USING (stratum)
            WHERE r.pick_rank <= q.quota
            ORDER BY stratum, pick_rank
            """
        ).fetchall()
        cols = [d[0] for d in con.description]
        rows = [dict(zip(cols, r)) for r in picked]
        missing = want - len(rows)
        fill = []
        if missing > 0:
            fill_rows = con.execute(
                """
                SELECT c.*, 0 AS quota FROM tagged c
                WHERE role = 'candidate' AND NOT has_target
                  AND NOT list_contains(?::VARCHAR[], sha256)
                ORDER BY pos_similarity DESC, rand_key LIMIT ?
                """,
                [[r["sha256"] for r in rows], missing],
            ).fetchall()
            fcols = [d[0] for d in con.description]
            fill = [dict(zip(fcols, r)) for r in fill_rows]

    total_pos = sum(p for _, p, _ in strata_rows) or 1
    out = []
    for r in rows:
        share = weights[r["stratum"]] / (sum(weights.values()) or 1)
        r["reason"] = (
            f"stratum quota: {r['quota']} of {want} for '{r['stratum']}' "
            f"({share:.0%} of {'positives' if cfg.quota == 'match' else 'strata weight'}); "
            f"seeded pick {r['pick_rank']} of {r['available']} (seed {cfg.seed})"
        )
        r["rule"] = "quota"
        out.append(r)
    for i, r in enumerate(fill, 1):
        r["pick_rank"] = i
        r["reason"] = (
            f"shortfall fill: the positives' strata had too few candidates; "
            f"closest context left (similarity {r['pos_similarity']:.3f})"
        )
        r["rule"] = "fill"
        out.append(r)
    keep = ["sha256", "uri", *axes, "stratum", "pos_similarity", "quota", "pick_rank", "rule", "reason"]
    selection = [{k: r.get(k) for k in keep} for r in out]
    atomic.write_parquet(pa.Table.from_pylist(selection), layout.select / "selection.parquet")

    chosen = {}
    for r in out:
        chosen[r["stratum"]] = chosen.get(r["stratum"], 0) + 1
    strata = [
        dict(
            stratum=s,
            positives=int(p),
            positive_share=p / total_pos,
            available=int(a),
            quota=int(quota.get(s, 0)),
            chosen=int(chosen.get(s, 0)),
            target=round(want * p / total_pos, 3),
            shortfall=max(0.0, round(want * p / total_pos - chosen.get(s, 0), 3)),
        )
        for s, p, a in strata_rows
    ]
    atomic.write_parquet(pa.Table.from_pylist(strata), layout.select / "strata.parquet")
    atomic.write_parquet(rejected, layout.select / "rejected.parquet")
    unfilled = [s["stratum"] for s in strata if s["positives"] and s["shortfall"] >= 1]
    summary = dict(
        requested=want,
        chosen=len(out),
        positives=n_pos,
        filled_outside_strata=len(fill),
        rejected=rejected.num_rows,
        strata_unfilled=unfilled,
        seed=cfg.seed,
        quota=cfg.quota,
        axes=axes,
    )
    atomic.write_json(layout.select / "summary.json", summary)
    if len(out) < want:
        log.warning("select: asked for %d negatives, the pool had only %d eligible", want, len(out))
    log.info("select: %d negatives over %d strata (%d filled outside the positives' strata)", len(out), len(chosen), len(fill))
    return summary
