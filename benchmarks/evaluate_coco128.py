"""The quality gate of the selection: chosen / random / oracle / reference negatives on COCO128, every proxy.

    python -m benchmarks.evaluate_coco128 --all [--seeds 100] [--count 20] [--set select.bands.hard=80 ...]
    python -m benchmarks.evaluate_coco128 --targets dog,car --seeds 20

Builds a project over ../shared/datasets/coco128-train once (ingest, embed
with ``embed.regions: 3``, detect with the builtin YOLOX-Nano on 2 x 2
tiles, tag) in ``--work`` (default ``data/evaluate/coco128-build``) and
reuses it while its parameters are unchanged; the per-seed work is numpy
(and the real ``choose``). ``--all`` evaluates every COCO128 class with at
least 8 images. Prints one table per proxy (per target: the false-positive
rate of each set, the ratio to random and the verdict of the paired
bootstrap interval) and a pooled row per set: the mean ratio over targets
and how many targets are significantly lower / equal / higher than random.
Every target's seeds and parameters go to ``--out`` (default
``data/evaluate/coco128/``: ``TARGET.json`` and ``pooled.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from negset.core import atomic
from negset.core.config import Params, load_params
from negset.core.layout import Layout
from negset.tools.evaluate import SETS, evaluate, prepare

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "datasets" / "coco128-train"
MIN_IMAGES = 8
BUILD_STEPS = ("ingest", "embed", "detect", "tag")


def project_params(data: Path) -> str:
    return f"""ingest:
  target: person
  positives: {{format: yolo, path: {data / 'labels'}, images: {data / 'images'}, classes: {data / 'classes.txt'}}}
embed:
  regions: 3
detect:
  sources:
    - model: builtin:yolox_nano
      tiles: 2
      tile_overlap: 0.4
      min_score: 0.05
"""


def build(work: Path, data: Path) -> tuple[Params, Layout]:
    """The COCO128 project in ``work``: built once, rebuilt when its parameters or negset's version change."""
    import negset
    from negset.pipeline import step_function

    text = project_params(data)
    stamp = work / "data" / "evaluate-build.json"
    layout = Layout.at(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(text)
    params = load_params(work / "params.yaml")
    # the embed and detect sections with their defaults: a changed default (embed.regions_from,
    # detect tiles_when) rebuilds
    want = dict(params=text, version=negset.__version__, embed=params.embed.model_dump(mode="json"),
                detect=params.detect.model_dump(mode="json"))
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        for name in BUILD_STEPS:  # embed and detect keep sha256-keyed caches: a rebuild pays only for what changed
            step_function(name)(params, layout)
        atomic.write_json(stamp, want)
    return params, layout


def targets_with(data: Path, at_least: int) -> list[str]:
    """COCO128 classes with at least this many images, most images first."""
    names = (data / "classes.txt").read_text().split("\n")
    count: dict[str, int] = {}
    for txt in sorted((data / "labels").glob("*.txt")):
        for c in {names[int(line.split()[0])] for line in txt.read_text().splitlines() if line.strip()}:
            count[c] = count.get(c, 0) + 1
    return [c for c, n in sorted(count.items(), key=lambda kv: (-kv[1], kv[0])) if n >= at_least]


def with_overrides(params: Params, sets: list[str]) -> Params:
    """``section.key.sub=value`` (value read as YAML) applied to the parameters, validated again."""
    raw = params.model_dump(mode="json")
    for item in sets:
        key, _, value = item.partition("=")
        node = raw
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    return Params.model_validate(raw)


def shipped_hardness(sets: list[str]) -> list[str]:
    """The build embeds regions (the region proxy needs them); the selection ranks as the shipped params.yaml
    would: with ``embed.regions: 0`` there, ``select.hardness: image`` (unless ``--set select.hardness=...``)."""
    shipped = yaml.safe_load((REPO / "params.yaml").read_text()) or {}
    if (shipped.get("embed") or {}).get("regions", 0) or any(s.startswith("select.hardness=") for s in sets):
        return sets
    return [*sets, "select.hardness=image"]


def pooled(results: list[dict], proxy: str) -> dict:
    """Per set: the mean ratio to random over the targets and the tally of their verdicts."""
    out = {}
    for s in SETS:
        if s == "random":
            continue
        rows = [r["proxy"][proxy]["sets"][s] for r in results]
        ratios = [row["ratio"] for row in rows]
        out[s] = dict(mean_ratio=float(sum(ratios) / len(ratios)),
                      **{v: sum(row["verdict"] == v for row in rows) for v in ("lower", "equal", "higher")})
    return out


def table(results: list[dict], proxy: str) -> list[str]:
    lines = [f"proxy {proxy}: FPR per set, ratio to random (verdict of the paired 95% interval: - lower, = equal, + higher)",
             f"  {'target':<14}{'random':>8}" + "".join(f"{s:>20}" for s in SETS if s != "random")]
    mark = {"lower": "-", "equal": "=", "higher": "+"}
    for r in results:
        sets = r["proxy"][proxy]["sets"]
        cells = "".join(f"{sets[s]['fpr']:>9.3f} {sets[s]['ratio']:>5.2f} {mark[sets[s]['verdict']]:>3}  "
                        for s in SETS if s != "random")
        lines.append(f"  {r['target']:<14}{sets['random']['fpr']:>8.3f}{cells}")
    pool = pooled(results, proxy)
    lines.append(f"  {'pooled':<14}{'':>8}" + "".join(
        f"{'':>3}{pool[s]['mean_ratio']:>5.2f} {pool[s]['lower']:>2}/{pool[s]['equal']}/{pool[s]['higher']:<2}  "
        for s in SETS if s != "random"))
    return lines


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help=f"every COCO128 class with at least {MIN_IMAGES} images")
    ap.add_argument("--targets", default="dog,car")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--count", type=int, default=20, help="negatives per split (0: select.count / select.ratio)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a parameter, e.g. select.bands.hard=80")
    ap.add_argument("--data", type=Path, default=COCO128)
    ap.add_argument("--work", type=Path, default=REPO / "data" / "evaluate" / "coco128-build")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "evaluate" / "coco128")
    ap.add_argument("--proxies", help="comma-separated subset of regions,image,detector (default: all)")
    ap.add_argument("--quiet", action="store_true", help="print only the pooled rows")
    args = ap.parse_args(argv)
    if not (args.data / "images").is_dir():
        raise SystemExit(f"{args.data}: no COCO128 here (pass --data DIR)")
    logging.basicConfig(level=logging.WARNING)
    params, layout = build(args.work, args.data)
    args.set = shipped_hardness(args.set)
    params = with_overrides(params, args.set)
    targets = targets_with(args.data, MIN_IMAGES) if args.all else args.targets.split(",")
    results = []
    for target in targets:
        print(f"  {target} ...", file=sys.stderr, flush=True)
        safe = "".join(ch if ch.isalnum() else "_" for ch in target)
        td = prepare(params, layout, target)
        results.append(evaluate(params, layout, target, seeds=args.seeds, count=args.count or None,
                                data=td, out=args.out / f"{safe}.json",
                                proxies=args.proxies.split(",") if args.proxies else None))
    proxies = results[0]["proxies"]
    summary = dict(targets=targets, seeds=args.seeds, count=args.count, overrides=args.set,
                   select=params.select.model_dump(mode="json"), pooled={p: pooled(results, p) for p in proxies},
                   per_target={r["target"]: {p: r["proxy"][p]["sets"] for p in proxies} for r in results})
    atomic.write_json(args.out / "pooled.json", summary)
    print(f"COCO128, {len(targets)} targets, {args.seeds} seeds each, {args.count or 'select.count/ratio'} negatives per split"
          f"{', ' + ' '.join(args.set) if args.set else ''}; records in {args.out}")
    for p in proxies:
        lines = table(results, p)
        print("\n".join(lines[-1:] if args.quiet else lines), flush=True)
        sees = sum(r["proxy"][p]["sees_benefit"] for r in results)
        print(f"  proxy {p}: the oracle is significantly lower than random on {sees} of {len(results)} targets: "
              f"{'adequate' if sees >= 0.8 * len(results) else 'NOT adequate'} (adequate: at least 80%)")
    return summary


if __name__ == "__main__":
    main()
