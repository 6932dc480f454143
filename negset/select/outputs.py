"""What ``negset select`` writes to ``data/select/``, from a :class:`~negset.select.choice.Choice`.

- ``selection.parquet``: one row per negative chosen (schema: :func:`selection_schema`), with its reason;
- ``rejected.parquet``: one row per candidate left out: the ledger's first rule, score and the rule's sentence;
- ``quarantine.csv``: the suspected unlabelled positives, most similar first, for a person to review;
- ``strata.parquet``: per stratum: positives, eligible candidates, quota, chosen, shortfall;
- ``scores.parquet``: per image, what the selection measured (schema: :data:`SCORES_SCHEMA`):
  scene similarity, the hardness the bands used, the nearest positive, band and status.
  The report reads it instead of computing similarities again;
- ``summary.json``: the counts.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from negset.core.config import Select
from negset.select.choice import Choice
from negset.select.pool import Pool
from negset.select.rules import BY_NAME


def selection_schema(axes: list[str]) -> pa.Schema:
    """The columns of selection.parquet, in order (the tag axes of the strata after the uri)."""
    return pa.schema(
        [("sha256", pa.string()), ("uri", pa.string())]
        + [(a, pa.string()) for a in axes]
        + [("stratum", pa.string()), ("band", pa.string()),
           ("pos_similarity", pa.float64()), ("nearest_similarity", pa.float64()), ("hardness", pa.float64()),
           ("quota", pa.int64()), ("pick_rank", pa.int64()), ("pick_distance", pa.float64()),
           ("rule", pa.string()), ("reason", pa.string())]
    )


SCORES_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("status", pa.string()),  # positive | chosen | eligible (not chosen) | the rule that left it out
        ("band", pa.string()),  # hard | medium | context; null = not eligible
        ("pos_similarity", pa.float64()),  # scene similarity: mean top-k cosine to the positives
        ("hardness", pa.float64()),  # what the bands ranked by (hardness_by)
        ("hardness_by", pa.string()),  # image | regions
        ("nearest_positive", pa.string()),  # sha256 of the most similar positive
        ("nearest_similarity", pa.float64()),
    ]
)


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def selection_table(choice: Choice, pool: Pool, axes: list[str], axis_values: dict[str, tuple]) -> pa.Table:
    ev = choice.evidence
    rows = []
    for p, reason in zip(choice.picks, choice.reasons):
        r, sha = p.row, pool.sha256[p.row]
        row = dict(sha256=sha, uri=pool.uri[r], **dict(zip(axes, axis_values[sha])))
        row.update(
            stratum=p.stratum, band=p.band,
            pos_similarity=float(ev.pos_similarity[r]), nearest_similarity=float(ev.nearest_similarity[r]),
            hardness=float(ev.hardness[r]), quota=p.quota, pick_rank=p.rank, pick_distance=_num(p.distance),
            rule=p.rule, reason=reason,
        )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=selection_schema(axes))


def rejected_table(choice: Choice, pool: Pool, cfg: Select) -> pa.Table:
    led, ev = choice.ledger, choice.evidence
    out = led.left_out(pool.uri)
    rules = [led.rule_of(r) for r in out]
    reasons = [
        BY_NAME[rule].explain(int(r), float(led.score[r]), led.detail.get(int(r)), ev, led.facts.get(rule, {}))
        for r, rule in zip(out, rules)
    ]
    return pa.table(
        {
            "uri": pa.array([pool.uri[r] for r in out], pa.string()),
            "sha256": pa.array([pool.sha256[r] for r in out], pa.string()),
            "step": pa.array(["select"] * len(out), pa.string()),
            "rule": pa.array(rules, pa.string()),
            "score": pa.array([None if np.isnan(led.score[r]) else float(led.score[r]) for r in out], pa.float64()),
            "reason": pa.array(reasons, pa.string()),
        }
    )


QUARANTINE_RULES = ("detected_target", "quarantine")  # suspected positives, for a person to review


def quarantine_rows(choice: Choice) -> list[int]:
    """The quarantined pool rows: detected by a detector first (highest score first), then by the
    embeddings (most similar to the positives first)."""
    led, ev = choice.ledger, choice.evidence
    rows = [int(r) for r in led.left_out(ev.pool.uri) if led.rule_of(r) in QUARANTINE_RULES]
    rows.sort(key=lambda r: (QUARANTINE_RULES.index(led.rule_of(r)),
                             -float(led.score[r]) if led.rule_of(r) == "detected_target" else -float(ev.pos_similarity[r])))
    return rows


def quarantine_table(choice: Choice, pool: Pool) -> pa.Table:
    ev, led, rows = choice.evidence, choice.ledger, quarantine_rows(choice)
    rules = [led.rule_of(r) for r in rows]
    return pa.table(
        {
            "uri": pa.array([pool.uri[r] for r in rows], pa.string()),
            "sha256": pa.array([pool.sha256[r] for r in rows], pa.string()),
            "similarity": pa.array([float(ev.pos_similarity[r]) for r in rows], pa.float64()),
            "nearest_positive": pa.array([pool.uri[ev.nearest_positive[r]] for r in rows], pa.string()),
            "nearest_similarity": pa.array([float(ev.nearest_similarity[r]) for r in rows], pa.float64()),
            "rule": pa.array(rules, pa.string()),
            "score": pa.array([float(led.score[r]) for r in rows], pa.float64()),
            "reason": pa.array([BY_NAME[rule].explain(r, float(led.score[r]), led.detail.get(r), ev, led.facts.get(rule, {}))
                                for r, rule in zip(rows, rules)], pa.string()),
        }
    )


def scores_table(choice: Choice, pool: Pool) -> pa.Table:
    ev, n = choice.evidence, len(pool.sha256)
    status = choice.ledger.status()
    status[pool.positive] = "positive"
    status[(status == "") & (choice.bands.code >= 0)] = "eligible"
    status[choice.rows] = "chosen"
    near = ev.nearest_positive
    return pa.table(
        {
            "sha256": pa.array(pool.sha256.tolist(), pa.string()),
            "status": pa.array(status.tolist(), pa.string()),
            "band": pa.array([choice.bands.name_of(r) or None for r in range(n)], pa.string()),
            "pos_similarity": pa.array([_num(x) for x in ev.pos_similarity], pa.float64()),
            "hardness": pa.array([_num(x) for x in ev.hardness], pa.float64()),
            "hardness_by": pa.array([ev.hardness_by] * n, pa.string()),
            "nearest_positive": pa.array([pool.sha256[j] if j >= 0 else None for j in near], pa.string()),
            "nearest_similarity": pa.array([_num(x) for x in ev.nearest_similarity], pa.float64()),
        },
        schema=SCORES_SCHEMA,
    )


def strata_rows(choice: Choice, cfg: Select, n_pos: int) -> list[dict]:
    """The strata of the choice with the positives' share, the target count and the shortfall."""
    total_pos = max(1, n_pos)
    want = choice.want
    out = []
    for st in choice.strata:
        st = dict(st)
        st["positive_share"] = st["positives"] / total_pos
        st["target"] = round(want * st["positives"] / total_pos, 3) if cfg.quota == "match" else float(st["quota"])
        st["shortfall"] = max(0.0, round(st["target"] - st["chosen"], 3))
        out.append(st)
    return out


def summary_of(choice: Choice, pool: Pool, cfg: Select, strata: list[dict], axes: list[str]) -> dict:
    bands: dict[str, int] = {}
    for p in choice.picks:
        bands[p.band] = bands.get(p.band, 0) + 1
    q_thr = choice.ledger.facts.get("quarantine", {}).get("threshold", float("inf"))
    left_out = choice.ledger.counts()
    return dict(
        requested=choice.want,
        chosen=len(choice.picks),
        positives=int(pool.positive.sum()),
        candidates=int((~pool.positive).sum()),
        eligible=choice.bands.eligible(),
        filled_outside_strata=choice.fill,
        rejected=sum(left_out.values()),
        rejected_by_rule=left_out,
        quarantined=sum(left_out.get(r, 0) for r in QUARANTINE_RULES),
        quarantined_by_rule={r: left_out.get(r, 0) for r in QUARANTINE_RULES},
        quarantine_threshold=None if not np.isfinite(q_thr) else round(q_thr, 4),
        band_edges=dict(hard=round(choice.bands.hard_from, 4), medium=round(choice.bands.medium_from, 4)),
        hardness=choice.evidence.hardness_by,
        chosen_by_band=dict(sorted(bands.items())),
        strata_unfilled=[s["stratum"] for s in strata if s["positives"] and s["shortfall"] >= 1],
        seed=cfg.seed,
        quota=cfg.quota,
        diversity=cfg.diversity,
        axes=axes,
        axes_used=choice.axes,
        axes_dropped=choice.dropped_axes,
        chosen_by_rule=dict(sorted(Counter(p.rule for p in choice.picks).items())),
        model_false_positives=sum(p.rule == "model_false_positive" for p in choice.picks),
        distractors=sum(p.rule == "distractor" for p in choice.picks),
        warnings=choice.warnings,
    )
