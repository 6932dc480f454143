"""Overly simple images: one score in [0, 1] per check, higher is better.

Each check is a small named unit (cleanvision's definitions are the
reference, the code is negset's own): an image whose score is *under* the
check's threshold (``select.quality`` in params.yaml) has that issue and is
left out by the select step with the rule ``quality:<check>``.

Pixel checks (computed by the tag step, where every image is decoded once,
from the reduced decode whose shorter side is at least 256 px):

- ``dark``: the 99th percentile of perceived brightness; a dark image has
  little that is bright at all;
- ``light``: 1 - the 5th percentile of brightness; an over-exposed image has
  little that is dark;
- ``low_information``: the entropy of the grey-level histogram / 8 bits;
- ``near_uniform``: grey-level standard deviation / 64, capped at 1;
- ``blurry``: 1 - exp(-var(Laplacian) / 150) on the grey image, 0-255 scale.

``pixel_features`` adds ``dhash``, a 64-bit difference hash of the 9x8 grey
thumbnail (as a signed int64), which survives resizing and recompression: the
select step's leak check compares it with the positives' hashes.

Geometry checks (from the ingest step's width and height):

- ``odd_aspect_ratio``: shorter side / longer side;
- ``tiny``: shorter side / 256 px, capped at 1.
"""

from __future__ import annotations

import numpy as np

PIXEL_CHECKS = ("dark", "light", "low_information", "near_uniform", "blurry")
GEOMETRY_CHECKS = ("odd_aspect_ratio", "tiny")
CHECKS = PIXEL_CHECKS + GEOMETRY_CHECKS

BLUR_SCALE = 150.0  # var(Laplacian) at which the blur score reaches 1 - 1/e
TINY_SIDE = 256.0


def _brightness(rgb: np.ndarray) -> np.ndarray:
    """Perceived brightness in [0, 1] (weighted RGB norm)."""
    x = rgb.astype(np.float32) / 255.0
    return np.sqrt(0.241 * x[..., 0] ** 2 + 0.691 * x[..., 1] ** 2 + 0.068 * x[..., 2] ** 2)


def laplacian_variance(gray: np.ndarray) -> float:
    g = gray.astype(np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def pixel_scores(image) -> dict[str, float]:
    """The pixel checks of one RGB PIL image, each in [0, 1] (higher = better)."""
    rgb = np.asarray(image.convert("RGB"))
    bright = _brightness(rgb)
    p5, p99 = np.percentile(bright, [5, 99])
    gray = np.asarray(image.convert("L"))
    hist = np.bincount(gray.reshape(-1), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum())
    return dict(
        q_dark=float(np.clip(p99, 0, 1)),
        q_light=float(np.clip(1.0 - p5, 0, 1)),
        q_low_information=float(np.clip(entropy / 8.0, 0, 1)) + 0.0,
        q_near_uniform=float(min(1.0, gray.std() / 64.0)),
        q_blurry=float(1.0 - np.exp(-laplacian_variance(gray) / BLUR_SCALE)),
    )


def geometry_scores(width: np.ndarray, height: np.ndarray) -> dict[str, np.ndarray]:
    """The geometry checks for arrays of widths and heights."""
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    short, long_ = np.minimum(w, h), np.maximum(w, h)
    return dict(
        q_odd_aspect_ratio=np.where(long_ > 0, short / np.maximum(long_, 1), 0.0),
        q_tiny=np.clip(short / TINY_SIDE, 0, 1),
    )


def dhash(image) -> int:
    """64-bit difference hash: is each pixel of the 9x8 grey thumbnail brighter than its left neighbour."""
    from PIL import Image

    g = np.asarray(image.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).reshape(-1)
    value = int.from_bytes(np.packbits(bits).tobytes(), "big")
    return value - (1 << 64) if value >= 1 << 63 else value  # signed, for Parquet int64


def pixel_features(image) -> dict:
    """What the tag step stores per image: the pixel checks and the difference hash."""
    return {**pixel_scores(image), "dhash": dhash(image)}


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between int64 hashes, all pairs (len(a), len(b))."""
    x = np.asarray(a, np.int64).view(np.uint64)[:, None] ^ np.asarray(b, np.int64).view(np.uint64)[None, :]
    return np.bitwise_count(x).astype(np.int16)
