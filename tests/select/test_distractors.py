"""Detector distractors: candidates the detector nearly mistakes for the target, offered before the quotas.

In-memory pools (real unit vectors, real Detections arrays) through the real ``choose`` and output tables.
"""

from __future__ import annotations

import numpy as np

from negset.select import outputs
from negset.select.step import choose
from tests.select.test_detect_evidence import cfg, make_pool, no_detections, rejected

N_POS, N_CAND = 6, 40


def confuser(d, row: int, cls: str, score: float) -> None:
    d.confuser_score[row], d.confuser_class[row] = score, cls


def labelled_pool():
    pool = make_pool(N_POS, N_CAND, labelled=np.ones(N_POS + N_CAND, bool))
    pool.detections = no_detections(len(pool.sha256))
    return pool


def test_confuser_detections_are_picked_first_strongest_first_with_the_detection_in_the_reason():
    pool = labelled_pool()
    d = pool.detections
    far = [N_POS + N_CAND - 1, N_POS + N_CAND - 5, N_POS + N_CAND - 9]  # context-like images, not hard by similarity
    confuser(d, far[0], "cat", 0.30)  # 3.0 x the 0.1 threshold
    confuser(d, far[1], "teddy bear", 0.60)  # 6.0 x
    confuser(d, far[2], "horse", 0.03)  # 0.3 x: under distractor_min 0.5
    choice = choose(pool, cfg(), 8)
    got = [p for p in choice.picks if p.rule == "distractor"]
    assert [p.row for p in got] == [far[1], far[0]]  # strongest first; the weak one is no distractor
    reason = choice.reasons[choice.picks.index(got[0])]
    assert reason.startswith("detector distractor: the detector sees confuser 'teddy bear' at score 0.600")
    assert "(evidence 6.000, at least select.distractor_min 0.5)" in reason and "1 of up to 4 from 2" in reason
    assert len(choice.picks) == 8 and {p.rule for p in choice.picks} - {"distractor"} == {"quota"}
    summary = outputs.summary_of(choice, pool, cfg(), outputs.strata_rows(choice, cfg(), N_POS), ["lighting"])
    assert summary["distractors"] == 2 and summary["chosen_by_rule"]["distractor"] == 2
    # the share caps them: 0.25 of 8 = 2, then 1 of 8 at 0.125; 0 = off, and the same picks as without detections
    assert sum(p.rule == "distractor" for p in choose(pool, cfg(distractors=0.125), 8).picks) == 1
    off = choose(pool, cfg(distractors=0), 8)
    pool.detections = None
    assert [p.row for p in off.picks] == [p.row for p in choose(pool, cfg(), 8).picks]


def test_a_target_detection_is_never_a_distractor():
    """Not on an unlabelled image (it may be the target) nor on a labelled one (COCO128: often an unlabelled
    target; these near misses made the chosen sets worse)."""
    labelled = np.r_[np.ones(N_POS, bool), np.zeros(N_CAND, bool)]
    labelled[N_POS + N_CAND - 1] = True  # one known negative
    pool = make_pool(N_POS, N_CAND, labelled=labelled)
    d = pool.detections = no_detections(len(pool.sha256))
    known, raw = N_POS + N_CAND - 1, N_POS + N_CAND - 3
    for r in (known, raw):  # a target detection under the 0.1 threshold on a context image
        d.target_score[r], d.cls[r], d.source[r] = 0.08, "dog", "yolox_nano"
    choice = choose(pool, cfg(weak_detection_percentile=None), 8)
    assert not [p for p in choice.picks if p.rule == "distractor"]
    confuser(d, raw, "cat", 0.2)  # a confuser on the unlabelled one: a distractor by the confuser alone
    again = choose(pool, cfg(weak_detection_percentile=None), 8)
    assert [p.row for p in again.picks if p.rule == "distractor"] == [raw]


def test_the_context_rules_spare_distractors_and_count_them():
    pool = labelled_pool()
    d = pool.detections
    c = cfg(context={"irrelevant_below_percentile": 30, "require_positive_background": False})
    low = np.argsort(np.where(pool.positive, np.inf, (pool.vectors @ pool.vectors[:N_POS].T).mean(axis=1)))[:3]
    base = rejected(choose(pool, c, 8), pool, c)
    assert all(base[r]["rule"] == "context:irrelevant" for r in low)  # the least similar are irrelevant
    confuser(d, int(low[0]), "cat", 0.5)
    choice = choose(pool, c, 8)
    rej = rejected(choice, pool, c)
    assert int(low[0]) not in rej and all(rej[r]["rule"] == "context:irrelevant" for r in low[1:])
    assert choice.picks[0].row == int(low[0]) and choice.picks[0].rule == "distractor"
    assert choice.ledger.facts["context:irrelevant"]["spared_distractors"] == 1
    # with the distractors off the rule leaves it out again
    assert rejected(choose(pool, cfg(distractors=0, context=c.context.model_dump()), 8), pool, c)[int(low[0])]["rule"] \
        == "context:irrelevant"


def test_a_choice_without_object_hardness_says_so():
    """No region vectors and no confuser detection among the candidates: the bands rank by the whole image
    only, and the choice warns (summary.json warnings); one confuser detection is enough to be quiet."""
    from negset.select.picks import NO_OBJECT_HARDNESS

    pool = labelled_pool()
    choice = choose(pool, cfg(), 8)
    assert choice.evidence.hardness_by == "image" and NO_OBJECT_HARDNESS in choice.warnings
    confuser(pool.detections, N_POS + 3, "cat", 0.30)
    assert NO_OBJECT_HARDNESS not in choose(pool, cfg(), 8).warnings
    pool.detections = None  # no detect step at all
    assert NO_OBJECT_HARDNESS in choose(pool, cfg(), 8).warnings
