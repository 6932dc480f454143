"""Raw, unlabelled pools on COCO128: does the selection keep the target out of the negatives?

    python -m benchmarks.rawpool_coco128 [--coco128 DIR] [--targets dog,car,person] [--splits 10] [--keep DIR]
        [--no-baseline] [--tiles-when always|unsure|weak] [--tiles 0]

The setup of issue 16, per target and split (seeded): half of the photos that
contain the target are the positives (labelled, YOLO); every other photo,
the other half of the target photos included, is an unlabelled candidate in
a separate folder. The shipped ``params.yaml`` builds the negatives
(``select.ratio: 2``, everything else as shipped) with the real steps
(ingest, embed, detect, tag, select), once with the shipped detector and once
with ``detect.sources: []`` (the embedding rules alone). Printed, one table:
the negatives chosen, how many of them contain the target (must be 0), the
quarantine recall of the hidden target photos (``quarantine`` or
``detected_target``), the share of photos without the target that were
quarantined, and how the negatives were picked (quota vs fill; bands).

Embeddings, region vectors, detections and pixel statistics are cached by
image sha256 in one folder shared by every split, so only the first split
pays for the models (with ``--keep DIR``, later runs into the same folder
reuse them: compare ``--tiles-when unsure`` or ``--tiles 0`` with the shipped
``weak`` at the cost of the detector alone).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "datasets" / "coco128-train"
SHARED_CACHES = ("embed", "regions", "detect", "onnx", "pixels")


def truth(coco128: Path) -> tuple[list[str], dict[str, set[str]]]:
    """(class names, photo stem -> classes in it) from the YOLO labels (no label file: no object)."""
    names = [n for n in (coco128 / "classes.txt").read_text().split("\n")]
    out = {p.stem: set() for p in (coco128 / "images").glob("*.jpg")}
    for txt in (coco128 / "labels").glob("*.txt"):
        if txt.stem in out:  # a label file without its photo is no photo
            out[txt.stem] = {names[int(line.split()[0])] for line in txt.read_text().splitlines() if line.strip()}
    return names, out


def split_of(labels: dict[str, set[str]], target: str, seed: int) -> tuple[list[str], list[str]]:
    """(positives, hidden): a seeded half of the target's photos, and the other half."""
    with_target = sorted(s for s, c in labels.items() if target in c)
    order = np.random.default_rng(seed).permutation(with_target).tolist()
    return sorted(order[: len(order) // 2]), sorted(order[len(order) // 2 :])


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_project(root: Path, coco128: Path, labels: dict[str, set[str]], target: str, seed: int,
                 detector: bool, cache: Path, tiles_when: str | None = None, tiles: int | None = None) -> dict:
    """A project folder for one split: positives (images + YOLO labels) and the unlabelled pool; params.yaml."""
    positives, hidden = split_of(labels, target, seed)
    shutil.rmtree(root, ignore_errors=True)  # a fresh project (the caches live outside it)
    for sub in ("positives/images", "positives/labels", "pool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem in labels:
        img = coco128 / "images" / f"{stem}.jpg"
        if stem in positives:
            _link(img, root / "positives" / "images" / img.name)
            shutil.copy2(coco128 / "labels" / f"{stem}.txt", root / "positives" / "labels" / f"{stem}.txt")
        else:
            _link(img, root / "pool" / img.name)
    shutil.copy2(coco128 / "classes.txt", root / "classes.txt")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"].update(
        target=[target],
        positives=dict(format="yolo", path="positives/labels", images="positives/images", classes="classes.txt"),
        sources=[dict(type="local", path="pool")],
    )
    params["select"].update(count=None, ratio=2)
    if not detector:
        params["detect"]["sources"] = []
    else:
        for src in params["detect"]["sources"]:
            src.update({k: v for k, v in (("tiles_when", tiles_when), ("tiles", tiles)) if v is not None})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data" / "cache").mkdir(parents=True, exist_ok=True)
    for name in SHARED_CACHES:  # keyed by image sha256 + model: the same for every split
        (cache / name).mkdir(parents=True, exist_ok=True)
        link = root / "data" / "cache" / name
        if not link.exists():
            link.symlink_to(cache / name, target_is_directory=True)
    return dict(positives=positives, hidden=hidden)


def build(root: Path, steps=("ingest", "embed", "detect", "tag", "select")) -> dict:
    """Run the steps in this process; the select summary."""
    from negset.core.config import load_params
    from negset.core.layout import Layout
    from negset.pipeline import step_function

    params, layout = load_params(root / "params.yaml"), Layout.at(root)
    summary = {}
    for name in steps:
        summary[name] = step_function(name)(params, layout)
    return summary


def measure(root: Path, labels: dict[str, set[str]], target: str, split: dict) -> dict:
    """What one split's selection did with the hidden target photos and the rest."""
    from negset.core import parquet as pq
    from negset.core.layout import Layout

    layout = Layout.at(root)
    sel = pq.read_table(layout.select / "selection.parquet").to_pylist()
    rej = pq.read_table(layout.select / "rejected.parquet").to_pylist()
    stem = lambda uri: Path(uri).stem  # noqa: E731
    quarantined = {stem(r["uri"]) for r in rej if r["rule"] in ("quarantine", "detected_target")}
    by_detector = {stem(r["uri"]) for r in rej if r["rule"] == "detected_target"}
    chosen = [stem(r["uri"]) for r in sel]
    hidden = set(split["hidden"])
    others = {s for s in labels if target not in labels[s]}
    return dict(
        chosen=len(chosen),
        contaminated=sum(target in labels[s] for s in chosen),
        photos=len(hidden) + len(split["positives"]),
        hidden=len(hidden),
        hidden_quarantined=len(hidden & quarantined),
        hidden_by_detector=len(hidden & by_detector),
        others=len(others),
        others_quarantined=len(others & quarantined),
        fill=sum(r["rule"] == "fill" for r in sel),
        bands=sorted({r["band"] for r in sel if r["rule"] == "quota"}),
        strata=len({r["stratum"] for r in sel if r["rule"] == "quota"}),
    )


def run_split(work: Path, coco128: Path, labels, target: str, seed: int, detector: bool, cache: Path,
              tiles_when: str | None = None, tiles: int | None = None) -> dict:
    root = work / f"{target}-{seed}-{'det' if detector else 'nodet'}"
    split = make_project(root, coco128, labels, target, seed, detector, cache, tiles_when, tiles)
    summary = build(root)
    out = measure(root, labels, target, split)
    out["warnings"] = summary["select"].get("warnings", [])
    speed = [s["speed"] for s in summary["detect"]["sources"].values() if "speed" in s]
    out["detect_s"] = sum(x["seconds"] for x in speed)
    out["detect_ran"] = sum(x["ran"] for x in speed)
    out["detect_tiled"] = sum(x.get("tiled", 0) for x in speed)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco128", type=Path, default=DEFAULT)
    ap.add_argument("--targets", default="dog,car,person")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--keep", type=Path, default=None, help="build the split projects here and keep them")
    ap.add_argument("--no-baseline", action="store_true", help="skip the runs with the detector off")
    ap.add_argument("--tiles-when", choices=["always", "unsure", "weak"], default=None,
                    help="override detect.sources[].tiles_when of the shipped params (README \"Detect\": where tiles pay)")
    ap.add_argument("--tiles", type=int, default=None, help="override detect.sources[].tiles (0: whole image only)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if not (args.coco128 / "images").is_dir():
        raise SystemExit(f"{args.coco128}: no COCO128 here (pass --coco128 DIR)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(message)s")  # warnings: in the table
    _, labels = truth(args.coco128)
    work = args.keep or Path(tempfile.mkdtemp(prefix="rawpool-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    print(f"COCO128 raw pools ({len(labels)} photos): positives = a seeded half of the target's photos (YOLO labels); "
          f"candidates = every other photo, unlabelled; shipped params.yaml, select.ratio 2; {args.splits} splits")
    head = (f"{'detector':<22} {'target':>6} {'photos':>6} {'chosen':>6} {'with target':>11} {'worst':>5} "
            f"{'recall':>6} {'worst':>5} {'by det':>6} {'others q.':>9} {'fill':>5} {'strata':>6} {'bands':>5} {'s/split':>7} {'detect s':>8} {'tiled':>5}")
    print(head)
    rows = []
    shipped = ("shipped (YOLOX-Nano)" if args.tiles_when is None and args.tiles is None else "whole image only"
               if args.tiles == 0 else f"tiles {args.tiles or 'as shipped'}, {args.tiles_when or 'shipped'}")
    settings = [(shipped, True)] + [("off (embeddings only)", False)] * (not args.no_baseline)
    for label, detector in settings:
        for target in args.targets.split(","):
            res, start = [], time.perf_counter()
            for seed in range(args.splits):
                res.append(run_split(work, args.coco128, labels, target, seed, detector, cache, args.tiles_when, args.tiles))
            per = (time.perf_counter() - start) / args.splits
            chosen = np.mean([r["chosen"] for r in res])
            bad = [r["contaminated"] for r in res]
            rec = [r["hidden_quarantined"] / max(1, r["hidden"]) for r in res]
            det = np.mean([r["hidden_by_detector"] / max(1, r["hidden"]) for r in res])
            oth = np.mean([r["others_quarantined"] / max(1, r["others"]) for r in res])
            fill = np.mean([r["fill"] / max(1, r["chosen"]) for r in res])
            strata = np.mean([r["strata"] for r in res])
            bands = np.mean([len(r["bands"]) for r in res])
            photos = res[0]["photos"]
            det_s = sum(r["detect_s"] for r in res)  # the images a split had not seen in the cache (the first pays)
            ran, n_tiled = sum(r["detect_ran"] for r in res), sum(r["detect_tiled"] for r in res)
            tiled = f"{n_tiled / ran:5.0%}" if ran else f"{'-':>5}"
            row = (f"{label:<22} {target:>6} {photos:>6} {chosen:6.1f} {sum(bad):11d} {max(bad):5d} "
                   f"{np.mean(rec):6.2f} {min(rec):5.2f} {det:6.2f} {oth:9.1%} {fill:5.0%} {strata:6.1f} {bands:5.1f} {per:7.1f} {det_s:8.1f} {tiled}")
            print(row, flush=True)
            rows.append(dict(detector=detector, target=target, results=res))
            warn = sorted({w for r in res for w in r["warnings"]})
            for w in warn:
                print(f"    warning: {w}")
    print("photos: target photos in COCO128 (half positives, half hidden); with target: chosen negatives that contain "
          "the target, summed over the splits (worst split); recall: hidden target photos quarantined (mean, worst); "
          "by det: by detected_target; others q.: share of photos without the target quarantined; fill: share of the "
          "negatives from the shortfall fill; strata, bands: distinct strata and bands of the quota picks (mean); "
          "detect s: seconds the detect step ran its model (uncached images only; 0 = all cached); tiled: share of "
          "those images the tiles ran on")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
