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

from dataclasses import dataclass

import numpy as np

from negset.tag import percentile

PIXEL_CHECKS = ("dark", "light", "low_information", "near_uniform", "blurry")
GEOMETRY_CHECKS = ("odd_aspect_ratio", "tiny")
CHECKS = PIXEL_CHECKS + GEOMETRY_CHECKS

BLUR_SCALE = 150.0  # var(Laplacian) at which the blur score reaches 1 - 1/e
TINY_SIDE = 256.0


@dataclass(frozen=True)
class Grey:
    """An image's grey version (PIL ``convert("L")``), its 8-bit levels and their histogram: made once per
    image for the lighting statistics, the pixel checks and the hash."""

    image: object
    levels: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, image) -> "Grey":
        grey = image.convert("L")
        levels = np.asarray(grey)
        return cls(grey, levels, np.bincount(levels.reshape(-1), minlength=256))


def _brightness(rgb: np.ndarray) -> np.ndarray:
    """Perceived brightness in [0, 1] (weighted RGB norm)."""
    x = rgb.astype(np.float32) / 255.0
    return np.sqrt(0.241 * x[..., 0] ** 2 + 0.691 * x[..., 1] ** 2 + 0.068 * x[..., 2] ** 2)


# each channel's weighted square as _brightness has it, for every 8-bit value (the same float32 operations)
_LEVELS = np.arange(256, dtype=np.float32) / 255.0
_SQUARES = (0.241 * _LEVELS ** 2, 0.691 * _LEVELS ** 2, 0.068 * _LEVELS ** 2)


def _brightness_squared(rgb: np.ndarray) -> np.ndarray:
    """``_brightness(rgb) ** 2`` before its square root, bit for bit: three table look-ups per pixel instead of
    a float conversion, a division and a square of each channel."""
    r, g, b = _SQUARES
    return r[rgb[..., 0]] + g[rgb[..., 1]] + b[rgb[..., 2]]


def laplacian_variance(gray: np.ndarray) -> float:
    g = gray.astype(np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def pixel_scores(image, grey: Grey | None = None) -> dict[str, float]:
    """The pixel checks of one RGB PIL image, each in [0, 1] (higher = better); ``grey``: its ``Grey`` when
    the caller has it. The brightness percentiles are found without sorting the image
    (negset/tag/percentile.py): the same values as np.percentile's."""
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    p5, p99 = percentile.of_monotone(_brightness_squared(rgb), [5, 99], np.sqrt)
    grey = grey or Grey.of(image)
    hist = grey.counts.astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum())
    return dict(
        q_dark=float(np.clip(p99, 0, 1)),
        q_light=float(np.clip(1.0 - p5, 0, 1)),
        q_low_information=float(np.clip(entropy / 8.0, 0, 1)) + 0.0,
        q_near_uniform=float(min(1.0, grey.levels.std() / 64.0)),
        q_blurry=float(1.0 - np.exp(-laplacian_variance(grey.levels) / BLUR_SCALE)),
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


def dhash(image, grey: Grey | None = None) -> int:
    """64-bit difference hash: is each pixel of the 9x8 grey thumbnail brighter than its left neighbour."""
    from PIL import Image

    g = np.asarray((grey.image if grey is not None else image.convert("L")).resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).reshape(-1)
    value = int.from_bytes(np.packbits(bits).tobytes(), "big")
    return value - (1 << 64) if value >= 1 << 63 else value  # signed, for Parquet int64


def pixel_features(image, grey: Grey | None = None) -> dict:
    """What the tag step stores per image: the pixel checks and the difference hash."""
    grey = grey or Grey.of(image)
    return {**pixel_scores(image, grey), "dhash": dhash(image, grey)}


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between int64 hashes, all pairs (len(a), len(b))."""
    x = np.asarray(a, np.int64).view(np.uint64)[:, None] ^ np.asarray(b, np.int64).view(np.uint64)[None, :]
    return np.bitwise_count(x).astype(np.int16)
