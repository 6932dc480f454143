"""Select with the detect step's evidence: the detected_target rule, model false positives first,
strata on raw pools (an axis unknown for most candidates), the shortfall fill by band mix and k-center.

The pools here are built in memory (real unit vectors, real Detections arrays) and go through the real
``choose`` and the real output tables; the COCO128 raw-pool checks are in test_rawpool_coco128.py.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from negset.core.config import Select
from negset.select import outputs
from negset.select.bands import BANDS
from negset.select.pool import Detections, Pool
from negset.select.quotas import band_quotas, Stratum
from negset.select.step import choose

DIM = 24


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_pool(n_pos: int, n_cand: int, seed: int = 0, axes: dict | None = None, labelled=None) -> Pool:
    """Positives around one direction, candidates spread from close to far; no detections yet."""
    rng = np.random.default_rng(seed)
    centre = unit(rng.standard_normal(DIM))
    pos = unit(centre + 0.35 * rng.standard_normal((n_pos, DIM)))
    # candidates from near the positives (hard) to unrelated (context)
    mix = np.linspace(0.9, 0.0, n_cand)[:, None]
    cand = unit(mix * centre + (1 - mix) * unit(rng.standard_normal((n_cand, DIM))) + 0.25 * rng.standard_normal((n_cand, DIM)))
    vectors = np.vstack([pos, cand]).astype(np.float32)
    n = n_pos + n_cand
    sha = np.asarray([hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)], dtype=object)
    positive = np.r_[np.ones(n_pos, bool), np.zeros(n_cand, bool)]
    axes = axes or {"lighting": np.asarray(["normal"] * n, dtype=object)}
    pool = Pool(sha256=sha, vectors=vectors, positive=positive, has_target=positive.copy(),
                stratum=np.zeros(n, np.int32), stratum_names=["?"], uri=np.asarray([f"img/{i:03d}.jpg" for i in range(n)], dtype=object),
                labelled=positive.copy() if labelled is None else labelled, axis_values=axes)
    return pool.restratified(list(axes))


def no_detections(n: int) -> Detections:
    f = lambda: np.zeros(n)  # noqa: E731
    o = lambda: np.full(n, None, dtype=object)  # noqa: E731
    return Detections(target_score=f(), threshold=np.full(n, 0.1), detected=np.zeros(n, bool), source=o(), cls=o(),
                      box=o(), confuser_score=f(), confuser_threshold=np.full(n, 0.1), confuser_class=o(), user_hit=o())


def cfg(**kw) -> Select:
    base = dict(count=8, quarantine={"enabled": False}, context={"irrelevant_below_percentile": 0,
                "require_positive_background": False}, strata=["lighting"])
    base.update(kw)
    return Select.model_validate(base)


def rejected(choice, pool, c) -> dict[int, dict]:
    t = outputs.rejected_table(choice, pool, c).to_pylist()
    row_of = {s: i for i, s in enumerate(pool.sha256)}
    return {row_of[r["sha256"]]: r for r in t}


def test_detected_target_quarantines_unlabelled_candidates_with_the_evidence_in_the_reason():
    n_pos, n_cand = 6, 30
    labelled = np.r_[np.ones(n_pos, bool), np.zeros(n_cand, bool)]
    labelled[n_pos + 1] = True  # a labelled candidate: a known negative
    pool = make_pool(n_pos, n_cand, labelled=labelled)
    d = no_detections(len(pool.sha256))
    a, b = n_pos + 0, n_pos + 1  # a: unlabelled with the target detected; b: labelled with the target detected
    # weak detections on the candidate most like the positives (mean top-5 cosine) and on the least like them
    like = np.sort(pool.vectors[n_pos + 2:] @ pool.vectors[:n_pos].T, axis=1)[:, -5:].mean(axis=1)
    weak_hard, weak_easy = n_pos + 2 + int(np.argmax(like)), n_pos + 2 + int(np.argmin(like))
    for r, score in ((a, 0.42), (b, 0.55), (weak_hard, 0.06), (weak_easy, 0.06)):
        d.target_score[r], d.source[r], d.cls[r], d.box[r] = score, "yolox_nano", "dog", [10.0, 20.0, 110.4, 220.0]
    d.detected[[a, b]] = True
    pool.detections = d
    c = cfg()
    choice = choose(pool, c, 8)
    rej = rejected(choice, pool, c)

    assert rej[a]["rule"] == "detected_target" and rej[a]["score"] == pytest.approx(0.42)
    reason = rej[a]["reason"]
    assert "yolox_nano" in reason and "'dog'" in reason and "0.420" in reason and "[10, 20, 110, 220]" in reason
    assert "threshold 0.100" in reason
    # the labelled candidate is a known negative: a detection never leaves it out
    assert b not in rej
    # a weak detection on an image that looks like the positives is quarantined too; on a context image it is not
    assert rej[weak_hard]["rule"] == "detected_target" and "weak detection" in rej[weak_hard]["reason"]
    assert weak_easy not in rej or rej[weak_easy]["rule"] != "detected_target"
    # quarantine.csv lists them with the rule and the same reason, detections first
    q = outputs.quarantine_table(choice, pool).to_pylist()
    assert [r["rule"] for r in q][:2] == ["detected_target", "detected_target"] and q[0]["sha256"] == pool.sha256[a]
    assert q[0]["reason"] == reason
    summary = outputs.summary_of(choice, pool, c, outputs.strata_rows(choice, c, n_pos), ["lighting"])
    assert summary["quarantined_by_rule"]["detected_target"] == 2 and summary["quarantined"] == 2
    # without detections the same pool keeps both
    pool.detections = None
    assert a not in rejected(choose(pool, c, 8), pool, c)


def test_model_false_positives_are_offered_first():
    n_pos, n_cand = 6, 30
    labelled = np.ones(n_pos + n_cand, bool)  # a labelled pool: every candidate a known negative
    pool = make_pool(n_pos, n_cand, labelled=labelled)
    d = no_detections(len(pool.sha256))
    easy = n_pos + n_cand - 2  # an unrelated image (context band) on which the user's model fires on the target
    d.target_score[easy], d.detected[easy] = 0.8, True
    d.user_hit[easy] = {"source": "mine", "class": "dog", "score": 0.8, "threshold": 0.3, "box": [1.0, 2.0, 30.0, 40.0]}
    pool.detections = d
    c = cfg()
    choice = choose(pool, c, 8)
    first = choice.picks[0]
    assert first.row == easy and first.rule == "model_false_positive"
    assert choice.reasons[0].startswith("model false positive: labelled without the target, but mine detects 'dog' at score 0.800")
    assert len(choice.picks) == 8 and sum(p.rule == "model_false_positive" for p in choice.picks) == 1
    # the builtin detector's hit (no user hit) is no model false positive: the image is not picked first
    d.user_hit[easy] = None
    again = choose(pool, c, 8)
    assert again.picks[0].rule != "model_false_positive" and again.picks[0].row != easy


def test_an_axis_unknown_for_most_candidates_is_left_out_of_the_quotas_with_a_warning():
    n_pos, n_cand = 8, 48
    n = n_pos + n_cand
    rng = np.random.default_rng(3)
    axes = {
        "lighting": np.asarray(rng.choice(["normal", "dim"], n), dtype=object),
        "occlusion": np.asarray(["none", "partial"] * (n_pos // 2) + ["unknown"] * n_cand, dtype=object),
    }
    axes["lighting"][:n_pos] = ["normal", "dim"] * (n_pos // 2)
    pool = make_pool(n_pos, n_cand, axes=axes)
    c = cfg(count=12, strata=["lighting", "occlusion"])
    choice = choose(pool, c, 12)
    assert [d["axis"] for d in choice.dropped_axes] == ["occlusion"] and choice.axes == ["lighting"]
    assert choice.warnings and "occlusion" in choice.warnings[0] and "100%" in choice.warnings[0]
    quota = [p for p in choice.picks if p.rule == "quota"]
    assert len(quota) == 12 and len({p.stratum for p in quota}) == 2 and {p.band for p in quota} == set(BANDS)
    summary = outputs.summary_of(choice, pool, c, outputs.strata_rows(choice, c, n_pos), ["lighting", "occlusion"])
    assert summary["axes_dropped"][0]["axis"] == "occlusion" and summary["warnings"] == choice.warnings
    # kept in, the axis leaves no stratum of the positives a candidate: everything comes from the fill
    kept = choose(pool, cfg(count=12, strata=["lighting", "occlusion"], unknown_axis_share=None), 12)
    assert not kept.dropped_axes and all(p.rule == "fill" for p in kept.picks)


def test_shortfall_fill_follows_the_band_mix_and_kcenter_not_hardest_first():
    n_pos, n_cand = 6, 60
    n = n_pos + n_cand
    # the positives' stratum holds only 2 candidates; the rest must come from the fill
    light = np.asarray(["normal"] * n_pos + ["normal"] * 2 + ["dark"] * (n_cand - 2), dtype=object)
    pool = make_pool(n_pos, n_cand, axes={"lighting": light})
    c = cfg(count=20)
    choice = choose(pool, c, 20)
    fill = [p for p in choice.picks if p.rule == "fill"]
    assert len(fill) == 18
    rest = np.zeros(n, bool)
    rest[n_pos:] = True
    rest[[p.row for p in choice.picks if p.rule == "quota"]] = False
    by_band = tuple(int((choice.bands.code[rest] == i).sum()) for i in range(3))
    expected = band_quotas(18, Stratum(-1, "fill", 0, int(rest.sum()), by_band), c.bands.mix)
    assert Counter(p.band for p in fill) == Counter({b: k for b, k in expected.items() if k})
    # not the hardest 18: the context band is in the fill, and each band's picks are k-center picks
    hardest = set(np.flatnonzero(rest)[np.argsort(-choice.evidence.hardness[rest])][:18].tolist())
    assert {p.row for p in fill} != hardest and any(p.band == "context" for p in fill)
    i = choice.picks.index(fill[1])
    assert "shortfall fill" in choice.reasons[i] and "k-center pick" in choice.reasons[i]
