"""The tag step's pixel statistics found without sorting equal the np.percentile definitions, float for float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from negset.core.imageio import load_rgb
from negset.tag import percentile, quality
from negset.tag.lighting import luminance_stats

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "coco-sample" / "images"


def reference_stats(image: Image.Image) -> dict:
    """The statistics by their definitions (np.percentile over every pixel), as the tag step computed them
    before the histogram and partition shortcuts."""
    rgb = np.asarray(image, dtype=np.float32)
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    p5, p50, p95 = np.percentile(gray, [5, 50, 95])
    bright = quality._brightness(np.asarray(image.convert("RGB")))
    b5, b99 = np.percentile(bright, [5, 99])
    return dict(luma_p5=float(p5), luma_p50=float(p50), luma_p95=float(p95), luma_mean=float(gray.mean()),
                luma_std=float(gray.std()), clipped_dark=float((gray <= 5).mean()),
                clipped_bright=float((gray >= 250).mean()), contrast=float((p95 - p5) / 255.0),
                rb_ratio=(float(rgb[..., 0].mean()) + 1.0) / (float(rgb[..., 2].mean()) + 1.0) if rgb.ndim == 3 else 1.0,
                q_dark=float(np.clip(b99, 0, 1)), q_light=float(np.clip(1.0 - b5, 0, 1)))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 101, 4096, 307_200])
def test_percentiles_from_counts_and_partition_equal_numpy(n):
    rng = np.random.default_rng(n)
    qs = [0, 1, 5, 50, 95, 99, 99.9, 100]
    for levels in (rng.integers(0, 256, n), rng.integers(100, 103, n), np.full(n, 7)):
        counts = np.bincount(levels, minlength=256)
        want = np.percentile(levels.astype(np.float32), qs)
        got = percentile.from_counts(counts, qs)
        assert got.dtype == want.dtype and np.array_equal(got, want), (n, got, want)
    values = rng.random(n, dtype=np.float32) ** 3
    want = np.percentile(np.sqrt(values), qs)
    got = percentile.of_monotone(values, qs, np.sqrt)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert values.shape == (n,)  # the caller's array is not reordered in place


def test_brightness_squares_from_tables_equal_the_float_formula():
    rgb = np.random.default_rng(0).integers(0, 256, (61, 47, 3), dtype=np.uint8)
    assert np.array_equal(np.sqrt(quality._brightness_squared(rgb)), quality._brightness(rgb))


def photos() -> list[Image.Image]:
    paths = sorted(SAMPLE.glob("*.jpg"))[:6]
    assert paths, f"no sample photos in {SAMPLE}"
    images = [load_rgb(p, reduce_to=256) for p in paths]
    # a dark one, a grey (mode L) one and a clipped one, so the tails and other modes are covered
    images.append(Image.eval(images[0], lambda v: v // 12))
    images.append(images[1].convert("L"))
    images.append(ImageOps.autocontrast(images[2], cutoff=20))
    return images


def test_tag_statistics_equal_their_definitions_on_photos():
    for image in photos():
        grey = quality.Grey.of(image)
        got = {**luminance_stats(image, grey), **quality.pixel_scores(image, grey)}
        want = reference_stats(image)
        assert {k: got[k] for k in want} == want, image.mode
        # the shared Grey changes nothing against computing each statistic alone
        assert luminance_stats(image) == luminance_stats(image, grey)
        assert quality.pixel_features(image) == quality.pixel_features(image, grey)
