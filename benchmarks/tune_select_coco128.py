"""Which selection defaults help across targets: candidates ranked by their pooled result, leave-one-target-out.

    python -m benchmarks.tune_select_coco128 [--seeds 30] [--proxy regions]

For every candidate setting (overrides of the ``select:`` defaults, below)
and every COCO128 target with at least 8 images: chosen vs random with one
proxy (the project built once, as ``benchmarks.evaluate_coco128`` does).
Prints each candidate's ratio per target and pooled (mean ratio, targets
significantly lower / equal / higher), then the leave-one-target-out check:
for each target, the candidate best on the other targets' pooled ratio, and
its ratio on the target left out. Records in ``data/evaluate/tune/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from benchmarks.evaluate_coco128 import COCO128, MIN_IMAGES, REPO, build, targets_with, with_overrides
from negset.core import atomic
from negset.tools.evaluate import evaluate, prepare

CANDIDATES: dict[str, list[str]] = {
    "shipped": [],
    "no distractors": ["select.distractors=0"],
    "distractors 0.25": ["select.distractors=0.25"],
    "distractors 0.75": ["select.distractors=0.75"],
    "distractors, min 1.0": ["select.distractor_min=1.0"],
    "distractors, min 0.25": ["select.distractor_min=0.25"],
    "distractors 1.0": ["select.distractors=1.0"],
    "mix 0.3/0.4/0.3": ["select.bands.mix={hard: 0.3, medium: 0.4, context: 0.3}"],
    "mix 0.8/0.2/0": ["select.bands.mix={hard: 0.8, medium: 0.2, context: 0.0}"],
    "hard band from p85": ["select.bands.hard=85"],
    "hard band from p50": ["select.bands.hard=50"],
    "random picks": ["select.diversity=random"],
    "image hardness": ["select.hardness=image"],
    "no context rules": ["select.context.irrelevant_below_percentile=0", "select.context.require_positive_background=false"],
    "strata: background": ["select.strata=[background]"],
    "strata: lighting": ["select.strata=[lighting]"],
    "no positive-background rule": ["select.context.require_positive_background=false"],
    "strata: lighting, no pos-bg rule": ["select.strata=[lighting]", "select.context.require_positive_background=false"],
    "strata: background, no pos-bg rule": ["select.strata=[background]", "select.context.require_positive_background=false"],
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--proxy", default="detector")
    ap.add_argument("--only", help="candidate names separated by ; (default: all)")
    ap.add_argument("--data", type=Path, default=COCO128)
    ap.add_argument("--work", type=Path, default=REPO / "data" / "evaluate" / "coco128-build")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "evaluate" / "tune")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    params, layout = build(args.work, args.data)
    targets = targets_with(args.data, MIN_IMAGES)
    names = args.only.split(";") if args.only else list(CANDIDATES)
    prepared: dict[tuple, dict] = {}  # the pool's strata codes follow select.strata: one preparation per axes
    ratio: dict[str, dict[str, float]] = {}
    verdicts: dict[str, dict[str, str]] = {}
    for name in names:
        p = with_overrides(params, CANDIDATES[name])
        axes = tuple(p.select.strata)
        if axes not in prepared:
            prepared[axes] = {t: prepare(p, layout, t) for t in targets}
        data = prepared[axes]
        ratio[name], verdicts[name] = {}, {}
        for t in targets:
            print(f"  {name}: {t} ...", file=sys.stderr, flush=True)
            safe = "".join(ch if ch.isalnum() else "_" for ch in t)
            r = evaluate(p, layout, t, seeds=args.seeds, count=args.count, data=data[t], proxies=[args.proxy],
                         out=args.out / "".join(ch if ch.isalnum() else "_" for ch in name) / f"{safe}.json")
            row = r["proxy"][args.proxy]["sets"]["chosen"]
            ratio[name][t], verdicts[name][t] = row["ratio"], row["verdict"]
        v = list(verdicts[name].values())
        print(f"{name:<22} pooled {np.mean(list(ratio[name].values())):.3f}  lower/equal/higher "
              f"{v.count('lower')}/{v.count('equal')}/{v.count('higher')}  "
              + " ".join(f"{t[:6]}={ratio[name][t]:.2f}{'-=+'[['lower', 'equal', 'higher'].index(verdicts[name][t])]}"
                         for t in targets), flush=True)
    loto = {}
    for t in targets:
        best = min(names, key=lambda n: np.mean([ratio[n][u] for u in targets if u != t]))
        loto[t] = dict(choice=best, ratio=ratio[best][t], verdict=verdicts[best][t])
    print("leave-one-target-out (candidate best on the other targets -> its ratio on the one left out):")
    for t, row in loto.items():
        print(f"  {t:<14}{row['choice']:<22}{row['ratio']:.2f} {row['verdict']}")
    print(f"  pooled over left-out targets: {np.mean([r['ratio'] for r in loto.values()]):.3f}")
    summary = dict(seeds=args.seeds, count=args.count, proxy=args.proxy, candidates={n: CANDIDATES[n] for n in names},
                   ratio=ratio, verdict=verdicts, leave_one_target_out=loto)
    atomic.write_json(args.out / "tune.json", summary)
    return summary


if __name__ == "__main__":
    main()
