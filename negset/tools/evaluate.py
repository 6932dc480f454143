"""``negset evaluate``: do the chosen negatives beat random ones, and can the measure tell?

On a labelled pool (every image has labels, e.g. COCO128) and for a target
class, repeated over seeds:

1. split the target's images into train positives and held-out positives,
   and the images of classes easily confused with the target (without the
   target; default lists in :mod:`negset.tools.confusers`) into a held-out
   half and a half left in the pool;
2. build four negative sets of the same size from the pool:
   ``chosen`` (the real selection, :func:`negset.select.step.choose` with the
   ``select:`` parameters), ``random``, ``oracle`` (the pool's confuser
   images first, the rest random: what a proxy must reward) and
   ``reference`` (plain similarity: the highest mean top-k similarity to the
   positives, skipping the top 10%);
3. for each proxy (:mod:`negset.tools.probes`: ``regions``, ``image``,
   ``detector``) train a probe on the train positives against each set and
   measure the false-positive rate on the held-out confusers at the
   threshold that keeps ``recall`` of the held-out positives.

Per proxy and set: the mean rate, its ratio to random and the paired
difference to random (per seed, same split) with a bootstrap 95% interval.
A proxy *sees the benefit* on a target when the oracle is significantly
lower than random (the interval under 0). Per set also: leaks, strata
distance to the positives, duplicates, quality-flagged and confuser shares.
``data/evaluate/TARGET.json`` keeps every seed and every parameter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from negset.core import atomic, catalog
from negset.core.config import Params, Select
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.select.evidence import seeded_keys
from negset.select.pool import Pool
from negset.select.step import choose
from negset.tag import quality
from negset.tools import probes
from negset.tools.confusers import default_confusers
from negset.tools.probes import Features, fit_probe, fpr_at_recall  # noqa: F401  (the public names of old)

log = logging.getLogger("negset.evaluate")

SETS = ("chosen", "random", "oracle", "reference")
REFERENCE_SKIP = 0.10  # the plain-similarity reference skips the most similar 10% (likely unlabelled targets)


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


@dataclass
class TargetData:
    """Everything one target's seeds read, loaded once: the pool, labels, confuser mask and probe features."""

    target: str
    confusers: list[str] | None  # None: every non-target image is a confuser
    base: Pool  # every labelled image of the project
    classes: list[set]
    tgt: np.ndarray  # bool per base row: labelled with the target
    conf: np.ndarray  # bool per base row: a confuser image (never the target)
    features: Features
    evidence: TargetEvidence | None = None  # the detections select's evidence hardness reads, for this target


_OBJECTS: dict = {}


def labelled_objects(params: Params, layout: Layout, classes: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """class -> (owner sha256 per object, vectors) of every labelled object (embedded once, cached; kept per process)."""
    from negset.embed.regions import objects_for

    model = (layout.embed / "model.json").read_text()
    key = (str(layout.data.resolve()), model, tuple(classes))
    if key not in _OBJECTS:
        _OBJECTS.clear()
        _OBJECTS[key] = {c: objects_for(params, layout, [c]) for c in classes}
    return _OBJECTS[key]


def _windows(base: Pool, objects: dict[str, tuple[list[str], np.ndarray]], confusers: set | None):
    """(vectors, owner row, kind, is a confuser object) of every image's windows: its whole image, its grid crops,
    its labelled objects (``confusers`` None: every object is one)."""
    V = np.asarray(base.vectors, np.float32)
    row_of = {s: i for i, s in enumerate(base.sha256)}
    parts = [(V, np.arange(len(V)), "image", False)]
    if base.region_owner is not None and (base.region_owner >= 0).any():
        grid = np.flatnonzero(base.region_owner >= 0)
        parts.append((np.asarray(base.region_vectors[grid], np.float32), base.region_owner[grid], "grid", False))
    for cls, (shas, vec) in objects.items():
        own = np.asarray([row_of.get(s, -1) for s in shas], np.int64)
        if (own >= 0).any():
            parts.append((np.asarray(vec[own >= 0], np.float32), own[own >= 0], "object", confusers is None or cls in confusers))
    owner = np.concatenate([p[1] for p in parts])
    order = np.argsort(owner, kind="stable")
    kinds = np.concatenate([np.full(len(p[1]), p[2]) for p in parts])
    is_conf = np.concatenate([np.full(len(p[1]), p[3]) for p in parts])
    return np.vstack([p[0] for p in parts])[order], owner[order], kinds[order], is_conf[order]


def _detections(layout: Layout, sha256: np.ndarray) -> np.ndarray | None:
    """(n, classes): per image the best detection score per class of every source (None: detect has not run)."""
    from negset.detect import store

    if not store.has_run(layout):
        return None
    t = store.read_detections(layout, ["sha256", "class", "score"]).to_pydict()
    names = sorted(set(t["class"]))
    col = {c: j for j, c in enumerate(names)}
    row = {s: i for i, s in enumerate(sha256)}
    out = np.zeros((len(sha256), max(1, len(names))), np.float32)
    for s, c, v in zip(t["sha256"], t["class"], t["score"]):
        i = row.get(s)
        if i is not None:
            out[i, col[c]] = max(out[i, col[c]], v)
    return out


def _strongest_per_source(layout: Layout, sha256: np.ndarray, wanted: set[str]) -> dict[str, dict[int, tuple]]:
    """source -> {base row: (score, class, box)} of the highest-scoring detection of a ``wanted`` class."""
    from negset.detect import store
    from negset.detect.names import normalise

    t = store.read_detections(layout, ["sha256", "source", "class", "score", "x0", "y0", "x1", "y1"]).to_pydict()
    row = {s: i for i, s in enumerate(sha256)}
    best: dict[str, dict[int, tuple]] = {}
    for k, (s, src, c, v) in enumerate(zip(t["sha256"], t["source"], t["class"], t["score"])):
        i = row.get(s)
        if i is None or normalise(c) not in wanted:
            continue
        mine = best.setdefault(src, {})
        if i not in mine or v > mine[i][0]:
            mine[i] = (float(v), c, (t["x0"][k], t["y0"][k], t["x1"][k], t["y1"][k]))
    return best


@dataclass
class TargetEvidence:
    """The raw detections select's evidence is made of, for the evaluated target (not ingest's): per source the
    strongest target and confuser detection per base row. Each split calibrates the thresholds on its train
    positives, as the detect step does on the project's positives."""

    sources: list[str]
    target: dict[str, dict[int, tuple]]
    confuser: dict[str, dict[int, tuple]]
    confusers: list[str]


def target_evidence(params: Params, layout: Layout, base: Pool, target: str) -> TargetEvidence | None:
    """The detections of the evaluated target and of its detect confusers (``detect.confusers``, else the COCO
    defaults the detect step uses); None when the project has no detection evidence."""
    from negset.detect import store
    from negset.detect.names import normalise
    from negset.detect.step import confuser_classes

    if base.detections is None or not store.has_run(layout):
        return None
    t = normalise(target)
    targets = {t} | {normalise(k) for k, v in params.detect.target_map.items() if normalise(v) == t}
    known = {normalise(c) for c in store.read_detections(layout, ["class"]).column("class").to_pylist()}
    confusers = sorted(confuser_classes(params.detect.confusers, targets, known))
    sources = sorted(store.calibration(layout).get("sources") or {})
    return TargetEvidence(sources, _strongest_per_source(layout, base.sha256, targets),
                          _strongest_per_source(layout, base.sha256, set(confusers)), confusers)


def split_detections(te: TargetEvidence, params: Params, train_pos: np.ndarray, rows: np.ndarray):
    """select's Detections for the pool ``rows`` (base rows), thresholds calibrated on ``train_pos``."""
    from negset.detect.calibrate import image_evidence, threshold_from_positives
    from negset.select.pool import Detections

    thresholds = {}
    for s in te.sources:
        got = te.target.get(s, {})
        rec = threshold_from_positives([got[i][0] if i in got else 0.0 for i in train_pos], params.detect.calibration)
        thresholds[s] = rec["threshold"] if got or params.detect.calibration.threshold is not None else None
    n = len(rows)
    d = Detections(target_score=np.zeros(n), threshold=np.full(n, np.nan), detected=np.zeros(n, bool),
                   source=np.full(n, None, object), cls=np.full(n, None, object), box=np.full(n, None, object),
                   confuser_score=np.zeros(n), confuser_threshold=np.full(n, np.nan),
                   confuser_class=np.full(n, None, object), user_hit=np.full(n, None, object))
    for j, i in enumerate(rows):
        per = {s: dict(target=te.target.get(s, {}).get(int(i)), confuser=te.confuser.get(s, {}).get(int(i))) for s in te.sources}
        ev = image_evidence(per, thresholds)
        d.target_score[j] = ev["target_score"]
        d.threshold[j] = np.nan if ev["target_threshold"] is None else ev["target_threshold"]
        d.detected[j] = ev["detected_target"]
        d.source[j], d.cls[j], d.box[j] = ev["target_source"], ev["target_class"], ev["target_box"]
        d.confuser_score[j], d.confuser_class[j] = ev["confuser_score"], ev["confuser_class"]
        ct = thresholds.get(ev["confuser_source"]) if ev["confuser_source"] else None
        d.confuser_threshold[j] = np.nan if ct is None else ct
    return d


def prepare(params: Params, layout: Layout, target: str | None = None, confusers: list[str] | None = None) -> TargetData:
    """Load the labelled pool, the target's objects and the probes' features; check there is enough to split."""
    from negset.select.pool import load_pool

    target = target or params.ingest.target[0]
    with catalog.connect(layout) as con:
        base = load_pool(con, layout, list(params.select.strata))
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
        base = base.subset(np.flatnonzero(labelled))
        rows = [r for r, keep in zip(rows, labelled) if keep]
    classes = [set(r[2] or ()) for r in rows]
    known = set().union(*classes)
    if target not in known:
        raise NegsetError(f"--target: no image is labelled '{target}'", hint=f"known classes: {', '.join(sorted(known))}")
    objects = owner = found = None
    if base.region_vectors is not None:  # every labelled object, those of this target apart
        found = labelled_objects(params, layout, sorted(known))
        row_of = {s: i for i, s in enumerate(base.sha256)}
        obj_shas, obj_vec = found[target]
        owner = np.asarray([row_of.get(s, -1) for s in obj_shas], np.int64)
        base.object_vectors, base.object_owner = obj_vec[owner >= 0], owner[owner >= 0]
        objects, owner = np.asarray(base.object_vectors, np.float32), base.object_owner
    confusers = confusers if confusers is not None else default_confusers(target)
    tgt = np.array([target in c for c in classes])
    conf = (np.array([bool(c & set(confusers)) for c in classes]) if confusers else np.ones(len(classes), bool)) & ~tgt
    if tgt.sum() < 4 or conf.sum() < 2:
        raise NegsetError(
            f"--target {target}: {int(tgt.sum())} target images and {int(conf.sum())} confuser images; need at least 4 and 2",
            hint="pick a target with more images or pass --confusers",
        )
    w_vec, w_owner, w_kind, w_conf = (_windows(base, found, set(confusers) if confusers else None)
                                      if found is not None else (None,) * 4)
    features = Features(vectors=np.asarray(base.vectors, np.float32), objects=objects, object_owner=owner,
                        windows=w_vec, window_owner=w_owner, window_kind=w_kind, confuser_window=w_conf,
                        detections=_detections(layout, base.sha256))
    return TargetData(target, confusers, base, classes, tgt, conf, probes.project(features),
                      target_evidence(params, layout, base, target))


@dataclass
class Split:
    """One seed's split of the target's and the confusers' images; ``idx`` are the pool's base rows."""

    seed: int
    train_pos: np.ndarray
    test_pos: np.ndarray
    test_neg: np.ndarray
    idx: np.ndarray
    positive: np.ndarray  # bool per pool row


def split(td: TargetData, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    t_rows = rng.permutation(np.flatnonzero(td.tgt))
    c_rows = rng.permutation(np.flatnonzero(td.conf))
    test_pos, train_pos = t_rows[: len(t_rows) // 2], t_rows[len(t_rows) // 2 :]
    test_neg = c_rows[: (len(c_rows) + 1) // 2]
    keep = np.ones(len(td.classes), bool)
    keep[test_pos] = False
    keep[test_neg] = False
    idx = np.flatnonzero(keep)
    return Split(seed, np.sort(train_pos), test_pos, test_neg, idx, np.isin(idx, train_pos))


def random_set(pool: Pool, cand: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of the candidate pool rows in a seeded order (by sha256, so a set does not depend on row order)."""
    order = cand[np.argsort(seeded_keys(pool.sha256[cand], 10_000 + seed), kind="stable")]
    return order[:n]


def oracle_set(pool: Pool, cand: np.ndarray, is_confuser: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The candidates that are confuser images first (seeded order), then random others: ``n`` rows."""
    first = random_set(pool, cand[is_confuser[cand]], n, seed)
    rest = random_set(pool, cand[~is_confuser[cand]], n - len(first), seed)
    return np.concatenate([first, rest])


def reference_set(pos_similarity: np.ndarray, cand: np.ndarray, n: int, skip: float = REFERENCE_SKIP) -> np.ndarray:
    """Plain similarity: the candidates by mean top-k similarity to the positives, the top ``skip`` share left out."""
    order = cand[np.argsort(-pos_similarity[cand], kind="stable")]
    return order[int(np.floor(skip * len(order))):][:n]


def run_seed(td: TargetData, params: Params, seed: int, want: int | None, recall: float, proxies: list[str]) -> dict:
    """One split: the four negative sets, each proxy's false-positive rate per set, and the sets' metrics."""
    cfg = params.select
    sp = split(td, seed)
    pool = td.base.subset(sp.idx, sp.positive)
    if td.evidence is not None:  # the detect step's evidence as it would be for this target and these positives
        pool.detections = split_detections(td.evidence, params, sp.train_pos, sp.idx)
    pool.has_target = td.tgt[sp.idx]  # the evaluated target (it may differ from ingest's)
    pool.labelled = np.ones(len(sp.idx), bool)
    n_want = want or cfg.size_for(int(sp.positive.sum()))
    choice = choose(pool, cfg.model_copy(update={"seed": seed}), n_want)
    chosen = choice.rows
    cand = np.flatnonzero(~sp.positive & ~td.tgt[sp.idx])
    n = len(chosen)
    sets = dict(chosen=chosen, random=random_set(pool, cand, n, seed),
                oracle=oracle_set(pool, cand, td.conf[sp.idx], n, seed),
                reference=reference_set(choice.evidence.pos_similarity, cand, n))
    out = dict(seed=seed, negatives=n, train_positives=int(sp.positive.sum()), test_positives=int(len(sp.test_pos)),
               test_confusers=int(len(sp.test_neg)), pool_confusers=int(td.conf[sp.idx][cand].sum()),
               hardness=choice.evidence.hardness_by)
    pool_classes = [td.classes[i] for i in sp.idx]
    for name, rows in sets.items():
        negatives = sp.idx[rows]
        for proxy in proxies:
            probe = probes.PROXIES[proxy][0]
            out[f"{proxy}:{name}_fpr"] = probe(td.features, sp.train_pos, negatives, sp.test_pos, sp.test_neg, recall)
        m = set_metrics(rows, pool, pool_classes, {td.target}, cfg.leaks.near_duplicate, cfg.quality, set(td.confusers or ()))
        out.update({f"{name}_{k}": v for k, v in m.items()})
    return out


def summarise(per_seed: list[dict], proxies: list[str]) -> dict:
    """Per proxy and set: mean rate, ratio to random, paired difference to random; and whether the proxy sees the oracle."""
    out = {}
    for proxy in proxies:
        rates = {s: np.asarray([r[f"{proxy}:{s}_fpr"] for r in per_seed], np.float64) for s in SETS}
        rnd = float(np.nanmean(rates["random"]))
        rows = {}
        for s in SETS:
            mean = float(np.nanmean(rates[s]))
            rows[s] = dict(fpr=mean, ratio=mean / rnd if rnd > 0 else float("nan"))
            if s != "random":
                rows[s]["paired"] = paired_difference(list(rates[s] - rates["random"]))
                rows[s]["verdict"] = verdict(rows[s]["paired"])
        out[proxy] = dict(sets=rows, sees_benefit=rows["oracle"]["verdict"] == "lower")
    return out


def verdict(paired: dict) -> str:
    """'lower' / 'higher' when the paired 95% interval is under / over 0, else 'equal'."""
    lo, hi = paired["ci95"]
    return "lower" if hi < 0 else "higher" if lo > 0 else "equal"


# Long: checks the pool and target, builds the per-target data once, runs the seeds and writes the record
# in one place so the record holds exactly what the figures came from.
def evaluate(
    params: Params,
    layout: Layout,
    target: str | None = None,
    confusers: list[str] | None = None,
    seeds: int = 5,
    count: int | None = None,
    recall: float = 0.95,
    data: TargetData | None = None,
    out: Path | None = None,
    proxies: list[str] | None = None,
) -> dict:
    """Run ``seeds`` splits (seeds 0 .. seeds-1) and write ``data/evaluate/TARGET.json`` (or ``out``).

    ``proxies``: a subset of :data:`negset.tools.probes.PROXIES` (default: every one the project allows).
    """
    td = data or prepare(params, layout, target, confusers)
    cfg = params.select
    proxies = [p for p in probes.available(td.features) if proxies is None or p in proxies]
    per_seed = [run_seed(td, params, seed, count, recall, proxies) for seed in range(seeds)]
    numeric = [k for k, v in per_seed[0].items() if k != "seed" and isinstance(v, (int, float))]
    mean = {k: float(np.nanmean([s[k] for s in per_seed])) for k in numeric}
    result = dict(
        target=td.target,
        confusers=td.confusers or "all non-target images",
        seeds=list(range(seeds)),
        recall=recall,
        count=count,
        select=cfg.model_dump(mode="json"),
        proxies=proxies,
        hardness=per_seed[0]["hardness"],
        confuser_images=int(td.conf.sum()),
        detect_confusers=td.evidence.confusers if td.evidence is not None else None,
        target_images=int(td.tgt.sum()),
        mean=mean,
        proxy=summarise(per_seed, proxies),
        per_seed=per_seed,
    )
    safe = "".join(ch if ch.isalnum() else "_" for ch in td.target)
    atomic.write_json(out or layout.data / "evaluate" / f"{safe}.json", result)
    return result


def paired_difference(diffs: list[float], draws: int = 2000) -> dict:
    """Mean of the per-seed differences (set - random) with a seeded bootstrap 95% interval, and the tally.

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
    conf = result["confusers"]
    lines = [
        f"negset evaluate: target '{result['target']}', held-out confusers: {', '.join(conf) if isinstance(conf, list) else conf}",
        f"  {len(result['seeds'])} seeds; per seed {m['train_positives']:.1f} train positives, {m['negatives']:.1f} negatives, "
        f"{m['test_positives']:.1f} held-out positives, {m['test_confusers']:.1f} held-out confusers; "
        f"hardness: {result.get('hardness', 'image')}",
        f"  false-positive rate on the held-out confusers at {result['recall']:.0%} recall of the held-out positives (mean);",
        "  ratio = set / random; paired = per-seed difference to random, bootstrap 95% interval",
        f"  {'proxy':<10}{'set':<11}{'FPR':>7}{'ratio':>7}  {'paired (95% interval)':<28}verdict",
    ]
    for proxy, p in result["proxy"].items():
        for s in SETS:
            row = p["sets"][s]
            pd_ = row.get("paired")
            paired = f"{pd_['mean']:+.3f} ({pd_['ci95'][0]:+.3f} .. {pd_['ci95'][1]:+.3f})" if pd_ else ""
            lines.append(f"  {proxy:<10}{s:<11}{row['fpr']:>7.3f}{row['ratio']:>7.2f}  {paired:<28}{row.get('verdict', '')}")
        lines.append(f"  {'':<10}proxy {'sees the benefit (oracle significantly lower than random)' if p['sees_benefit'] else 'CANNOT see the benefit here (oracle not significantly lower than random)'}")
    lines.append(f"  {'':24}" + "".join(f"{s:>10}" for s in SETS))
    for k, label in (("leaks", "leaks"), ("strata_tv", "strata TV distance"), ("duplicate_rate", "duplicate rate"),
                     ("low_information_share", "low-information share"), ("quality_flagged_share", "quality-flagged share"),
                     ("confuser_share", "confuser share")):
        lines.append(f"  {label:<24}" + "".join(f"{m[s + '_' + k]:>10.3f}" for s in SETS))
    return "\n".join(lines)
