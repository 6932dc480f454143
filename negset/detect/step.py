"""Step 3, detect: object detections per image, the target threshold, and each image's evidence.

Sources (``detect.sources``): ONNX detectors (``negset.detect.onnx_model``;
``builtin:yolox_nano`` ships with negset) and the user's own predictions
(``negset.detect.predictions``), each kept under its source name. Every
ingested image is looked at, positives too: their target scores calibrate the
threshold (``negset.detect.calibrate``). Writes, under ``data/detect/``:

- ``detections.parquet``: sha256, source, class, score, x0 y0 x1 y1 (image
  pixels, upright), tile (0 = whole image, 1.. = the tile that found it);
- ``evidence.parquet``: one row per image (``negset.detect.store`` documents it);
- ``calibration.json``: per source the threshold and how it was found;
- ``rejected.parquet``: images a detector could not decode.

Detector results are cached by image sha256 and model hash (model bytes and
every setting) under ``data/cache/detect/``, written as work goes on, so a
killed run resumes and a refresh looks only at new images.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa

from negset.core import atomic, catalog
from negset.core import parquet as pq
from negset.core.cache import fields, row_cache
from negset.core.config import DetectSource, Params
from negset.core.imageio import load_rgb
from negset.core.layout import Layout
from negset.core.progress import track
from negset.detect.calibrate import image_evidence, threshold_from_positives
from negset.detect.found import Found
from negset.detect.names import normalise
from negset.detect.predictions import read_predictions

log = logging.getLogger("negset.detect")

DETECTIONS_SCHEMA = pa.schema(
    [("sha256", pa.string()), ("source", pa.string()), ("class", pa.string()), ("score", pa.float32())]
    + [(k, pa.float32()) for k in ("x0", "y0", "x1", "y1")]
    + [("tile", pa.int16())]
)
_BOX = pa.list_(pa.float32(), 4)
EVIDENCE_SCHEMA = pa.schema(
    [("sha256", pa.string()), ("role", pa.string()), ("labelled", pa.bool_()),
     ("target_score", pa.float32()), ("target_source", pa.string()), ("target_class", pa.string()),
     ("target_box", _BOX), ("target_threshold", pa.float32()), ("detected_target", pa.bool_()),
     ("confuser_score", pa.float32()), ("confuser_class", pa.string()), ("confuser_source", pa.string()),
     ("confuser_box", _BOX)]
)
REJECTED_SCHEMA = pa.schema([(k, pa.string()) for k in ("uri", "sha256", "step", "rule", "reason")])
_CACHE_KEYS = {"cls", "score", "box", "tile"}


def target_classes(params: Params) -> set[str]:
    """Normalised class names that mean the target: the target names and what ``target_map`` maps to them."""
    targets = {normalise(t) for t in params.ingest.target}
    mapped = {normalise(k) for k, v in params.detect.target_map.items() if normalise(v) in targets}
    return targets | mapped


def confuser_classes(configured: list[str] | None, targets: set[str], known: set[str] | None) -> set[str]:
    """Normalised detector classes whose detections count as confuser evidence.

    ``detect.confusers`` when set ([] = none); else (null) the COCO default confusers of every target class
    (:func:`negset.tools.confusers.default_confusers`) the detector knows (``known``: its class names; None = any).
    """
    from negset.tools.confusers import default_confusers

    if configured is not None:
        return {normalise(c) for c in configured} - targets
    out = set().union(*[default_confusers(t) or [] for t in targets]) - targets
    return {normalise(c) for c in out} & known if known is not None else {normalise(c) for c in out}


def _detector_cache(det, layout: Layout):
    return row_cache(layout.data / "cache" / "detect" / det.key())


def _detect_one(det, layout: Layout, im: dict, side: int) -> tuple[dict | None, dict | None]:
    """(cache row, None) for one image, or (None, rejected row) when it cannot be decoded."""
    try:
        picture = load_rgb(layout.object_path(im["sha256"]), reduce_to=side)
    except Exception as exc:  # decodable at ingest is not always decodable in full (truncated files)
        return None, dict(uri=im["uri"], sha256=im["sha256"], step="detect", rule="undecodable",
                          reason=f"{type(exc).__name__}: {str(exc)[:200]}")
    found = det.detect(picture, (im["width"], im["height"]))
    return dict(cls=found["cls"].tolist(), score=found["score"].round(5).tolist(),
                box=found["box"].round(2).reshape(-1).tolist(), tile=found["tile"].tolist()), None


def _fill_cache(det, layout: Layout, todo: list[dict], every: int, cache=None) -> list[dict]:
    """Run the detector on ``todo`` into its cache (written every ``every`` images); the images it could not decode.

    With ``det.workers`` > 1 that many images run at once (decode, ONNX Runtime and NumPy release the GIL),
    a block of images at a time, results kept in ``todo``'s order.
    """
    from concurrent.futures import ThreadPoolExecutor

    cache = cache if cache is not None else _detector_cache(det, layout)  # the caller's, read already: one read
    rejected, pending = [], {}
    side = det.decode_side()
    block = max(1, min(every, 64 * det.workers))
    with ThreadPoolExecutor(det.workers) as pool:
        def results():
            for start in range(0, len(todo), block):
                part = todo[start : start + block]
                if det.workers > 1:
                    yield from zip(part, pool.map(lambda im: _detect_one(det, layout, im, side), part))
                else:
                    yield from ((im, _detect_one(det, layout, im, side)) for im in part)

        for im, (row, bad) in track(results(), len(todo), f"detect {det.src.label}"):
            if bad is not None:
                rejected.append(bad)
                continue
            pending[im["sha256"]] = row
            if len(pending) >= every:
                cache.add(pending)
                pending = {}
    cache.add(pending)
    return rejected


def _run_detector(det, layout: Layout, images: list[dict], every: int, compute=None) -> tuple[Found, list[dict], dict]:
    """Detections of one ONNX detector on every image (cached), rejected images, and timing.

    ``compute(source label, sha256s) -> rejected rows`` may run the new images elsewhere (``flows/distributed.py``)
    as long as it fills the same cache; what it leaves undone runs here.
    """
    cache = _detector_cache(det, layout)
    todo = [im for im in images if fields(cache, im["sha256"], _CACHE_KEYS) is None]
    log.info("detect %s: %d images, %d cached, %d to run (%s layout, %d px, %d window(s) per image)",
             det.src.label, len(images), len(images) - len(todo), len(todo), det.layout, det.size, det.windows_per_image)
    start, cpu, cached = time.monotonic(), time.process_time(), len(images) - len(todo)
    rejected, elsewhere = [], 0
    if todo and compute is not None:
        rejected = compute(det.src.label, [im["sha256"] for im in todo])
        cache, failed = _detector_cache(det, layout), {r["sha256"] for r in rejected}
        left = [im for im in todo if im["sha256"] not in failed and fields(cache, im["sha256"], _CACHE_KEYS) is None]
        elsewhere = len(todo) - len(left) - len(rejected)
        todo = left
    # every part is read once: the new rows join the cache in memory as they are written (a distributed run's
    # workers wrote parts elsewhere, so the cache was read again after them)
    here = _fill_cache(det, layout, todo, every, cache)
    cache.compact()  # the next run reads one part, not one per checkpoint
    rejected += here
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu
    ran = len(todo) - len(here) + elsewhere
    # cpu_seconds: every thread of this process (decode, ONNX Runtime): steadier than the wall clock on a busy machine;
    # tiled, tile_passes: images the tiles ran on and tiles run in this process
    timing = dict(images=len(images), cached=cached, ran=ran, seconds=round(elapsed, 2),
                  cpu_seconds=round(cpu, 2),
                  images_per_s=round(ran / elapsed, 2) if ran and elapsed > 0 else None,
                  tiled=det.tiled if det.src.tiles else 0, tile_passes=det.tile_passes if det.src.tiles else 0,
                  **({"distributed": elsewhere} if compute is not None else {}))
    hits = ((im["sha256"], fields(cache, im["sha256"], _CACHE_KEYS)) for im in images)
    return Found.from_cached(det.names, [(sha, hit) for sha, hit in hits if hit is not None]), rejected, timing


def _calibrate(src: DetectSource, found: Found, images: list[dict], targets: set[str], known: list[str] | None,
               params: Params) -> tuple[dict, dict[str, tuple]]:
    """The source's calibration record and its strongest target detection per image."""
    strongest = found.strongest(targets)
    classes = {normalise(c) for c in (known if known is not None else found.class_names())}
    knows = bool(classes & targets)
    covered = found.images() if src.predictions else None  # a detector looks at every image
    positives = [im["sha256"] for im in images if im["role"] == "positive" and (covered is None or im["sha256"] in covered)]
    record = threshold_from_positives([strongest[s][0] if s in strongest else 0.0 for s in positives], params.detect.calibration)
    if not knows:
        record.update(threshold=None, method="the source has no target class")
    kind = "predictions" if src.predictions else ("builtin" if src.model.startswith("builtin:") else "model")
    record.update(knows_target=knows, positives_total=sum(im["role"] == "positive" for im in images),
                  target_classes=sorted(classes & targets), kind=kind)
    return record, strongest


def _evidence_rows(images, per_source_target, per_source_confuser, thresholds) -> list[dict]:
    rows = []
    for im in images:
        sha = im["sha256"]
        per = {s: dict(target=per_source_target[s].get(sha), confuser=per_source_confuser[s].get(sha)) for s in per_source_target}
        rows.append(dict(sha256=sha, role=im["role"], labelled=im["labelled"], **image_evidence(per, thresholds)))
    return rows


def _default_coco(params: Params, layout: Layout) -> Path | None:
    pos = params.ingest.positives
    return (layout.root / pos.path).resolve() if pos.format == "coco" else None


def _images(layout: Layout) -> list[dict]:
    return pq.read_table(layout.ingest / "images.parquet",
                         columns=["sha256", "uri", "role", "labelled", "width", "height"]).to_pylist()


def _detector(src: DetectSource, params: Params, layout: Layout):
    """The source's ONNX detector, its tiles planned for the target (before the cache key is taken)."""
    from negset.detect.onnx_model import OnnxDetector

    det = OnnxDetector(src, layout.root)
    cal = params.detect.calibration
    det.plan_tiles(target_classes(params), cal.threshold if cal.threshold is not None else cal.ceiling, normalise)
    if det.weak and not det.weak[0]:
        log.info("detect %s: tiles_when weak, and no target class among the model's classes: whole image only", src.label)
    return det


def detect_shard(params: Params, layout: Layout, label: str, shas: list[str]) -> list[dict]:
    """Run the detector source ``label`` on a shard of images into the shared cache (a distributed worker's unit of
    work); the rejected rows."""
    src = next(s for s in params.detect.sources if s.label == label and s.model)
    wanted = set(shas)
    det = _detector(src, params, layout)
    cache = _detector_cache(det, layout)
    todo = [im for im in _images(layout) if im["sha256"] in wanted and fields(cache, im["sha256"], _CACHE_KEYS) is None]
    return _fill_cache(det, layout, todo, params.detect.checkpoint_every)


def run(params: Params, layout: Layout, compute=None) -> dict:
    """Detect on every ingested image, calibrate each source, write detections, evidence and calibration.

    ``compute(source label, sha256s) -> rejected rows`` may run a detector's new images elsewhere (see
    ``flows/distributed.py``), filling the same cache.
    """
    cfg = params.detect
    images = _images(layout)
    targets = target_classes(params)
    # read and check every source before any long work: a mistake costs seconds, not a detector run
    predicted = {s.label: Found.from_rows(read_predictions(s, layout.root, _default_coco(params, layout), images))
                 for s in cfg.sources if s.predictions}
    detectors = {s.label: _detector(s, params, layout) for s in cfg.sources if s.model}
    found: dict[str, Found] = {}
    rejected: list[dict] = []
    timing: dict[str, dict] = {}
    for src in cfg.sources:
        if src.predictions:
            found[src.label] = predicted[src.label]
        else:
            found[src.label], bad, timing[src.label] = _run_detector(detectors[src.label], layout, images,
                                                                     cfg.checkpoint_every, compute)
            seen = {x["sha256"] for x in rejected}
            rejected += [r for r in bad if r["sha256"] not in seen]
    known = {normalise(c) for det in detectors.values() for c in (det.names or [])} | {
        normalise(c) for src in cfg.sources if src.predictions for c in found[src.label].class_names()}
    confusers = confuser_classes(cfg.confusers, targets, known)
    calibration, strongest_target, strongest_confuser = {}, {}, {}
    for src in cfg.sources:
        known = detectors[src.label].names if src.label in detectors else None
        calibration[src.label], strongest_target[src.label] = _calibrate(src, found[src.label], images, targets, known, params)
        strongest_confuser[src.label] = found[src.label].strongest(confusers)
        if src.label in timing:
            calibration[src.label]["speed"] = timing[src.label]
    thresholds = {s: c["threshold"] for s, c in calibration.items()}
    evidence = _evidence_rows(images, strongest_target, strongest_confuser, thresholds)

    # sorted by image, source, then score high to low (a stable sort: equal scores keep the source's order)
    detections = pa.concat_tables([f.table(name) for name, f in found.items()] or [Found.from_rows([]).table("")])
    detections = detections.sort_by([("sha256", "ascending"), ("source", "ascending"), ("score", "descending")])
    atomic.write_parquet(detections.cast(DETECTIONS_SCHEMA), layout.detect / "detections.parquet")
    atomic.write_parquet(pa.Table.from_pylist(evidence, schema=EVIDENCE_SCHEMA), layout.detect / "evidence.parquet")
    atomic.write_parquet(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), layout.detect / "rejected.parquet")
    record = dict(target_classes=sorted(targets), confusers=sorted(confusers), sources=calibration)
    atomic.write_json(layout.detect / "calibration.json", record)
    with catalog.connect(layout) as con:
        catalog.load(con, layout, "detections", "evidence")

    candidates = [e for e in evidence if e["role"] == "candidate"]
    for name, c in calibration.items():
        if c["threshold"] is None:
            log.warning("detect %s: no target class among its classes (%s): no target evidence from it", name, ", ".join(sorted(targets)))
            continue
        found_pos = f"{c['positives_found']}/{c['positives']}" if c["positives"] else "no positive covered"
        log.info("detect %s: target threshold %.3f (%s; wanted recall %.2f of the positives, found %s)",
                 name, c["threshold"], c["method"], c["recall_wanted"], found_pos)
        if c["recall_at_threshold"] is not None and c["recall_at_threshold"] < c["recall_wanted"]:
            log.warning("detect %s: finds the target in only %.0f%% of the positives at the threshold %.3f",
                        name, 100 * c["recall_at_threshold"], c["threshold"])
    summary = dict(
        images=len(images), detections=detections.num_rows, rejected=len(rejected),
        sources={n: dict(detections=len(r), threshold=calibration[n]["threshold"], method=calibration[n]["method"],
                         recall_at_threshold=calibration[n]["recall_at_threshold"], **({"speed": timing[n]} if n in timing else {}))
                 for n, r in found.items()},
        candidates_with_target=sum(e["detected_target"] for e in candidates),
        candidates=len(candidates),
        detected_now=sum(t["ran"] for t in timing.values()),
    )
    log.info("detect: %d images, %d detections from %d source(s); %d of %d candidates show the target at the threshold",
             len(images), detections.num_rows, len(cfg.sources), summary["candidates_with_target"], len(candidates))
    return summary
