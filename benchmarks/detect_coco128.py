"""Detection speed and target-absence recall on COCO128: whole image vs whole image + tiles.

    python -m benchmarks.detect_coco128 [--coco128 DIR] [--targets car,dog,person] [--splits 10] [--tiles 2]

For each setting the builtin YOLOX-Nano runs once over the 128 photos
(decode + letterbox + model + NMS, the detect step's own code, images/s).
Then for each target and split: a seeded half of the photos that contain the
target are the positives (they calibrate the threshold with
``detect.calibration``'s defaults), the other half are hidden in the pool;
printed are the mean threshold, the share of hidden target photos at or above
the threshold (quarantine recall; mean and worst split) and the share of the
photos without the target at or above it ("others"). Speed: images/s by the
wall clock and CPU seconds per image (all ONNX Runtime threads together: on a
busy machine the wall clock says more about the neighbours). The last rows
run the tiles only where the whole image does not already show the target at
or above the calibration ceiling (``tiles_when: unsure``), one pass per
target, with the share of photos the tiles ran on ("tiled").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "coco128-train"


def detect_all(paths: list[Path], tiles: int, overlap: float, min_score: float = 0.05, unsure_of: str | None = None,
               ceiling: float = 0.1) -> tuple[dict[str, dict[str, float]], float, float, float]:
    """Per photo stem: class -> max score; images/s (wall clock); CPU seconds per image (all threads); share of
    the photos the tiles ran on. ``unsure_of``: tiles only where the whole image shows this target under ``ceiling``."""
    from negset.core.config import DetectSource
    from negset.core.imageio import load_rgb
    from negset.detect.names import normalise
    from negset.detect.onnx_model import MODELS, OnnxDetector

    det = OnnxDetector(DetectSource(model="builtin:yolox_nano", tiles=tiles, tile_overlap=overlap, min_score=min_score,
                                    tiles_when="unsure" if unsure_of else "always"), MODELS)
    if unsure_of:
        det.tile_only_when_unsure({unsure_of}, ceiling, normalise)
    side = det.decode_side()
    out = {}
    start, cpu = time.perf_counter(), time.process_time()
    for p in paths:
        found = det.detect(load_rgb(p, reduce_to=side))
        best: dict[str, float] = {}
        for c, s in zip(found["cls"], found["score"]):
            best[det.names[c]] = max(best.get(det.names[c], 0.0), float(s))
        out[p.stem] = best
    return (out, len(paths) / (time.perf_counter() - start), (time.process_time() - cpu) / len(paths),
            det.tiled / len(paths))


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
    ap.add_argument("--no-whole", action="store_true", help="only the tiled settings")
    ap.add_argument("--no-unsure", action="store_true", help="leave out the tiles_when: unsure setting")
    args = ap.parse_args(argv)
    if not (args.coco128 / "images").is_dir():
        raise SystemExit(f"{args.coco128}: no COCO128 here (pass --coco128 DIR)")
    paths = sorted((args.coco128 / "images").glob("*.jpg"))
    found = truth(args.coco128)
    labels = {p.stem: found.get(p.stem, set()) for p in paths}  # no label file: no object
    settings = [("whole image", 0)] * (not args.no_whole) + [
        (f"whole + {args.tiles}x{args.tiles} tiles ({args.overlap:.0%} overlap)", args.tiles)]
    print(f"YOLOX-Nano (builtin) on {len(paths)} COCO128 photos; {args.splits} splits; min_score {args.min_score}; "
          f"threshold: recall {args.recall} of the positives, clipped to [{args.floor}, {args.ceiling}]")
    print(f"{'setting':<36} {'images/s':>8} {'cpu s':>6} {'tiled':>5} {'target':>7} {'photos':>6} {'thresh':>6} {'recall':>6} "
          f"{'min':>5} {'others':>6}")

    def row(name, speed, cpu, tiled, target, scores):
        r = split_scores(scores, labels, target, args.splits, args.floor, args.recall, args.ceiling)
        print(f"{name:<36} {speed:8.1f} {cpu:6.3f} {tiled:5.0%} {target:>7} {r['photos']:6d} {r['threshold']:6.3f} "
              f"{r['recall']:6.2f} {r['min_recall']:5.2f} {r['others_flagged']:6.2f}", flush=True)

    for name, tiles in settings:
        scores, speed, cpu, tiled = detect_all(paths, tiles, args.overlap, args.min_score)
        for target in args.targets.split(","):
            row(name, speed, cpu, tiled, target, scores)
    if args.tiles and not args.no_unsure:  # tiles only where the whole image is not already sure of the target
        for target in args.targets.split(","):
            scores, speed, cpu, tiled = detect_all(paths, args.tiles, args.overlap, args.min_score, target, args.ceiling)
            row(f"... tiles when unsure (ceiling {args.ceiling})", speed, cpu, tiled, target, scores)


if __name__ == "__main__":
    main()
