"""The audit: how clean is the chosen set? A seeded random sample, reviewed, and an exact bound.

``negset review`` shows a random sample of the chosen negatives (the audit
queue, ``--audit N``, default 50). Each image's place in the sample comes from
a hash of its sha256 (``audit_order``), so the sample is the same on every
run, and an image that stays in the set keeps its place when the set changes:
decisions made before a refresh keep counting for the images still chosen.

From the audit queue's conclusive decisions (``no_target`` / ``contains_target``)
on the images chosen now, ``contamination`` gives the share that contains the
target and its exact one-sided Clopper-Pearson upper bound at 95%: with k of n
audited containing the target, the largest p for which seeing k or fewer in n
still has a 5% chance (0 of 50: 1 - 0.05^(1/50) = 5.8%). ``unsure`` decisions
are not counted in n (they are reported). The audit is complete when every
image of the planned sample (the first ``min(50, negatives)`` in audit order)
has a decision.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, Mapping

from negset.review.decisions import CONTAINS_TARGET, NO_TARGET, UNSURE, Review

AUDIT_SIZE = 50  # the default sample (`negset review --audit`) and what a complete audit covers
AUDIT_SALT = "negset-audit:"
CONFIDENCE = 0.95


def _log_binom_pmf(i: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact to float precision)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    terms = [_log_binom_pmf(i, n, p) for i in range(0, min(k, n) + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """Exact one-sided Clopper-Pearson upper confidence limit of a proportion (k of n).

    The p at which P(X <= k | n, p) = 1 - confidence (the Beta(k + 1, n - k)
    quantile); 1 when n is 0 (nothing audited says nothing) or k = n.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    alpha = 1.0 - confidence
    if n == 0 or k == n:
        return 1.0
    if k == 0:
        return 1.0 - alpha ** (1.0 / n)
    lo, hi = k / n, 1.0  # binom_cdf(k, n, p) falls from above alpha to 0 on this interval
    for _ in range(200):
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return hi


def _key(sha256: str) -> str:
    return hashlib.sha256((AUDIT_SALT + sha256).encode("ascii")).hexdigest()


def audit_order(shas: Iterable[str]) -> list[str]:
    """The chosen negatives in audit order: a seeded random order that does not depend on the others."""
    return sorted(set(shas), key=lambda s: (_key(s), s))


def audit_sample(shas: Iterable[str], size: int = AUDIT_SIZE) -> list[str]:
    return audit_order(shas)[: max(0, size)]


def contamination(negatives: Iterable[str], reviews: Mapping[str, Review], size: int = AUDIT_SIZE,
                  confidence: float = CONFIDENCE) -> dict:
    """The audited contamination of the chosen set ``negatives`` (sha256s) from ``reviews``.

    Returns plain numbers (for ``metrics.json``): ``planned`` (sample size),
    ``reviewed`` (audit decisions on chosen images, unsure included),
    ``audited`` (n, conclusive), ``contain_target`` (k), ``unsure``,
    ``contamination`` (k / n or None), ``contamination_upper_95`` and
    ``complete`` (every planned image has a decision).
    """
    chosen = set(negatives)
    planned = audit_sample(chosen, size)
    audit = {s: r for s, r in reviews.items() if r.queue == "audit" and s in chosen}
    k = sum(r.decision == CONTAINS_TARGET for r in audit.values())
    n = k + sum(r.decision == NO_TARGET for r in audit.values())
    unreviewed = sum(s not in audit for s in planned)
    return dict(
        planned=len(planned),
        reviewed=len(audit),
        audited=n,
        contain_target=k,
        unsure=sum(r.decision == UNSURE for r in audit.values()),
        unreviewed=unreviewed,
        contamination=round(k / n, 4) if n else None,
        contamination_upper_95=round(upper_bound(k, n, confidence), 4),
        complete=unreviewed == 0,
    )


def statement(audit: Mapping | None) -> str:
    """One sentence: "0 of 50 audited contain the target: contamination <= 5.8% at 95%" (+ what is missing)."""
    if not audit:
        return "no audit in this build (metrics.json predates `negset review`)"
    n, k = audit.get("audited", 0), audit.get("contain_target", 0)
    if n:
        text = (f"{k} of {n} audited contain the target: contamination <= "
                f"{100 * audit['contamination_upper_95']:.1f}% at 95%")
    else:
        text = "no chosen negative audited yet: contamination unknown"
    if audit.get("unsure"):
        text += f" ({audit['unsure']} unsure, not counted)"
    if not audit.get("complete", False):
        text += (f"; audit incomplete: {audit.get('unreviewed', '?')} of the {audit.get('planned', '?')} "
                 "sampled negatives not reviewed (run `negset review`)")
    return text


def quarantine_queue(held: Iterable[str], reviews: Mapping[str, Review], candidates: set[str]) -> list[str]:
    """The quarantine's review queue: the images ``quarantine.csv`` holds back now (``held``, in its order), then
    the suspects a person decided in this queue that select has let go since (no_target: eligible again;
    contains_target: out as a new positive), oldest decision first. ``candidates``: this build's candidate
    sha256s (a decision on an image gone from the sources, or now a positive, is not in the queue)."""
    out = list(dict.fromkeys(held))
    seen = set(out)
    decided = [r for s, r in reviews.items() if r.queue == "quarantine" and s in candidates and s not in seen]
    return out + [r.sha256 for r in sorted(decided, key=lambda r: (r.time, r.sha256))]


def progress(quarantined: Iterable[str], reviews: Mapping[str, Review]) -> dict:
    """Review progress of the quarantine (``quarantine_queue``): how many suspected positives have a decision, and which."""
    q = set(quarantined)
    done = [reviews[s] for s in q if s in reviews]
    return dict(
        quarantined=len(q),
        quarantine_reviewed=len(done),
        quarantine_contains_target=sum(r.decision == CONTAINS_TARGET for r in done),
        quarantine_no_target=sum(r.decision == NO_TARGET for r in done),
        decisions=len(reviews),
    )
