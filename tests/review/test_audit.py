"""The audited contamination: the exact Clopper-Pearson bound and what counts as audited."""

from __future__ import annotations

import math

import pytest

from negset.review import audit
from negset.review.decisions import Review


def test_upper_bound_matches_known_values():
    # 0 of 50: the "rule of three" case has a closed form, 1 - 0.05^(1/50)
    assert audit.upper_bound(0, 50) == pytest.approx(1 - 0.05 ** (1 / 50), abs=1e-12)
    assert round(audit.upper_bound(0, 50), 4) == 0.0582
    # 1 of 50 and 2 of 50: the Beta(k + 1, n - k) 95% quantiles (R: binom.test(k, 50, alternative = "less"))
    assert audit.upper_bound(1, 50) == pytest.approx(0.0913981307, abs=1e-8)
    assert audit.upper_bound(2, 50) == pytest.approx(0.1206141554, abs=1e-8)
    # nothing audited says nothing; everything contaminated bounds at 1
    assert audit.upper_bound(0, 0) == 1.0
    assert audit.upper_bound(50, 50) == 1.0
    with pytest.raises(ValueError):
        audit.upper_bound(3, 2)


@pytest.mark.parametrize("k,n", [(1, 50), (3, 10), (5, 200), (17, 400)])
def test_upper_bound_is_where_the_binomial_tail_is_five_percent(k, n):
    p = audit.upper_bound(k, n)
    tail = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
    assert tail == pytest.approx(0.05, abs=1e-9)
    assert k / n < p < 1
    assert audit.upper_bound(k, n, confidence=0.99) > p  # more confidence, a wider bound


def _review(sha: str, decision: str, queue: str = "audit") -> Review:
    return Review(sha, f"img/{sha[:4]}.jpg", decision, queue, "tester", "2025-01-31T12:00:00Z")


def shas(n: int, prefix: str = "a") -> list[str]:
    return [f"{prefix}{i:063x}" for i in range(n)]


def test_contamination_counts_audit_decisions_on_chosen_images_only():
    chosen = shas(60)
    sample = audit.audit_sample(chosen, 50)
    reviews = {s: _review(s, "no_target") for s in sample[:48]}
    reviews[sample[48]] = _review(sample[48], "contains_target")
    reviews[sample[49]] = _review(sample[49], "unsure")
    gone = shas(1, "b")[0]  # decided, then dropped from the set: not counted
    reviews[gone] = _review(gone, "contains_target")
    other = [s for s in chosen if s not in sample][0]  # a chosen image decided in another queue: biased, not counted
    reviews[other] = _review(other, "contains_target", queue="hardest")
    a = audit.contamination(chosen, reviews, 50)
    assert (a["planned"], a["reviewed"], a["audited"], a["contain_target"], a["unsure"]) == (50, 50, 49, 1, 1)
    assert a["complete"] and a["unreviewed"] == 0
    assert a["contamination"] == round(1 / 49, 4)
    assert a["contamination_upper_95"] == round(audit.upper_bound(1, 49), 4)
    assert audit.statement(a) == (
        "1 of 49 audited contain the target: contamination <= 9.3% at 95% (1 unsure, not counted)"
    )


def test_statement_of_a_clean_and_of_an_incomplete_audit():
    chosen = shas(80)
    sample = audit.audit_sample(chosen)
    full = audit.contamination(chosen, {s: _review(s, "no_target") for s in sample})
    assert audit.statement(full) == "0 of 50 audited contain the target: contamination <= 5.8% at 95%"
    part = audit.contamination(chosen, {s: _review(s, "no_target") for s in sample[:12]})
    assert not part["complete"] and part["unreviewed"] == 38
    assert audit.statement(part).endswith("audit incomplete: 38 of the 50 sampled negatives not reviewed (run `negset review`)")
    none = audit.contamination(chosen, {})
    assert none["audited"] == 0 and none["contamination"] is None and none["contamination_upper_95"] == 1.0
    assert audit.statement(none).startswith("no chosen negative audited yet")
    assert audit.statement(None).startswith("no audit")


def test_audit_order_is_seeded_and_stable_when_the_set_changes():
    chosen = shas(100)
    order = audit.audit_order(chosen)
    assert order == audit.audit_order(list(reversed(chosen)))  # the order of the input does not matter
    assert order != sorted(chosen)  # a random order, not the sha256 order
    # images that stay in the set keep their relative order: earlier decisions still count
    changed = chosen[:70] + shas(30, "c")
    kept = [s for s in audit.audit_order(changed) if s in set(chosen)]
    assert kept == [s for s in order if s in set(changed)]


def test_progress_of_the_quarantine():
    q = shas(7, "d")
    reviews = {q[0]: _review(q[0], "contains_target", "quarantine"), q[1]: _review(q[1], "no_target", "quarantine"),
               shas(1, "e")[0]: _review(shas(1, "e")[0], "no_target")}
    p = audit.progress(q, reviews)
    assert p == dict(quarantined=7, quarantine_reviewed=2, quarantine_contains_target=1, quarantine_no_target=1, decisions=3)


def test_the_quarantine_queue_keeps_the_suspects_already_decided_in_it():
    """select lets a decided suspect go (no_target: eligible; contains_target: a new positive), so quarantine.csv no
    longer lists it: the queue (and its progress) still counts it, after what is held back now, oldest first."""
    held = shas(3, "d")
    gone = shas(3, "g")
    reviews = {
        held[0]: _review(held[0], "unsure", "quarantine"),
        gone[0]: Review(gone[0], "g0.jpg", "no_target", "quarantine", "ana", "2025-02-01T00:00:00Z"),
        gone[1]: Review(gone[1], "g1.jpg", "contains_target", "quarantine", "ana", "2025-01-01T00:00:00Z"),
        gone[2]: _review(gone[2], "no_target", "audit"),  # decided in the audit: not the quarantine's
        "e" * 64: _review("e" * 64, "no_target", "quarantine"),  # no longer a candidate of this build
    }
    candidates = set(held) | set(gone)
    q = audit.quarantine_queue(held, reviews, candidates)
    assert q == held + [gone[1], gone[0]]
    assert audit.progress(q, reviews) == dict(quarantined=5, quarantine_reviewed=3, quarantine_contains_target=1,
                                              quarantine_no_target=1, decisions=5)
    assert audit.quarantine_queue(held, {}, candidates) == held
