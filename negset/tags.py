"""Step 3, tag: lighting, background and occlusion tags for every image.

- lighting, from pixel statistics of the luminance: dark / dim / normal /
  bright / high-contrast (thresholds in ``params.yaml`` ``tag.lighting``);
- background, clusters of the embeddings (k-means, seeded), each named by
  the ImageNet classes its members look most like;
- occlusion, from box geometry when labels exist: the share of objects cut
  by the frame or covered by another box: none / partial / heavy, and
  ``unknown`` for unlabelled images.
Each tag is stored with its source (``computed`` or ``annotation``).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from pathlib import Path

import numpy as np
import pyarrow as pa
from negset import parquet as pq

from negset import atomic, quality
from negset.config import Background, Lighting, Occlusion, Params
from negset.embed import imagenet_names, read_embeddings
from negset.imageio import load_rgb
from negset.layout import Layout
from negset.shacache import ShaCache

log = logging.getLogger("negset.tags")

LIGHTING_CLASSES = ("dark", "dim", "normal", "bright", "high-contrast")


def luminance_stats(image) -> dict:
    """Luminance statistics of an RGB image (0-255 scale)."""
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    p5, p50, p95 = np.percentile(gray, [5, 50, 95])
    return dict(
        luma_mean=float(gray.mean()),
        luma_p5=float(p5),
        luma_p50=float(p50),
        luma_p95=float(p95),
        luma_std=float(gray.std()),
        clipped_dark=float((gray <= 5).mean()),
        clipped_bright=float((gray >= 250).mean()),
    )


def lighting_class(stats: dict, cfg: Lighting) -> str:
    median = stats["luma_p50"]
    if median < cfg.dark_below:
        return "dark"
    if median > cfg.bright_above:
        return "bright"
    if stats["luma_std"] >= cfg.high_contrast_std:
        return "high-contrast"
    if median < cfg.dim_below:
        return "dim"
    return "normal"


def occlusion_of(boxes: list[tuple[float, float, float, float]], cfg: Occlusion) -> tuple[str, float]:
    """(class, share of occluded objects) from normalised boxes (x0, y0, x1, y1)."""
    if not boxes:
        return "none", 0.0
    b = np.asarray(boxes, dtype=np.float64)
    m = cfg.edge_margin
    cut = (b[:, 0] <= m) | (b[:, 1] <= m) | (b[:, 2] >= 1 - m) | (b[:, 3] >= 1 - m)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-12)
    ix0 = np.maximum(b[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(b[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(b[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(b[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    np.fill_diagonal(inter, 0.0)
    covered = (inter / area[:, None]).max(axis=1) >= cfg.overlap if len(b) > 1 else np.zeros(len(b), bool)
    share = float((cut | covered).mean())
    if share == 0:
        return "none", 0.0
    return ("heavy" if share >= cfg.heavy_share else "partial"), share


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
    cache = ShaCache(layout.data / "cache" / "pixels")
    if not shas:
        return []
    first = compute(shas[0])  # the current set of fields: a cache from older code is not reused
    keys = set(first)
    results: dict[str, dict] = {shas[0]: first}
    todo = [s for s in shas[1:] if cache.get(s, keys) is None]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for sha, st in zip(todo, pool.map(compute, todo)):
            results[sha] = st
    cache.add({s: r for s, r in results.items() if cache.get(s, keys) is None})
    log.info("tag: pixel statistics for %d images (%d cached)", len(shas), len(shas) - len(results))
    return [results.get(s) or cache.get(s, keys) for s in shas]


def background_clusters(vectors, top5, cfg: Background, model_hash: str, previous: Path):
    """Cluster labels, centres and names; stable across refreshes.

    The centres of the last fit (``previous``, kept by DVC with ``persist``)
    are reused when the model, ``clusters`` and ``seed`` are unchanged and
    at most ``refit_share`` of the images are new since that fit: new images
    join the nearest existing cluster and no cluster is renamed.
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


def run(params: Params, layout: Layout) -> dict:
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

    model_hash = json.loads((layout.embed / "model.json").read_text()).get("model_hash", "")
    labels, centers, names, refit = background_clusters(vectors, top5, cfg.background, model_hash, layout.tags / "centroids.parquet")

    def stats_for(sha: str) -> dict:
        image = load_rgb(layout.object_path(sha), reduce_to=256)
        return {**luminance_stats(image), **quality.pixel_features(image)}

    stats = cached_pixel_stats(layout, [im["sha256"] for im in images], stats_for)

    rows = []
    for im, st in zip(images, stats):
        sha = im["sha256"]
        cluster = int(labels[index[sha]])
        if im["labelled"]:
            occ, share = occlusion_of(boxes.get(sha, []), cfg.occlusion)
            occ_source = "annotation"
        else:
            occ, share = "unknown", None
            occ_source = "none"
        rows.append(
            dict(
                sha256=sha,
                lighting=lighting_class(st, cfg.lighting),
                lighting_source="computed",
                background=names[cluster],
                background_cluster=cluster,
                background_source="computed",
                background_similarity=float(vectors[index[sha]] @ centers[cluster]),
                occlusion=occ,
                occlusion_source=occ_source,
                occluded_share=share,
                **st,
            )
        )
    rows.sort(key=lambda r: r["sha256"])
    atomic.write_parquet(pa.Table.from_pylist(rows), layout.tags / "tags.parquet")
    clusters = [
        dict(cluster=j, name=names[j], size=int((labels == j).sum())) for j in sorted(names)
    ]
    atomic.write_json(
        layout.tags / "clusters.json",
        dict(k=int(len(centers)), seed=cfg.background.seed, refit=refit, model_hash=model_hash, clusters=clusters),
    )
    counts = defaultdict(int)
    for r in rows:
        counts[r["lighting"]] += 1
    log.info("tag: %d images, %d background clusters, lighting %s", len(rows), len(centers), dict(counts))
    return dict(images=len(rows), clusters=len(centers))
