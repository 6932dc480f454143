"""Detection speed and target-absence recall on COCO128: whole image vs tiles always / where unsure / where weak.

    python -m benchmarks.detect_coco128 [--coco128 DIR] [--targets car,dog,person] [--splits 10] [--tiles 2]
        [--settings whole,always,unsure,weak] [--probe 0.01] [--canvas square|fit|both]

For each setting the builtin YOLOX-Nano runs over the 128 photos (decode +
letterbox + model + NMS, the detect step's own code); ``unsure`` and ``weak``
decide the tiles per target, so they run once per target. Then for each
target and split: a seeded half of the photos that contain the target are the
positives (they calibrate the threshold with ``detect.calibration``'s
defaults), the other half are hidden in the pool; printed are the mean
threshold, the share of hidden target photos at or above the threshold
(quarantine recall; mean and worst split) and the share of the photos without
the target at or above it ("others"). Speed: images/s by the wall clock and
CPU seconds per image (all ONNX Runtime threads together: on a busy machine
the wall clock says more about the neighbours), its ratio to the whole-image
run of the same process, the share of photos the tiles ran on, tile passes
per photo, and the CPU seconds and tile passes on the photos without the
target (what a real pool mostly holds). Settings: ``whole`` (no tiles),
``always``, ``unsure`` (tiles where the whole image does not show the target
at or above the calibration ceiling), ``weak`` (the default: as unsure, and
only where the whole image has a raw target score at or above ``--probe``,
only the tiles holding it), ``weak320`` / ``weak256`` / ``always320`` (tiles
at a smaller input). ``--canvas``: the detector's canvas (``square``, the
default: the model's square input; ``fit``: each side only as large as the
letterboxed image needs, rounded up to 32; ``both``: each setting on both).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "coco128-train"


def detect_all(paths: list[Path], tiles: int, overlap: float, min_score: float = 0.05, when: str = "always",
               target: str | None = None, ceiling: float = 0.1, probe: float = 0.01,
               tile_size: int | None = None, baseline: bool = True, canvas: str = "square") -> tuple[dict[str, dict[str, float]], float, float, float, float, dict]:
    """Per photo stem: class -> max score; images/s (wall clock); CPU seconds per image (all threads); share of
    the photos the tiles ran on; tiles run per photo; per photo stem (CPU seconds, tiles, CPU seconds of the
    whole-image baseline). ``when`` unsure / weak: the tiles decided for ``target``. ``baseline``: before each
    photo the whole-image detector runs on it too (timed apart), so the ratio compares the same moments of a
    shared machine."""
    from negset.core.config import DetectSource
    from negset.core.imageio import load_rgb
    from negset.detect.names import normalise
    from negset.detect.onnx_model import MODELS, OnnxDetector

    det = OnnxDetector(DetectSource(model="builtin:yolox_nano", tiles=tiles, tile_overlap=overlap, min_score=min_score,
                                    tiles_when=when, tile_probe=probe, tile_size=tile_size, canvas=canvas), MODELS)
    if target:
        det.plan_tiles({target}, ceiling, normalise)
    side = det.decode_side()
    whole = OnnxDetector(DetectSource(model="builtin:yolox_nano", min_score=min_score, canvas=canvas), MODELS) if baseline else None
    out, each = {}, {}
    wall, cpu = 0.0, 0.0
    for p in paths:
        base = 0.0
        if whole is not None:
            base = time.process_time()
            whole.detect(load_rgb(p, reduce_to=whole.decode_side()))
            base = time.process_time() - base
        one, passes, tick = time.process_time(), det.tile_passes, time.perf_counter()
        found = det.detect(load_rgb(p, reduce_to=side))
        each[p.stem] = (time.process_time() - one, det.tile_passes - passes, base)
        wall, cpu = wall + time.perf_counter() - tick, cpu + each[p.stem][0]
        best: dict[str, float] = {}
        for c, s in zip(found["cls"], found["score"]):
            best[det.names[c]] = max(best.get(det.names[c], 0.0), float(s))
        out[p.stem] = best
    return out, len(paths) / wall, cpu / len(paths), det.tiled / len(paths), det.tile_passes / len(paths), each


def truth(folder: Path) -> dict[str, set[str]]:
    names = (folder / "classes.txt").read_text().split("\n")
    out = {}
    for txt in sorted((folder / "labels").glob("*.txt")):
        out[txt.stem] = {names[int(line.split()[0])] for line in txt.read_text().splitlines() if line.strip()}
    return out


def split_scores(scores, labels, target: str, splits: int, floor: float = 0.05, recall: float = 1.0,
                 ceiling: float = 0.1) -> dict:
    from negset.core.config import Calibration
    from negset.detect.calibrate import threshold_from_positives

    cfg = Calibration(floor=floor, recall=recall, ceiling=ceiling)
    with_target = sorted(s for s, c in labels.items() if target in c)
    without = [s for s, c in labels.items() if target not in c]
    recall, flagged, thresholds = [], [], []
    for seed in range(splits):
        rng = np.random.default_rng(seed)
        order = rng.permutation(with_target)
        pos, hidden = order[: len(order) // 2], order[len(order) // 2 :]
        t = threshold_from_positives([scores[s].get(target, 0.0) for s in pos], cfg)["threshold"]
        thresholds.append(t)
        recall.append(np.mean([scores[s].get(target, 0.0) >= t for s in hidden]))
        flagged.append(np.mean([scores[s].get(target, 0.0) >= t for s in without]))
    return dict(photos=len(with_target), threshold=float(np.mean(thresholds)), recall=float(np.mean(recall)),
                min_recall=float(np.min(recall)), others_flagged=float(np.mean(flagged)))


SETTINGS = {  # name -> (label, tiles_when, tile_size)
    "whole": ("whole image", None, None),
    "always": ("tiles always", "always", None),
    "unsure": ("tiles when unsure", "unsure", None),
    "weak": ("tiles where weak", "weak", None),
    "weak320": ("tiles where weak, 320 px", "weak", 320),
    "weak256": ("tiles where weak, 256 px", "weak", 256),
    "always320": ("tiles always, 320 px", "always", 320),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco128", type=Path, default=DEFAULT)
    ap.add_argument("--targets", default="car,dog,person")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--tiles", type=int, default=2)
    ap.add_argument("--overlap", type=float, default=0.4)
    ap.add_argument("--min-score", type=float, default=0.05, help="detections kept (the source's min_score)")
    ap.add_argument("--floor", type=float, default=0.05, help="detect.calibration.floor")
    ap.add_argument("--ceiling", type=float, default=0.1, help="detect.calibration.ceiling")
    ap.add_argument("--recall", type=float, default=1.0, help="detect.calibration.recall")
    ap.add_argument("--probe", type=float, default=0.01, help="tile_probe of the 'weak' settings")
    ap.add_argument("--settings", default="whole,always,unsure,weak",
                    help=f"comma-separated, of: {', '.join(SETTINGS)}")
    ap.add_argument("--canvas", default="square", choices=["square", "fit", "both"],
                    help="the detector's canvas (detect.sources[].canvas; both: each setting on square, then fit)")
    args = ap.parse_args(argv)
    if not (args.coco128 / "images").is_dir():
        raise SystemExit(f"{args.coco128}: no COCO128 here (pass --coco128 DIR)")
    paths = sorted((args.coco128 / "images").glob("*.jpg"))
    found = truth(args.coco128)
    labels = {p.stem: found.get(p.stem, set()) for p in paths}  # no label file: no object
    targets = args.targets.split(",")
    print(f"YOLOX-Nano (builtin) on {len(paths)} COCO128 photos; {args.splits} splits; min_score {args.min_score}; "
          f"threshold: recall {args.recall} of the positives, clipped to [{args.floor}, {args.ceiling}]; "
          f"{args.tiles}x{args.tiles} tiles, {args.overlap:.0%} overlap; weak: tile_probe {args.probe}")
    print(f"{'':<26} {'all photos':^35} {'no target':^20}")
    print(f"{'setting':<26} {'images/s':>8} {'cpu s':>6} {'x whole':>7} {'tiled':>5} {'tiles':>5} {'cpu s':>6} {'x whole':>7} "
          f"{'tiles':>5} {'target':>7} {'photos':>6} {'thresh':>6} {'recall':>6} {'min':>5} {'others':>6}")

    def row(name, speed, cpu, tiled, passes, target, scores, each):
        r = split_scores(scores, labels, target, args.splits, args.floor, args.recall, args.ceiling)
        base = sum(b for _, _, b in each.values())
        ratio = f"{sum(c for c, _, _ in each.values()) / base:7.2f}" if base else f"{1.0:7.2f}"
        pool = [each[k] for k in each if target not in labels[k]]  # a real pool: mostly photos without the target
        pool_cpu, pool_tiles = np.mean([c for c, _, _ in pool]), np.mean([t for _, t, _ in pool])
        pool_base = sum(b for _, _, b in pool)
        pool_ratio = sum(c for c, _, _ in pool) / pool_base if pool_base else 1.0
        print(f"{name:<26} {speed:8.1f} {cpu:6.3f} {ratio} {tiled:5.0%} {passes:5.2f} {pool_cpu:6.3f} {pool_ratio:7.2f} {pool_tiles:5.2f} "
              f"{target:>7} {r['photos']:6d} {r['threshold']:6.3f} {r['recall']:6.2f} {r['min_recall']:5.2f} "
              f"{r['others_flagged']:6.2f}", flush=True)

    canvases = ["square", "fit"] if args.canvas == "both" else [args.canvas]
    for key in args.settings.split(","):
        for canvas in canvases:
            label, when, size = SETTINGS[key]
            label += ", fit canvas" if canvas == "fit" else ""
            tiles = args.tiles if when else 0
            if when in (None, "always"):  # the same detections for every target: one run
                scores, speed, cpu, tiled, passes, each = detect_all(
                    paths, tiles, args.overlap, args.min_score, when or "always", tile_size=size, baseline=when is not None,
                    canvas=canvas)
                for target in targets:
                    row(label, speed, cpu, tiled, passes, target, scores, each)
            else:  # the tiles depend on the target: one run per target
                for target in targets:
                    scores, speed, cpu, tiled, passes, each = detect_all(paths, tiles, args.overlap, args.min_score, when,
                                                                         target, args.ceiling, args.probe, size,
                                                                         canvas=canvas)
                    row(label, speed, cpu, tiled, passes, target, scores, each)
    print("cpu s: CPU seconds per photo (decode + model + NMS, all threads); x whole: against the whole-image detector "
          "run on each photo just before (the same moments of a shared machine); tiled: photos the tiles ran on; tiles: tile passes per photo; no target: the "
          "same on the photos without the target (what a real pool mostly holds); recall: hidden target "
          "photos at or over the threshold (mean, min over the splits); others: photos without the target at or over it")


if __name__ == "__main__":
    main()
