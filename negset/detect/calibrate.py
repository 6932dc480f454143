"""The target threshold of a source, calibrated on the known positives, and each image's evidence.

Per positive the evidence is its highest target score (0 when the source
finds no target in it). The threshold is the score that still finds the
target in ``recall`` of the positives: with the scores sorted from high to
low, the ``ceil(recall * n)``-th one, clipped to ``[floor, ceiling]``.
"""

from __future__ import annotations

import math

from negset.core.config import Calibration


def threshold_from_positives(scores: list[float], cfg: Calibration) -> dict:
    """The calibration of one source from its positives' max target scores."""
    n = len(scores)
    if cfg.threshold is not None:
        threshold, method, raw = cfg.threshold, "fixed", None
    elif n == 0:
        threshold, method, raw = cfg.ceiling, "uncalibrated (no positive covered): ceiling", None
    else:
        ranked = sorted(scores, reverse=True)
        raw = float(ranked[max(1, math.ceil(cfg.recall * n)) - 1])
        threshold = min(max(raw, cfg.floor), cfg.ceiling)
        method = "calibrated" if raw == threshold else ("floor" if raw < cfg.floor else "ceiling")
    found = sum(s >= threshold for s in scores)
    return dict(
        threshold=float(threshold), method=method, raw_threshold=raw, positives=n,
        positives_found=int(found), recall_at_threshold=(found / n) if n else None,
        recall_wanted=cfg.recall, floor=cfg.floor, ceiling=cfg.ceiling,
    )


def image_evidence(per_source: dict[str, dict], thresholds: dict[str, float | None]) -> dict:
    """One image's evidence from ``{source: {target: (score, class, box) | None, confuser: ...}}``.

    The target evidence is that of the source with the largest margin (score
    minus its threshold); sources without a threshold count only when none has one.
    """
    best = None
    for source, ev in per_source.items():
        t = ev.get("target")
        if t is None:
            continue
        threshold = thresholds.get(source)
        margin = t[0] - threshold if threshold is not None else t[0] - 1.0
        if best is None or margin > best[0]:
            best = (margin, source, t, threshold)
    confuser = max(((ev["confuser"], s) for s, ev in per_source.items() if ev.get("confuser")), default=None,
                   key=lambda x: x[0][0])
    out = dict(target_score=0.0, target_source=None, target_class=None, target_box=None, target_threshold=None,
               detected_target=False, confuser_score=0.0, confuser_class=None, confuser_source=None, confuser_box=None)
    if best is not None:
        _, source, (score, cls, box), threshold = best
        out.update(target_score=float(score), target_source=source, target_class=cls, target_box=[float(v) for v in box],
                   target_threshold=threshold, detected_target=threshold is not None and score >= threshold)
    if best is None:  # no target seen: the lowest threshold a target detection would have had to reach
        known = [t for t in thresholds.values() if t is not None]
        out["target_threshold"] = min(known) if known else None
    if confuser is not None:
        (score, cls, box), source = confuser
        out.update(confuser_score=float(score), confuser_class=cls, confuser_source=source, confuser_box=[float(v) for v in box])
    return out
