"""Region embeddings (part of step 2, embed): what in an image could pass for the target.

A whole-image embedding describes the scene: a cat on a sofa and a dog on a
sofa are close mostly because of the sofa, and a street without cars is close
to a street with cars. Distractors are objects, so with ``embed.regions: G``
negset also embeds

- every target object of the positives, cropped square around its box (15%
  margin, objects under ``MIN_OBJECT_PX`` pixels skipped), kind ``object``;
- a G x G grid of overlapping crops of every image (each crop 1.25/G of the
  width and height), kind ``grid``.

The select step's hardness is then the highest cosine similarity between any
crop of a candidate (or the whole candidate) and any target object of the
positives (``select.hardness``); the whole-image similarity still decides the
context (same environment) rules. Measured on COCO128 (``negset evaluate``),
this is what makes the chosen negatives beat random ones; the cost is G x G
more model work per image (cached by image sha256 and model, like the
whole-image vectors).

Output: ``data/embed/regions.parquet`` (sha256, kind, box, row: queryable
with DuckDB) and ``data/embed/regions.npy`` (float16, one row per index row):
about 23 KB per image at G = 3 with 1,280 dimensions. NumPy because float16
Parquet decodes slowly (0.4 s vs 0.01 s per 10,000 crops), and the select step
memory-maps it; past a few hundred thousand images leave regions off or shard
the pool.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from negset.core import atomic
from negset.core import parquet as pq
from negset.core.cache import PartCache
from negset.core.config import Params
from negset.core.errors import NegsetError
from negset.core.imageio import load_rgb
from negset.core.layout import Layout
from negset.core.progress import track
from negset.embed.store import vectors_path

log = logging.getLogger("negset.regions")

MIN_OBJECT_PX = 32  # target objects smaller than this (longer side, pixels) make noisy crops
OBJECT_MARGIN = 0.15
MAX_OBJECTS_PER_IMAGE = 20


def grid_boxes(width: int, height: int, grid: int) -> list[tuple[int, int, int, int]]:
    """G x G overlapping crops, each 1.25/G of the image's width and height (pixels)."""
    if grid <= 0:
        return []
    s = min(1.0, 1.25 / grid)
    w, h = max(1, round(width * s)), max(1, round(height * s))
    out = []
    for i in range(grid):
        for j in range(grid):
            x0 = round(j * (width - w) / (grid - 1)) if grid > 1 else 0
            y0 = round(i * (height - h) / (grid - 1)) if grid > 1 else 0
            out.append((x0, y0, x0 + w, y0 + h))
    return out


def object_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """A square crop (pixels) around a normalised box with a margin, kept inside the image; None when tiny."""
    x0, y0, x1, y1 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    side = max(x1 - x0, y1 - y0)
    if side < MIN_OBJECT_PX:
        return None
    side = min(side * (1 + 2 * OBJECT_MARGIN), width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(0.0, cx - side / 2), width - side)
    top = min(max(0.0, cy - side / 2), height - side)
    return (round(left), round(top), round(left + side), round(top + side))


@dataclass
class Item:
    key: str  # cache key: sha256 (grid) or sha256 + box (object)
    sha256: str
    kind: str  # grid | object
    boxes: list[tuple[float, float, float, float]]  # normalised boxes (object) or [] (grid)
    size: tuple[int, int] = (0, 0)  # the upright image's width and height (ingest), the frame of the pixel boxes


MAP_VERSION = 1  # bump when the pooling of map windows changes: the region cache key changes with it
CROP_BOXES_VERSION = 2  # the crops' boxes are in the upright image's pixels (version 1: the reduced decode's)


def method_for(cfg) -> str:
    """The region method in effect: ``crops``, ``map`` (grid and objects from the map) or ``map+objects``
    (grid from the map, target objects cropped). The map needs the default model; other models crop."""
    from negset.embed.model import DEFAULT_MODEL

    if cfg.regions_from != "map" or cfg.model != DEFAULT_MODEL:
        return "crops"
    return "map" if cfg.objects_from == "map" else "map+objects"


def pooled(method: str, kind: str) -> bool:
    """Whether items of this kind are pooled from the feature map under ``method`` (else cropped)."""
    return method == "map" or (method == "map+objects" and kind == "grid")


def _key(model_hash: str, grid: int, method: str = "crops") -> str:
    parts = [model_hash, grid, OBJECT_MARGIN, MIN_OBJECT_PX]
    if method != "crops":  # the crops key is the one of before the map method (those caches keep)
        parts += [method, MAP_VERSION]
    else:  # crops of a reduced decode recorded their boxes in its pixels until version 2 (now: the upright image's)
        parts += [CROP_BOXES_VERSION]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def crop_window(width: int, height: int, size: int, crop_pct: float) -> tuple[float, float, float, float]:
    """The part of the image (fractions x0, y0, x1, y1) the model sees: ``Embedder.preprocess``'s centre crop."""
    short = int(round(size / crop_pct))
    scale = short / max(1, min(width, height))
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    return left / nw, top / nh, (left + size) / nw, (top + size) / nh


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def map_grid(fmap: np.ndarray, grid: int) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """(map cell windows c0, r0, c1, r1; L2-normalised mean-pooled vectors) of a G x G grid over a (C, h, w) map.

    Each window spans 1.25/G of the map's side (rounded to whole cells), like
    the crops of ``grid_boxes``: at 224 px the 7 x 7 map gives 3 x 3 cell windows
    at cells 0, 2 and 4 for G = 3.
    """
    _, h, w = fmap.shape
    cells = grid_boxes(w, h, grid)  # the crops' own geometry, in map cells instead of pixels
    vecs = np.stack([fmap[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, r0, c1, r1 in cells])
    return cells, _unit(vecs)


def map_roi(fmap: np.ndarray, box: tuple[int, int, int, int], width: int, height: int, window) -> np.ndarray:
    """The L2-normalised mean of the map cells under a pixel box (at least one cell; clipped to the crop)."""
    _, h, w = fmap.shape
    fx0, fy0, fx1, fy1 = window
    u0, u1 = ((box[0] / width - fx0) / (fx1 - fx0) * w, (box[2] / width - fx0) / (fx1 - fx0) * w)
    v0, v1 = ((box[1] / height - fy0) / (fy1 - fy0) * h, (box[3] / height - fy0) / (fy1 - fy0) * h)
    c0 = int(min(max(np.floor(u0), 0), w - 1))
    r0 = int(min(max(np.floor(v0), 0), h - 1))
    c1 = int(max(min(np.ceil(u1), w), c0 + 1))
    r1 = int(max(min(np.ceil(v1), h), r0 + 1))
    return _unit(fmap[:, r0:r1, c0:c1].mean(axis=(1, 2)))


def from_map(fmap: np.ndarray, item: Item, grid: int, size: int, crop_pct: float) -> tuple[list, np.ndarray]:
    """(pixel boxes in the upright image, float16 vectors) of one item, pooled from its image's map."""
    W, H = item.size
    window = crop_window(W, H, size, crop_pct)
    if item.kind == "grid":
        cells, vecs = map_grid(fmap, grid)
        _, h, w = fmap.shape
        fx0, fy0, fx1, fy1 = window
        boxes = [(round((fx0 + c0 / w * (fx1 - fx0)) * W), round((fy0 + r0 / h * (fy1 - fy0)) * H),
                  round((fx0 + c1 / w * (fx1 - fx0)) * W), round((fy0 + r1 / h * (fy1 - fy0)) * H))
                 for c0, r0, c1, r1 in cells]
        return boxes, vecs.astype(np.float16)
    boxes = [b for b in (object_box(x, W, H) for x in item.boxes) if b is not None]
    if not boxes:
        return [], np.zeros((0, fmap.shape[0]), np.float16)
    return boxes, np.stack([map_roi(fmap, b, W, H, window) for b in boxes]).astype(np.float16)


class RegionParts:
    """Cache parts of region vectors: one uncompressed ``.npz`` per part (row keys, pixel
    boxes, float16 vectors, and the keys of items that had no crop). Loading a part is
    a file read, where float16 Parquet took about 0.4 s per 10,000 crops to decode."""

    suffix = ".npz"

    def write(self, path: Path, done: dict[str, tuple[list, np.ndarray]]) -> None:
        keys, boxes, vecs, empty = [], [], [], []
        for k, (b, v) in done.items():
            if not len(b):
                empty.append(k)
                continue
            keys += [k] * len(b)
            boxes += [list(x) for x in b]
            vecs.append(np.asarray(v, np.float16).reshape(len(b), -1))
        flat = np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float16)
        atomic.write_npz(
            path,
            keys=np.asarray(keys, dtype=str), boxes=np.asarray(boxes, np.int32).reshape(-1, 4),
            vectors=flat, empty=np.asarray(empty, dtype=str),
        )

    def read(self, path: Path) -> dict[str, tuple[list, np.ndarray]]:
        with np.load(path, allow_pickle=False) as z:
            keys, boxes, vec, empty = z["keys"].tolist(), z["boxes"].tolist(), z["vectors"], z["empty"]
        out: dict[str, tuple[list, np.ndarray]] = {}
        start = 0
        for end in range(1, len(keys) + 1):  # one row per crop, an item's crops consecutive
            if end == len(keys) or keys[end] != keys[start]:
                out.setdefault(keys[start], ([tuple(b) for b in boxes[start:end]], np.asarray(vec[start:end], np.float16)))
                start = end
        for k in empty.tolist():
            out.setdefault(k, ([], np.zeros((0, vec.shape[1] if vec.ndim == 2 else 0), np.float16)))
        return out


def region_cache(layout: Layout, key: str) -> PartCache[tuple[list, np.ndarray]]:
    """Region vectors by item key (pixel boxes, vectors), under data/cache/regions/<key>/ (resumable)."""
    return PartCache(layout.data / "cache" / "regions" / key, RegionParts())


def items_for(layout: Layout, images: list[dict], target: list[str], grid: bool = True, any_role: bool = False) -> list[Item]:
    """One grid item per image, and one object item per positive image with target boxes
    (``any_role``: per image labelled with the target, whatever its role)."""
    labels = pq.read_table(layout.ingest / "labels.parquet").to_pylist()
    wanted = set(target)
    by_sha: dict[str, list] = {}
    for b in labels:
        if b["cls"] in wanted and not b.get("crowd"):
            by_sha.setdefault(b["sha256"], []).append((b["x0"], b["y0"], b["x1"], b["y1"]))
    out = []
    size_of = {im["sha256"]: (int(im["width"]), int(im["height"])) for im in images}
    for im in images:
        if grid:
            out.append(Item(im["sha256"], im["sha256"], "grid", []))
        boxes = sorted(by_sha.get(im["sha256"], [])) if any_role or im.get("role") == "positive" else []
        # ingest reports upright sizes, the same frame the boxes and the decoded image use
        boxes = [b for b in boxes if object_box(b, im["width"], im["height"]) is not None][:MAX_OBJECTS_PER_IMAGE]
        if boxes:
            tag = hashlib.sha256(json.dumps(boxes).encode()).hexdigest()[:12]
            out.append(Item(f"{im['sha256']}:{tag}", im["sha256"], "object", boxes))
    for it in out:
        it.size = size_of[it.sha256]
    return out


def _crops(emb, path: Path, item: Item, grid: int):
    """(pixel boxes, preprocessed arrays) of one item, or a reason string when it cannot be decoded."""
    # grid crops need about image_size / crop_pct pixels on their shorter side: decode JPEGs reduced (draft)
    reduce_to = None
    if item.kind == "grid" and grid > 0:
        reduce_to = int(np.ceil(emb.image_size / emb.crop_pct / min(1.0, 1.25 / grid)))
    try:
        image = load_rgb(path, reduce_to=reduce_to)
    except Exception as exc:  # undecodable images were reported by the embed step
        return f"{type(exc).__name__}: {exc}"
    W, H = image.size
    if item.kind == "grid":
        boxes = grid_boxes(W, H, grid)
    else:
        boxes = [b for b in (object_box(x, W, H) for x in item.boxes) if b is not None]
    arrays = [emb.preprocess(image.crop(b)) for b in boxes]
    return upright_boxes(boxes, (W, H), item.size), arrays


def upright_boxes(boxes: list, decoded: tuple[int, int], upright: tuple[int, int]) -> list:
    """Pixel boxes of a reduced decode (``decoded`` width, height) in the upright image's pixels (``upright``, the
    ingest's size: the frame every reader of regions.parquet divides by); unchanged when the two are the same or
    the upright size is unknown."""
    (w, h), (W, H) = decoded, upright
    if not (W and H) or (w, h) == (W, H):
        return [tuple(b) for b in boxes]
    sx, sy = W / w, H / h
    return [(round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy)) for b in boxes]


def compute(emb, layout: Layout, items: list[Item], grid: int, batch_size: int, threads: int = 0):
    """Yield {item key: (pixel boxes, vectors)} chunk by chunk; decoding runs in threads."""
    workers = max(1, threads or (os.cpu_count() or 1))
    chunk = max(1, batch_size // max(1, grid * grid))
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            got = list(ex.map(lambda it: _crops(emb, layout.object_path(it.sha256), it, grid), part))
            arrays = [a for g in got if not isinstance(g, str) for a in g[1]]
            feats = emb(np.stack(arrays))[0] if arrays else np.zeros((0, 1), np.float32)
            done, at = {}, 0
            for it, g in zip(part, got):
                if isinstance(g, str):
                    continue
                boxes, arrs = g
                done[it.key] = (boxes, feats[at : at + len(arrs)])
                at += len(arrs)
            yield done


def compute_from_maps(emb, layout: Layout, items: list[Item], grid: int, batch_size: int, threads: int = 0):
    """Yield {item key: (pixel boxes, vectors)} per batch of images: one model pass per image (its
    last feature map), every item of that image pooled from it. Undecodable images yield nothing."""
    from negset.embed.model import embed_files

    if not emb.has_map:
        raise NegsetError(f"embed.regions_from: map: the model {emb.name} returns no feature map", hint="use regions_from: crops")
    by_sha: dict[str, list[Item]] = {}
    for it in items:
        by_sha.setdefault(it.sha256, []).append(it)
    shas = list(by_sha)
    paths = [layout.object_path(s) for s in shas]
    for idx, _, _, _, fmap in embed_files(emb, paths, batch_size, threads, with_map=True):
        yield {it.key: from_map(fmap[j], it, grid, emb.image_size, emb.crop_pct) for j, i in enumerate(idx) for it in by_sha[shas[i]]}


class MapSink:
    """Region vectors of the images the whole-image pass embeds now, pooled from the feature maps that
    pass computes anyway (``embed.regions_from: map``): object hardness without another model pass."""

    def __init__(self, params: Params, layout: Layout, model_hash: str, images: list[dict]):
        cfg = params.embed
        self.grid, self.every = cfg.regions, cfg.checkpoint_every * max(1, cfg.regions ** 2)
        method = method_for(cfg)
        self.cache = region_cache(layout, _key(model_hash, cfg.regions, method))
        self.by_sha: dict[str, list[Item]] = {}
        for it in items_for(layout, images, list(params.ingest.target)):
            if it.key not in self.cache.rows and pooled(method, it.kind):  # cropped objects: the region step
                self.by_sha.setdefault(it.sha256, []).append(it)
        self.pending: dict = {}
        self.rows = 0

    def take(self, shas: list[str], fmap: np.ndarray, emb) -> None:
        """Pool the regions of these images (in batch order) from their maps; write a part now and then."""
        for j, sha in enumerate(shas):
            for it in self.by_sha.pop(sha, []):
                self.pending[it.key] = got = from_map(fmap[j], it, self.grid, emb.image_size, emb.crop_pct)
                self.rows += len(got[0])
        if self.rows >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.cache.add(self.pending)
        self.pending, self.rows = {}, 0


def _fill(params: Params, layout: Layout, model_hash: str, items: list[Item]) -> PartCache:
    """The cache with every item in it (the missing ones embedded now; the model loads only then)."""
    cfg = params.embed
    method = method_for(cfg)
    cache = region_cache(layout, _key(model_hash, cfg.regions, method))
    todo = [it for it in items if it.key not in cache.rows]
    log.info("regions (%s): %d items (%d x %d grid per image, target objects of positives), %d cached, %d to embed",
             method, len(items), cfg.regions, cfg.regions, len(items) - len(todo), len(todo))
    if cfg.regions_from == "map" and method != "map":
        log.info("regions: regions_from: map needs the default model's feature map; %s regions are cropped", cfg.model)
    if todo:
        from negset.embed.model import ready_embedder

        emb = ready_embedder(cfg, layout, model_hash)  # the whole-image pass's; no torch when the export is cached
        pending: dict = {}
        per = max(1, cfg.regions ** 2)
        from_map = [it for it in todo if pooled(method, it.kind)]
        cropped = [it for it in todo if not pooled(method, it.kind)]
        batches = -(-len({it.sha256 for it in from_map}) // cfg.batch_size) + -(-len(cropped) // max(1, cfg.batch_size // per))
        work = itertools.chain(compute_from_maps(emb, layout, from_map, cfg.regions, cfg.batch_size, cfg.threads) if from_map else [],
                               compute(emb, layout, cropped, cfg.regions, cfg.batch_size, cfg.threads) if cropped else [])
        for done in track(work, batches, "region batches"):
            pending.update(done)
            if sum(len(b) for b, _ in pending.values()) >= cfg.checkpoint_every * per:
                cache.add(pending)
                pending = {}
        cache.add(pending)
    return cache


def objects_for(params: Params, layout: Layout, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """(owner sha256 per object, vectors) of every labelled object of ``classes`` (for ``negset evaluate``)."""
    model_hash = atomic.read_json(layout.embed / "model.json")["model_hash"]
    images = pq.read_table(layout.ingest / "images.parquet", columns=["sha256", "role", "width", "height"]).to_pylist()
    items = items_for(layout, images, classes, grid=False, any_role=True)
    cache = _fill(params, layout, model_hash, items)
    shas, vecs = [], []
    for it in items:
        b, v = cache.rows[it.key]
        if len(b):
            shas += [it.sha256] * len(b)
            vecs.append(np.asarray(v, np.float16).reshape(len(b), -1))
    return shas, (np.concatenate(vecs) if vecs else np.zeros((0, 1), np.float16))


def run(params: Params, layout: Layout, model_hash: str) -> dict:
    """Embed the grid crops of every image and the positives' target objects (cached); write regions.parquet."""
    cfg = params.embed
    out = layout.embed / "regions.parquet"
    if cfg.regions <= 0:
        out.unlink(missing_ok=True)
        vectors_path(layout).unlink(missing_ok=True)
        return dict(grid=0)
    images = pq.read_table(layout.ingest / "images.parquet", columns=["sha256", "role", "width", "height"]).to_pylist()
    embedded = set(pq.read_table(layout.embed / "embeddings.parquet", columns=["sha256"]).column("sha256").to_pylist())
    images = [im for im in images if im["sha256"] in embedded]  # undecodable images are already rejected
    items = items_for(layout, images, list(params.ingest.target))
    cache = _fill(params, layout, model_hash, items)
    shas, kinds, boxes, vecs = [], [], [], []
    for it in items:
        if it.key not in cache.rows:
            continue
        b, v = cache.rows[it.key]
        shas += [it.sha256] * len(b)
        kinds += [it.kind] * len(b)
        boxes += [list(x) for x in b]
        if len(b):
            vecs.append(np.asarray(v, np.float16).reshape(len(b), -1))
    dim = vecs[0].shape[1] if vecs else 1
    flat = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float16)
    table = pa.table({
        "sha256": pa.array(shas, pa.string()),
        "kind": pa.array(kinds, pa.string()),
        "box": pa.array(boxes, pa.list_(pa.int32())),
        "row": pa.array(np.arange(len(shas), dtype=np.int64)),
    })
    # vectors first: a reader that finds the index finds vectors at least as new
    atomic.write_npy(vectors_path(layout), flat)
    atomic.write_parquet(table, out)
    n_obj = kinds.count("object")
    log.info("regions: %d grid crops, %d target objects", len(kinds) - n_obj, n_obj)
    return dict(grid=cfg.regions, regions=len(kinds) - n_obj, objects=n_obj)
