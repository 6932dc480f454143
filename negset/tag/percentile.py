"""NumPy's default ("linear") percentiles from order statistics found without sorting the image.

``np.percentile`` partitions the whole array (about 3 ms for a 640 x 480
image) to find two order statistics per percentile. For 8-bit grey levels the
grey-level histogram (computed anyway for the entropy) gives every order
statistic directly; for a float image one ``np.partition`` at the ranks needed
gives them. The interpolation between them follows NumPy's linear method step
by step (virtual index ``(n - 1) * q / 100``, the same float64 weight and the
same two-sided formula), so the results are the very floats ``np.percentile``
returns (tests/tag/test_pixel_stats.py compares them on photos and random
arrays).
"""

from __future__ import annotations

import numpy as np


def _ranks(n: int, qs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(previous rank, next rank, float64 weight) of each percentile, as NumPy's linear method has them."""
    virtual = (n - 1) * np.true_divide(np.asarray(qs), 100)
    previous = np.floor(virtual)
    gamma = np.asanyarray(virtual - previous)
    previous = previous.astype(np.intp)
    upper = np.minimum(previous + 1, n - 1)
    top = virtual >= n - 1
    previous[top] = n - 1
    upper[top] = n - 1
    gamma = np.where(top, virtual - (-1), gamma)  # NumPy's index -1 there; both ends are the last value anyway
    return previous, upper, gamma


def _lerp(a: np.ndarray, b: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe")
    return out


def from_counts(counts: np.ndarray, qs, dtype=np.float32) -> np.ndarray:
    """Percentiles ``qs`` of the values 0..len(counts)-1 with these counts, as ``np.percentile`` of that
    array (cast to ``dtype``) gives them."""
    n = int(counts.sum())
    previous, upper, gamma = _ranks(n, qs)
    cumulative = np.cumsum(counts)
    value = np.arange(len(counts), dtype=dtype)
    a = value[np.searchsorted(cumulative, previous, side="right")]
    b = value[np.searchsorted(cumulative, upper, side="right")]
    return _lerp(a, b, gamma)


def of_monotone(values: np.ndarray, qs, transform) -> np.ndarray:
    """``np.percentile(transform(values), qs)`` for a non-decreasing element-wise ``transform`` (``np.sqrt``),
    applying it to the few order statistics needed instead of to every value."""
    flat = values.reshape(-1)
    previous, upper, gamma = _ranks(flat.size, qs)
    ranks = np.unique(np.concatenate([previous, upper]))
    part = np.partition(flat, ranks)
    return _lerp(transform(part[previous]), transform(part[upper]), gamma)
