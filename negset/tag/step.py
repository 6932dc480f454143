"""Step 3, tag: lighting, background and occlusion tags for every image.

- lighting, from pixel statistics of the luminance (median, spread, clipped
  shadows and highlights) and, when a JPEG has it, the camera's EXIF (exposure
  value, night-time hour): dark / dim / normal / bright / high-contrast
  (thresholds in ``params.yaml`` ``tag.lighting``); plus a colour temperature
  (warm / neutral / cool) from the red/blue balance;
- background, clusters of the embeddings (k-means, seeded, stable across
  refreshes), each named by the ImageNet classes its members look most like;
  or, when the source has COCO panoptic labels, indoor/outdoor and the
  dominant stuff class (negset/tagsources.py);
- occlusion, from box geometry when labels exist (or from a configured
  detector's boxes, negset/tag/detector.py, else the detect step's boxes,
  source ``detector``): the share of objects cut by the frame or covered by
  another box: none / partial / heavy, and ``unknown`` for unlabelled images
  no detector looked at.
Each tag is stored with its source (``computed``, ``annotation`` or ``user``;
user tags win over annotations, annotations over computed values) and a
confidence in [0, 1] (columns ``TAG_source`` and ``TAG_confidence``).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from negset.core import atomic
from negset.core import parquet as pq
from negset.core.cache import fields, row_cache
from negset.core.config import Background, Params
from negset.core.imageio import load_rgb
from negset.core.layout import Layout
from negset.detect import store as detect_store
from negset.embed.store import imagenet_names, read_embeddings
from negset.tag import quality
from negset.tag.occlusion import occlusions
from negset.tag.lighting import _conf, color_temperature, exif_fields, is_night, lighting_tag, luminance_stats

log = logging.getLogger("negset.tags")

def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k-means (vectors are unit length) with k-means++ seeding; deterministic."""
    rng = np.random.default_rng(seed)
    n = len(x)
    k = max(1, min(k, n))
    centers = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = 1.0 - np.max(x @ np.stack(centers).T, axis=1)
        d = np.clip(d, 0, None) ** 2
        total = d.sum()
        idx = int(rng.choice(n, p=d / total)) if total > 0 else int(rng.integers(n))
        centers.append(x[idx])
    c = np.stack(centers)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        new = np.argmax(x @ c.T, axis=1)
        if _ and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                v = members.mean(axis=0)
                c[j] = v / (np.linalg.norm(v) or 1.0)
    # Order clusters by size (then first member) so ids do not depend on seeding order.
    order = sorted(range(k), key=lambda j: (-(labels == j).sum(), int(np.argmax(labels == j))))
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return remap[labels], c[order]


def auto_clusters(n: int) -> int:
    return int(min(12, max(2, round((n / 2) ** 0.5))))


def cluster_names(labels: np.ndarray, top5: list[list[int]], names: list[str]) -> dict[int, str]:
    """Name each cluster by the two ImageNet classes most frequent in its members' top-5."""
    out = {}
    for j in sorted(set(labels.tolist())):
        score: dict[int, float] = defaultdict(float)
        for i in np.flatnonzero(labels == j):
            for rank, cls in enumerate(top5[i] or ()):
                score[int(cls)] += 1.0 / (rank + 1)
        best = sorted(score, key=lambda c: (-score[c], c))[:2]
        words = " / ".join(names[c] for c in best) if best else "cluster"
        out[j] = f"bg{j}: {words}"
    return out


def cached_pixel_stats(layout: Layout, shas: list[str], compute) -> list[dict]:
    """``compute(sha)`` for each image, cached by sha256 in data/cache/pixels (pixels never change)."""
    cache = row_cache(layout.data / "cache" / "pixels")
    if not shas:
        return []
    first = compute(shas[0])  # the current set of fields: a cache from older code is not reused
    keys = set(first)
    results: dict[str, dict] = {shas[0]: first}
    todo = [s for s in shas[1:] if fields(cache, s, keys) is None]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for sha, st in zip(todo, pool.map(compute, todo)):
            results[sha] = st
    cache.add({s: r for s, r in results.items() if fields(cache, s, keys) is None})
    cache.compact()
    log.info("tag: pixel statistics for %d images (%d cached)", len(shas), len(shas) - len(results))
    return [results.get(s) or fields(cache, s, keys) for s in shas]


def background_clusters(vectors, top5, cfg: Background, model_hash: str, previous: Path, scenes: list | None = None):
    """Cluster labels, centres and names; stable across refreshes.

    The centres of the last fit (``previous``, kept by DVC with ``persist``)
    are reused when the model, ``clusters`` and ``seed`` are unchanged and
    at most ``refit_share`` of the images are new since that fit: new images
    join the nearest existing cluster and no cluster is renamed. ``scenes``
    (per vector, from detected objects) names a cluster by the scene most of
    its members show ("bg0: street") instead of ImageNet classes.
    """
    n = len(vectors)
    if previous.exists():
        table = pq.read_table(previous)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        same = (
            meta.get("model_hash") == model_hash
            and meta.get("clusters_param") == str(cfg.clusters)
            and meta.get("seed") == str(cfg.seed)
        )
        fitted_on = int(meta.get("fitted_on", "0") or 0)
        if same and fitted_on and (n - fitted_on) / max(n, 1) <= cfg.refit_share:
            col = table.column("centroid").combine_chunks()
            centers = col.values.to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size).astype(np.float32)
            if centers.shape[1] == vectors.shape[1]:
                labels = np.argmax(vectors @ centers.T, axis=1)
                names = dict(zip(table.column("cluster").to_pylist(), table.column("name").to_pylist()))
                return labels, centers, names, False
    k = cfg.clusters or auto_clusters(n)
    labels, centers = kmeans(vectors, k, cfg.seed)
    names = cluster_names(labels, top5, imagenet_names())
    if scenes is not None:
        from negset.tag.scene import cluster_scene

        for j in names:
            scene = cluster_scene([scenes[i] for i in np.flatnonzero(labels == j)])
            if scene is not None:
                names[j] = f"bg{j}: {scene}"
    flat = pa.array(centers.astype(np.float32).reshape(-1), pa.float32())
    table = pa.table(
        {
            "cluster": pa.array(list(range(len(centers))), pa.int32()),
            "name": pa.array([names[j] for j in range(len(centers))], pa.string()),
            "centroid": pa.FixedSizeListArray.from_arrays(flat, centers.shape[1]),
        }
    ).replace_schema_metadata(
        {"model_hash": model_hash, "clusters_param": str(cfg.clusters), "seed": str(cfg.seed), "fitted_on": str(n)}
    )
    atomic.write_parquet(table, previous)
    return labels, centers, names, True


def choose(*candidates: tuple | None) -> tuple:
    """The first candidate present: callers pass (value, source, confidence) as user, annotation, computed."""
    return next(c for c in candidates if c is not None)


# Long (phases in one function): pixel statistics, scene, clusters, occlusion and user tags fill one row per
# image and the sources' precedence is decided per column at the end; splitting them is the next clean-up.
def run(params: Params, layout: Layout) -> dict:
    from negset.tag import sources as tagsources

    cfg = params.tag
    images = pq.read_table(layout.ingest / "images.parquet").to_pylist()
    boxes_t = pq.read_table(layout.ingest / "labels.parquet").to_pylist()
    boxes: dict[str, list] = defaultdict(list)
    for b in boxes_t:
        if b["crowd"]:
            continue  # a crowd region is not one object: it counts for target presence only
        boxes[b["sha256"]].append((b["x0"], b["y0"], b["x1"], b["y1"]))
    shas, vectors = read_embeddings(layout)
    index = {s: i for i, s in enumerate(shas)}
    images = [im for im in images if im["sha256"] in index]  # images the embed step rejected are gone
    top5 = pq.read_table(layout.embed / "embeddings.parquet", columns=["top5"]).column("top5").to_pylist()

    model_hash = atomic.read_json(layout.embed / "model.json").get("model_hash", "")
    # the scene from detected objects (street, kitchen, ...; indoor / outdoor), when detect has run
    scene_of_image: dict[str, tuple] = {}
    if cfg.background.scene_score is not None and detect_store.has_run(layout):
        from negset.tag.scene import scene_of

        objects = detect_store.object_classes(layout, cfg.background.scene_score)
        scene_of_image = {s: scene_of(*objects[s]) if s in objects else (None, None, 0.0) for s in shas}
    labels, centers, names, refit = background_clusters(
        vectors, top5, cfg.background, model_hash, layout.tags / "centroids.parquet",
        [scene_of_image[s][0] for s in shas] if scene_of_image else None)
    sims = vectors @ centers.T
    if centers.shape[0] > 1:
        two = -np.sort(-sims, axis=1)[:, :2]
        margins = two[:, 0] - two[:, 1]
    else:
        margins = np.full(len(vectors), cfg.background.confidence_margin)

    def stats_for(sha: str) -> dict:
        path = layout.object_path(sha)
        image = load_rgb(path, reduce_to=256)
        grey = quality.Grey.of(image)  # one grey image and histogram for the statistics, the checks and the hash
        return {**luminance_stats(image, grey), **quality.pixel_features(image, grey), **exif_fields(path)}

    stats = cached_pixel_stats(layout, [im["sha256"] for im in images], stats_for)

    # annotations: COCO panoptic stuff labels
    panoptic: dict[str, tagsources.PanopticImage] = {}
    pan_cfg = cfg.background.panoptic
    if pan_cfg is not None:
        entries, _ = tagsources.load_panoptic(layout.root / pan_cfg.json_path)
        matched = tagsources.match_by_file_name(images, set(entries))
        panoptic = {sha: entries[name] for sha, name in matched.items()}
        log.info("tag: panoptic labels for %d of %d images", len(panoptic), len(images))
    user = tagsources.load_user_tags(layout.root / cfg.user_tags, images) if cfg.user_tags else {}

    # a detector for the images without box labels, when configured
    detected: dict[str, tuple] = {}
    det_cfg = cfg.occlusion.detector
    unlabelled = [im["sha256"] for im in images if not im["labelled"]]
    if det_cfg is not None and unlabelled:
        from negset.tag import detector

        model = detector.load_detector(det_cfg, layout.root)
        pics = [load_rgb(layout.object_path(s), reduce_to=det_cfg.max_side) for s in unlabelled]
        detected = dict(zip(unlabelled, detector.detect(model, pics, det_cfg)))
        log.info("tag: detector %s on %d unlabelled images", det_cfg.model, len(unlabelled))
    # else the detect step's boxes (any source), for the images without box labels
    from_detect: dict[str, tuple] = {}
    if cfg.occlusion.detected_score is not None and unlabelled and not detected:
        wanted = set(unlabelled)
        from_detect = {s: v for s, v in detect_store.object_boxes(layout, cfg.occlusion.detected_score).items() if s in wanted}
        log.info("tag: occlusion of %d of %d unlabelled images from the detect step's boxes (score >= %.2f)",
                 len(from_detect), len(unlabelled), cfg.occlusion.detected_score)

    # occlusion from boxes: label boxes for labelled images, else the detector's (all images in one batch)
    def box_source(im) -> list | None:
        sha = im["sha256"]
        if im["labelled"]:
            return boxes.get(sha, [])
        found = detected.get(sha) or from_detect.get(sha)
        return found[0] if found is not None else None

    with_boxes = [(im["sha256"], found) for im in images if (found := box_source(im)) is not None]
    occluded = dict(zip((s for s, _ in with_boxes), occlusions([f for _, f in with_boxes], cfg.occlusion)))

    # one list per column, filled as each image's row is made (10,000 rows of 46 fields read back out of
    # scattered dicts by Table.from_pylist took 0.45 s in the step; column lists 0.04 s); in sha256 order
    columns: dict[str, list] = {}
    for im, st in sorted(zip(images, stats), key=lambda pair: pair[0]["sha256"]):
        sha = im["sha256"]
        i = index[sha]
        cluster = int(labels[i])
        mine = user.get(sha, {})
        # lighting
        light, light_conf, basis = lighting_tag(st, cfg.lighting)
        lighting = choose(
            (mine["lighting"], "user", 1.0) if "lighting" in mine else None,
            (light, "computed", light_conf),
        )
        # background
        pan = panoptic.get(sha)
        pan_tag = tagsources.panoptic_background(pan, pan_cfg.value) if pan is not None else None
        bg_conf = _conf(float(margins[i]), cfg.background.confidence_margin)
        background = choose(
            (mine["background"], "user", 1.0) if "background" in mine else None,
            (pan_tag[0], "annotation", float(pan_tag[1])) if pan_tag else None,
            (names[cluster], "computed", bg_conf),
        )
        # occlusion
        if im["labelled"]:
            occ, share = occluded[sha]
            occ_tag = (occ, "annotation", 1.0)
        elif sha in detected or sha in from_detect:
            found, scores, top = detected[sha] if sha in detected else from_detect[sha]
            occ, share = occluded[sha]
            # detection scores: how sure the detector is of the objects it counted (or of finding none)
            occ_tag = (occ, "computed" if sha in detected else "detector",
                       float(np.mean(scores)) if scores else float(1.0 - top))
        else:
            share = None
            occ_tag = ("unknown", "computed", 0.0)
        occlusion = choose((mine["occlusion"], "user", 1.0) if "occlusion" in mine else None, occ_tag)
        row = dict(
            sha256=sha,
            lighting=lighting[0],
            lighting_source=lighting[1],
            lighting_confidence=lighting[2],
            lighting_computed=light,
            lighting_basis=basis,
            color_temperature=color_temperature(st, cfg.lighting),
            time_of_day=None if st.get("exif_hour") is None else "night" if is_night(st["exif_hour"], cfg.lighting.exif) else "day",
            background=background[0],
            background_source=background[1],
            background_confidence=background[2],
            background_cluster=cluster,
            background_computed=names[cluster],
            background_similarity=float(sims[i, cluster]),
            background_margin=float(margins[i]),
            background_scene=pan.scene if pan is not None else None,
            background_stuff=pan.stuff if pan is not None else None,
            scene=scene_of_image.get(sha, (None,))[0],
            indoor_outdoor=scene_of_image.get(sha, (None, None))[1],
            indoor_outdoor_confidence=scene_of_image.get(sha, (None, None, None))[2],
            occlusion=occlusion[0],
            occlusion_source=occlusion[1],
            occlusion_confidence=occlusion[2],
            occluded_share=share,
            detected_objects=len(detected[sha][0]) if sha in detected else len(from_detect[sha][0]) if sha in from_detect else None,
            **st,
        )
        for name, value in row.items():
            columns.setdefault(name, []).append(value)
    atomic.write_parquet(_columns_table(columns), layout.tags / "tags.parquet")
    n = len(columns.get("sha256", ()))
    clusters = [
        dict(cluster=j, name=names[j], size=int((labels == j).sum())) for j in sorted(names)
    ]
    atomic.write_json(
        layout.tags / "clusters.json",
        dict(k=int(len(centers)), seed=cfg.background.seed, refit=refit, model_hash=model_hash, clusters=clusters),
    )
    counts = Counter(columns.get("lighting", ()))
    sources = {t: dict(sorted(Counter(columns.get(f"{t}_source", ())).items())) for t in ("lighting", "background", "occlusion")}
    log.info("tag: %d images, %d background clusters, lighting %s, sources %s", n, len(centers), dict(counts), sources)
    return dict(images=n, clusters=len(centers), sources=sources)


_TYPES = {
    "exif_exposure_time": pa.float64(), "exif_fnumber": pa.float64(), "exif_iso": pa.float64(),
    "exif_ev": pa.float64(), "exif_flash": pa.bool_(), "exif_hour": pa.int32(),
    "background_scene": pa.string(), "background_stuff": pa.string(), "occluded_share": pa.float64(),
    "detected_objects": pa.int32(), "time_of_day": pa.string(),
    "scene": pa.string(), "indoor_outdoor": pa.string(), "indoor_outdoor_confidence": pa.float64(),
}


def _columns_table(columns: dict[str, list]) -> pa.Table:
    """The tags table from one list per column (every list one value per image)."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:  # a row without a field would shift every later value of that column
        raise ValueError(f"tag: columns of unequal length {sorted(lengths)}")
    schema = _schema([{name: values[0] for name, values in columns.items()}] if lengths - {0} else [])
    if schema is None:
        return pa.table({})
    return pa.Table.from_arrays([pa.array(columns[f.name], f.type) for f in schema], schema=schema)


def _schema(rows: list[dict]) -> pa.Schema | None:
    """Stable column types even when a column is null for every image (no EXIF, no panoptic labels)."""
    if not rows:
        return None
    inferred = pa.Table.from_pylist(rows[:1]).schema
    fields = []
    for f in inferred:
        if f.name in _TYPES:
            fields.append(pa.field(f.name, _TYPES[f.name]))
        elif pa.types.is_null(f.type):
            fields.append(pa.field(f.name, pa.string()))
        else:
            fields.append(f)
    return pa.schema(fields)
