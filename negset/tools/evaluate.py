"""``negset evaluate``: do the chosen negatives beat random ones?

On a labelled pool (every image has labels, e.g. COCO128) and for a target
class, repeated over seeds:

1. split the target's images into train positives and held-out positives,
   and the images of classes easily confused with the target (without the
   target) into a held-out half and a half left in the pool;
2. choose negatives from the pool with the real selection
   (:func:`negset.select.step.choose`, the ``select:`` parameters), and as many
   random negatives from the same pool;
3. train a linear probe (L2 logistic regression, numpy) on the frozen
   embeddings: train positives vs each negative set;
4. on the held-out images, set the threshold where the probe finds 95% of
   the held-out positives and measure the false-positive rate on the
   held-out confusers.

Printed (mean over seeds): both false-positive rates and their ratio, and for
both negative sets the leak count (negatives labelled with the target or
near-duplicates of a positive), the strata total-variation distance to the
positives, the duplicate rate and the low-information share.
"""

from __future__ import annotations

import logging

import numpy as np

from negset.core import atomic, catalog
from negset.core.config import Params
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.select.evidence import seeded_keys
from negset.select.pool import Pool
from negset.select.step import choose
from negset.tag import quality

log = logging.getLogger("negset.evaluate")

# classes a detector of the key most often confuses with it (COCO names)
CONFUSERS = {
    "dog": ["cat", "horse", "sheep", "cow", "teddy bear", "bear"],
    "cat": ["dog", "teddy bear", "bear", "sheep"],
    "car": ["truck", "bus", "motorcycle", "train", "bicycle"],
    "truck": ["car", "bus", "train"],
    "bus": ["truck", "car", "train"],
    "person": ["teddy bear", "dog", "cat", "horse", "chair"],
    "horse": ["cow", "sheep", "dog", "elephant", "zebra"],
    "bicycle": ["motorcycle"],
    "motorcycle": ["bicycle", "car"],
}


def fit_probe(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 30):
    """L2 logistic regression with balanced class weights (Newton steps in the span of X); returns a scorer."""
    X = np.asarray(X, np.float64)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    Z = np.hstack([X @ vt.T, np.ones((len(X), 1))])
    sw = np.where(y == 1, 0.5 / max(1, (y == 1).sum()), 0.5 / max(1, (y == 0).sum()))
    w = np.zeros(Z.shape[1])
    reg = np.full(Z.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(Z @ w, -30, 30)))
        g = Z.T @ (sw * (p - y)) + reg * w
        H = (Z * (sw * p * (1 - p))[:, None]).T @ Z + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    coef, bias = vt.T @ w[:-1], w[-1]
    return lambda Xt: np.asarray(Xt, np.float64) @ coef + bias


def fpr_at_recall(pos_scores: np.ndarray, neg_scores: np.ndarray, recall: float = 0.95) -> float:
    """False-positive rate at the highest threshold that keeps ``recall`` of the positives."""
    s = np.sort(pos_scores)[::-1]
    need = int(np.ceil(recall * len(s)))
    thr = s[need - 1]
    return float((neg_scores >= thr).mean()) if len(neg_scores) else float("nan")


def tv_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance between the distributions of two arrays of stratum codes."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    keys = np.union1d(a, b)
    pa_ = np.array([(a == k).mean() for k in keys])
    pb = np.array([(b == k).mean() for k in keys])
    return float(0.5 * np.abs(pa_ - pb).sum())


def set_metrics(rows: np.ndarray, pool: Pool, classes: list[set], target: set, near: float, qcfg, confusers: set) -> dict:
    V = np.asarray(pool.vectors[rows], np.float32)
    P = np.asarray(pool.vectors[pool.positive], np.float32)
    labelled_leak = sum(bool(classes[r] & target) for r in rows)
    near_pos = int(((V @ P.T).max(axis=1) >= 1 - near).sum()) if len(rows) and len(P) else 0
    S = V @ V.T
    np.fill_diagonal(S, -1)
    dup = float((S.max(axis=1) >= 1 - near).mean()) if len(rows) > 1 else 0.0
    flagged = np.zeros(len(rows), bool)
    for check in quality.CHECKS:
        thr = getattr(qcfg, check)
        s = pool.scores.get(f"q_{check}")
        if thr is not None and s is not None:
            flagged |= np.asarray(s)[rows] < thr
    low_info = pool.scores.get("q_low_information")
    return dict(
        leaks=int(labelled_leak + near_pos),
        strata_tv=tv_distance(pool.stratum[pool.positive], pool.stratum[rows]),
        duplicate_rate=dup,
        low_information_share=float((np.asarray(low_info)[rows] < (qcfg.low_information or 0)).mean()) if low_info is not None and len(rows) else 0.0,
        quality_flagged_share=float(flagged.mean()) if len(rows) else 0.0,
        confuser_share=float(np.mean([bool(classes[r] & confusers) for r in rows])) if len(rows) else 0.0,
    )


def evaluate(
    params: Params,
    layout: Layout,
    target: str | None = None,
    confusers: list[str] | None = None,
    seeds: int = 5,
    count: int | None = None,
    recall: float = 0.95,
) -> dict:
    from negset.select.pool import load_pool

    cfg = params.select
    target = target or params.ingest.target[0]
    with catalog.connect(layout) as con:
        base = load_pool(con, layout, list(cfg.strata))
        rows = con.sql("SELECT sha256, labelled, classes FROM images ORDER BY sha256").fetchall()
    labelled = np.array([bool(r[1]) for r in rows])
    if labelled.sum() < max(2, 0.5 * len(rows)):
        raise NegsetError(
            f"{layout.ingest / 'images.parquet'}: evaluate needs a labelled pool "
            f"({int((~labelled).sum())} of {len(rows)} images have no labels)",
            hint="point ingest.positives at labels that cover the images (e.g. COCO128's YOLO labels)",
        )
    if (~labelled).any():
        log.info("evaluate: %d unlabelled images left out (they may hold the target)", int((~labelled).sum()))
    classes = [set(r[2] or ()) for r in rows]
    known = set().union(*classes)
    if base.region_vectors is not None and target in known:  # objects of this target (it may differ from ingest's)
        from negset.embed.regions import objects_for

        row_of = {s: i for i, s in enumerate(base.sha256)}
        obj_shas, base.object_vectors = objects_for(params, layout, [target])
        base.object_owner = np.asarray([row_of.get(s, -1) for s in obj_shas], np.int64)
    if target not in known:
        raise NegsetError(f"--target: no image is labelled '{target}'", hint=f"known classes: {', '.join(sorted(known))}")
    confusers = confusers if confusers is not None else CONFUSERS.get(target)
    tgt = np.array([target in c for c in classes])
    if confusers:
        wanted = set(confusers)
        conf = np.array([bool(c & wanted) for c in classes]) & ~tgt
    else:
        conf = ~tgt  # no confuser list: every non-target image may be held out
    if tgt.sum() < 4 or conf.sum() < 2:
        raise NegsetError(
            f"--target {target}: {int(tgt.sum())} target images and {int(conf.sum())} confuser images; need at least 4 and 2",
            hint="pick a target with more images or pass --confusers",
        )
    per_seed = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        t_rows = rng.permutation(np.flatnonzero(tgt))
        c_rows = rng.permutation(np.flatnonzero(conf))
        test_pos = t_rows[: len(t_rows) // 2]
        train_pos = t_rows[len(t_rows) // 2 :]
        test_neg = c_rows[: (len(c_rows) + 1) // 2]
        keep = np.ones(len(classes), bool)
        keep[test_pos] = False
        keep[test_neg] = False
        keep &= labelled
        idx = np.flatnonzero(keep)
        positive = np.isin(idx, train_pos)
        pool = base.subset(idx, positive)
        pool.has_target = tgt[idx]  # the evaluated target (it may differ from ingest's)
        pool.labelled = np.ones(len(idx), bool)
        want = count or cfg.size_for(int(positive.sum()))
        scfg = cfg.model_copy(update={"seed": seed})
        choice = choose(pool, scfg, want)
        hardness_by = choice.evidence.hardness_by
        chosen = choice.rows
        cand = np.flatnonzero(~positive & ~tgt[idx])
        order = cand[np.argsort(seeded_keys(pool.sha256[cand], 10_000 + seed), kind="stable")]
        random_rows = order[: len(chosen)]
        X_pos = np.asarray(pool.vectors[positive], np.float32)
        Xt_pos = np.asarray(base.vectors[test_pos], np.float32)
        Xt_neg = np.asarray(base.vectors[test_neg], np.float32)
        out = dict(seed=seed, negatives=int(len(chosen)), train_positives=int(positive.sum()),
                   test_positives=int(len(test_pos)), test_confusers=int(len(test_neg)))
        for name, rows_ in (("chosen", chosen), ("random", random_rows)):
            X = np.vstack([X_pos, np.asarray(pool.vectors[rows_], np.float32)])
            y = np.r_[np.ones(len(X_pos)), np.zeros(len(rows_))]
            score = fit_probe(X, y)
            out[f"{name}_fpr"] = fpr_at_recall(score(Xt_pos), score(Xt_neg), recall)
            m = set_metrics(rows_, pool, [classes[i] for i in idx], {target}, cfg.leaks.near_duplicate, cfg.quality, set(confusers or ()))
            out.update({f"{name}_{k}": v for k, v in m.items()})
        per_seed.append(out)
    keys = [k for k in per_seed[0] if k != "seed"]
    mean = {k: float(np.nanmean([s[k] for s in per_seed])) for k in keys}
    ratio = mean["chosen_fpr"] / mean["random_fpr"] if mean["random_fpr"] > 0 else float("nan")
    paired = paired_difference([s["chosen_fpr"] - s["random_fpr"] for s in per_seed])
    result = dict(
        target=target,
        confusers=confusers or "all non-target images",
        seeds=seeds,
        recall=recall,
        mean=mean,
        fpr_ratio=ratio,
        paired=paired,
        hardness=hardness_by,
        per_seed=per_seed,
    )
    safe = "".join(ch if ch.isalnum() else "_" for ch in target)
    atomic.write_json(layout.data / "evaluate" / f"{safe}.json", result)
    return result


def paired_difference(diffs: list[float], draws: int = 2000) -> dict:
    """Mean of the per-seed differences (chosen - random) with a seeded bootstrap 95% interval, and the tally.

    Both sets share each seed's split, so the difference is far less noisy than either rate.
    """
    d = np.asarray([x for x in diffs if np.isfinite(x)], np.float64)
    if not len(d):
        return dict(mean=float("nan"), ci95=[float("nan"), float("nan")], better=0, same=0, worse=0)
    boot = np.random.default_rng(0).choice(d, size=(draws, len(d)), replace=True).mean(axis=1)
    return dict(
        mean=float(d.mean()),
        ci95=[float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        better=int((d < 0).sum()),
        same=int((d == 0).sum()),
        worse=int((d > 0).sum()),
    )


def report(result: dict) -> str:
    m = result["mean"]
    lines = [
        f"negset evaluate: target '{result['target']}', held-out confusers: "
        f"{', '.join(result['confusers']) if isinstance(result['confusers'], list) else result['confusers']}",
        f"  {result['seeds']} seeds; per seed {m['train_positives']:.1f} train positives, {m['negatives']:.1f} negatives, "
        f"{m['test_positives']:.1f} held-out positives, {m['test_confusers']:.1f} held-out confusers",
        f"  false-positive rate at {result['recall']:.0%} recall (mean): chosen {m['chosen_fpr']:.3f}  random {m['random_fpr']:.3f}  "
        f"ratio chosen/random {result['fpr_ratio']:.2f}",
    ]
    pd_ = result.get("paired")
    if pd_:
        lines.append(
            f"  paired difference chosen - random: {pd_['mean']:+.3f} (bootstrap 95% interval {pd_['ci95'][0]:+.3f} .. "
            f"{pd_['ci95'][1]:+.3f}); chosen lower in {pd_['better']} seeds, equal in {pd_['same']}, higher in {pd_['worse']}"
        )
    lines.append(f"  hardness: {result.get('hardness', 'image')} (select.hardness; regions need embed.regions > 0)")
    lines += [
        f"  {'':24}{'chosen':>10}{'random':>10}",
    ]
    for k, label in (("leaks", "leaks"), ("strata_tv", "strata TV distance"), ("duplicate_rate", "duplicate rate"),
                     ("low_information_share", "low-information share"), ("quality_flagged_share", "quality-flagged share"),
                     ("confuser_share", "confuser share")):
        lines.append(f"  {label:<24}{m['chosen_' + k]:>10.3f}{m['random_' + k]:>10.3f}")
    return "\n".join(lines)
