"""Occlusion tags from box geometry: how many of an image's objects are cut by the frame or covered by another.

``occlusion_of`` is the rule for one image; ``occlusions`` applies the same
float64 operations to every image at once (the pairs of boxes within each
image side by side), so a pool of 10,000 images takes milliseconds instead of
a NumPy round per image; tests/tag/test_tags.py checks both agree.
"""

from __future__ import annotations

import numpy as np

from negset.core.config import Occlusion

PAIRS_PER_CHUNK = 2_000_000  # box pairs compared at once (about 100 MB of float64 work arrays)


def _label(share: float, cfg: Occlusion) -> tuple[str, float]:
    if share == 0:
        return "none", 0.0
    return ("heavy" if share >= cfg.heavy_share else "partial"), share


def occlusion_of(boxes, cfg: Occlusion) -> tuple[str, float]:
    """(class, share of occluded objects) from normalised boxes (x0, y0, x1, y1)."""
    if len(boxes) == 0:
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
    return _label(float((cut | covered).mean()), cfg)


def occlusions(box_lists: list, cfg: Occlusion) -> list[tuple[str, float]]:
    """``occlusion_of`` of each image's boxes, all images at once."""
    sizes = np.fromiter((len(b) for b in box_lists), np.int64, len(box_lists))
    out: list[tuple[str, float]] = [("none", 0.0)] * len(box_lists)
    if not sizes.any():
        return out
    b = np.asarray([box for boxes in box_lists for box in boxes], dtype=np.float64).reshape(-1, 4)
    m = cfg.edge_margin
    flagged = (b[:, 0] <= m) | (b[:, 1] <= m) | (b[:, 2] >= 1 - m) | (b[:, 3] >= 1 - m)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-12)
    starts = np.cumsum(sizes) - sizes
    # images in chunks of at most PAIRS_PER_CHUNK box pairs (one image's pairs always in one chunk)
    pairs = np.cumsum(sizes * sizes)
    first = 0
    while first < len(sizes):
        last = max(first + 1, int(np.searchsorted(pairs, (pairs[first - 1] if first else 0) + PAIRS_PER_CHUNK, "right")))
        _covered(b, area, starts[first:last], sizes[first:last], cfg.overlap, flagged)
        first = last
    image = np.repeat(np.arange(len(sizes)), sizes)
    shares = np.bincount(image, weights=flagged, minlength=len(sizes))
    for k in np.flatnonzero(sizes):
        out[k] = _label(float(shares[k] / sizes[k]), cfg)
    return out


def _covered(b, area, starts, sizes, overlap: float, flagged: np.ndarray) -> None:
    """Set ``flagged`` for the boxes that another box of their image covers by at least ``overlap``."""
    rep = np.repeat(sizes, sizes)  # each box, once per box of its image
    i = np.repeat(np.repeat(starts, sizes) + _ramp(sizes), rep)
    j = np.repeat(np.repeat(starts, sizes), rep) + _ramp(rep)
    keep = i != j
    i, j = i[keep], j[keep]
    inter = (np.clip(np.minimum(b[i, 2], b[j, 2]) - np.maximum(b[i, 0], b[j, 0]), 0, None)
             * np.clip(np.minimum(b[i, 3], b[j, 3]) - np.maximum(b[i, 1], b[j, 1]), 0, None))
    flagged[np.unique(i[inter / area[i] >= overlap])] = True


def _ramp(sizes: np.ndarray) -> np.ndarray:
    """0..n-1 for each n in ``sizes``, concatenated."""
    total = int(sizes.sum())
    return np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
