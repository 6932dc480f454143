"""The proxies of ``negset evaluate``: small probes trained on the positives against a negative set.

Each proxy trains a balanced L2 logistic regression (numpy) on frozen
features and measures the false-positive rate on the held-out confusers at
the threshold that keeps ``recall`` of the held-out positives. They differ
in what a "positive" and a "firing" are:

- ``image``: one whole-image vector per image (what the first version
  measured). Sees scenes more than objects; 4-6 held-out positives set the
  threshold.
- ``regions``: multiple-instance, like a detector that fires on a region. A
  positive contributes its target objects (crops around the boxes); a
  negative image contributes its whole image and every grid crop, all
  negative. A held-out image fires when its best instance (whole image or
  crop) passes the threshold; the threshold is set on the held-out target
  objects (more than one per image where there are several).
- ``detector``: the detector's evidence as features (per class, the image's
  highest detection score); what a re-weighting of a fixed detector's outputs
  can learn from the negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def fit_probe(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 30):
    """L2 logistic regression with balanced class weights (Newton steps); returns a scorer.

    With more rows than dimensions the steps run on X itself; else in the span
    of X's rows, from the eigenvectors of the Gram matrix X X^T (n x n: a few
    dozen images of 1280 dimensions, about 50 times faster than an SVD of X,
    the same solution).
    """
    X = np.asarray(X, np.float64)
    if X.shape[0] > X.shape[1]:
        Z, back = X, None
    else:
        evals, U = np.linalg.eigh(X @ X.T)
        keep = evals > max(float(evals[-1]), 1e-30) * 1e-10
        sv, U = np.sqrt(evals[keep]), U[:, keep]
        Z, back = U * sv, (U, sv)  # Z = X V, V the right singular vectors
    Z = np.hstack([Z, np.ones((len(X), 1))])
    sw = np.where(y == 1, 0.5 / max(1, (y == 1).sum()), 0.5 / max(1, (y == 0).sum()))
    w = np.zeros(Z.shape[1])
    reg = np.full(Z.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(Z @ w, -30, 30)))
        g = Z.T @ (sw * (p - y)) + reg * w
        H = (Z * (sw * p * (1 - p))[:, None]).T @ Z + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    coef = w[:-1] if back is None else X.T @ (back[0] @ (w[:-1] / back[1]))
    bias = w[-1]
    return lambda Xt: np.asarray(Xt, np.float64) @ coef + bias


def fpr_at_recall(pos_scores: np.ndarray, neg_scores: np.ndarray, recall: float = 0.95) -> float:
    """False-positive rate at the highest threshold that keeps ``recall`` of the positives."""
    if not len(pos_scores) or not len(neg_scores):
        return float("nan")
    s = np.sort(pos_scores)[::-1]
    need = int(np.ceil(recall * len(s)))
    thr = s[need - 1]
    return float((neg_scores >= thr).mean())


@dataclass
class Features:
    """What the probes read, per image row of the evaluated pool (computed once per target)."""

    vectors: np.ndarray  # (n, d) float32 whole-image vectors
    objects: np.ndarray | None  # (k, d) float32 target objects (crops around the target's boxes)
    object_owner: np.ndarray | None  # (k,) image row of each object
    windows: np.ndarray | None = None  # (r, d) float32: every image's whole vector, grid crops, labelled objects
    window_owner: np.ndarray | None = None  # (r,) image row of each window, ascending
    window_kind: np.ndarray | None = None  # (r,) 'image' | 'grid' | 'object'
    confuser_window: np.ndarray | None = None  # (r,) bool: a labelled object of a confuser class
    detections: np.ndarray | None = None  # (n, C) float32: per class, the image's best detection score (0 = none)
    image_windows: np.ndarray | None = None  # (n, dims): the whole-image vectors in the windows' space (projected)


def image_probe(f: Features, train_pos, negatives, test_pos, test_neg, recall: float) -> float:
    X = np.vstack([f.vectors[train_pos], f.vectors[negatives]])
    y = np.r_[np.ones(len(train_pos)), np.zeros(len(negatives))]
    score = fit_probe(X, y)
    return fpr_at_recall(score(f.vectors[test_pos]), score(f.vectors[test_neg]), recall)


REGION_DIMS = 256  # the regions probe runs on the top principal components of the target's windows


def project(f: Features, dims: int = REGION_DIMS) -> Features:
    """The windows, objects and whole-image vectors on the top ``dims`` principal axes of all windows (unsupervised).

    The regions probe trains on hundreds of windows per split: in 256 dimensions (about 80% of the variance of
    COCO128's windows) its Newton steps cost a few milliseconds, not a second.
    """
    if f.windows is None or f.windows.shape[1] <= dims:
        return f
    mean = f.windows.mean(axis=0)
    _, _, vt = np.linalg.svd(f.windows - mean, full_matrices=False)
    axes = vt[:dims].T.astype(np.float32)
    return Features(vectors=f.vectors, objects=f.objects @ axes, object_owner=f.object_owner,
                    windows=f.windows @ axes, window_owner=f.window_owner, window_kind=f.window_kind,
                    confuser_window=f.confuser_window, detections=f.detections, image_windows=f.vectors @ axes)


def _objects_of(f: Features, rows: np.ndarray) -> np.ndarray:
    """The target objects of these images; an image with none (objects under 32 px) gives its whole image."""
    have = np.isin(f.object_owner, rows)
    missing = np.setdiff1d(rows, f.object_owner[have])
    whole = f.vectors if f.image_windows is None else f.image_windows
    return np.vstack([f.objects[have], whole[missing]])


def region_probe(f: Features, train_pos, negatives, test_pos, test_neg, recall: float) -> float:
    """Multiple-instance: the positives' target objects against every window of the negative images; the rate
    is over the confuser objects of the held-out confuser images (does it fire on the cat, not on the photo)."""
    P = _objects_of(f, train_pos)
    N = f.windows[np.isin(f.window_owner, negatives)]
    score = fit_probe(np.vstack([P, N]), np.r_[np.ones(len(P)), np.zeros(len(N))])
    confusers = f.windows[f.confuser_window & np.isin(f.window_owner, test_neg)]
    return fpr_at_recall(score(_objects_of(f, test_pos)), score(confusers), recall)


def detector_probe(f: Features, train_pos, negatives, test_pos, test_neg, recall: float) -> float:
    D = f.detections
    X = np.vstack([D[train_pos], D[negatives]])
    score = fit_probe(X, np.r_[np.ones(len(train_pos)), np.zeros(len(negatives))])
    return fpr_at_recall(score(D[test_pos]), score(D[test_neg]), recall)


# name -> (probe, what it needs in Features); the order is the report's
PROXIES = {
    "regions": (region_probe, "windows"),
    "image": (image_probe, "vectors"),
    "detector": (detector_probe, "detections"),
}


def available(f: Features) -> list[str]:
    """The proxies these features allow (regions need embed.regions, detector the detect step)."""
    return [name for name, (_, need) in PROXIES.items() if getattr(f, need) is not None]
