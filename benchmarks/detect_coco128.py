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
busy machine the wall clock says more about the neighbours).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "coco128-train"


def detect_all(paths: list[Path], tiles: int, overlap: float, min_score: float = 0.05) -> tuple[dict[str, dict[str, float]], float, float]:
    """Per photo stem: class -> max score; images/s (wall clock); CPU seconds per image (all threads)."""
    from negset.core.config import DetectSource
    from negset.core.imageio import load_rgb
    from negset.detect.onnx_model import MODELS, OnnxDetector

    det = OnnxDetector(DetectSource(model="builtin:yolox_nano", tiles=tiles, tile_overlap=overlap, min_score=min_score), MODELS)
    side = det.decode_side()
    out = {}
    start, cpu = time.perf_counter(), time.process_time()
    for p in paths:
        found = det.detect(load_rgb(p, reduce_to=side))
        best: dict[str, float] = {}
        for c, s in zip(found["cls"], found["score"]):
            best[det.names[c]] = max(best.get(det.names[c], 0.0), float(s))
        out[p.stem] = best
    return out, len(paths) / (time.perf_counter() - start), (time.process_time() - cpu) / len(paths)


def truth(folder: Path) -> dict[str, set[str]]:
    names = (folder / "classes.txt").read_text().split("\n")
    out = {}
    for txt in sorted((folder / "labels").glob("*.txt")):
        out[txt.stem] = {names[int(line.split()[0])] for line in txt.read_text().splitlines() if line.strip()}
    return out


def split_scores(scores, labels, target: str, splits: int, floor: float = 0.05) -> dict:
    from negset.core.config import Calibration
    from negset.detect.calibrate import threshold_from_positives

    cfg = Calibration(floor=floor)
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
    ap.add_argument("--no-whole", action="store_true", help="only the tiled setting")
    args = ap.parse_args(argv)
    if not (args.coco128 / "images").is_dir():
        raise SystemExit(f"{args.coco128}: no COCO128 here (pass --coco128 DIR)")
    paths = sorted((args.coco128 / "images").glob("*.jpg"))
    found = truth(args.coco128)
    labels = {p.stem: found.get(p.stem, set()) for p in paths}  # no label file: no object
    settings = [("whole image", 0)] * (not args.no_whole) + [
        (f"whole + {args.tiles}x{args.tiles} tiles ({args.overlap:.0%} overlap)", args.tiles)]
    print(f"YOLOX-Nano (builtin) on {len(paths)} COCO128 photos; {args.splits} splits; min_score {args.min_score}; "
          f"threshold: recall 0.95 of the positives, clipped to [{args.floor}, 0.5]")
    print(f"{'setting':<36} {'images/s':>8} {'cpu s':>6} {'target':>7} {'photos':>6} {'thresh':>6} {'recall':>6} {'min':>5} {'others':>6}")
    for name, tiles in settings:
        scores, speed, cpu = detect_all(paths, tiles, args.overlap, args.min_score)
        for target in args.targets.split(","):
            r = split_scores(scores, labels, target, args.splits, args.floor)
            print(f"{name:<36} {speed:8.1f} {cpu:6.3f} {target:>7} {r['photos']:6d} {r['threshold']:6.3f} {r['recall']:6.2f} "
                  f"{r['min_recall']:5.2f} {r['others_flagged']:6.2f}")


if __name__ == "__main__":
    main()
