"""Box arithmetic for detectors: per-class non-maximum suppression, tiles, letterboxing.

Boxes are float arrays of (x0, y0, x1, y1) in pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def iou_one(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``others``."""
    ix0 = np.maximum(box[0], others[:, 0])
    iy0 = np.maximum(box[1], others[:, 1])
    ix1 = np.minimum(box[2], others[:, 2])
    iy1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms_per_class(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Indices kept by greedy per-class NMS, highest score first, at most ``limit``.

    Boxes of different classes never suppress each other: each class's boxes
    are shifted by an offset larger than any coordinate (the batched-NMS trick).
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    offset = (float(np.abs(boxes).max()) + 1.0) * 2.0
    shifted = boxes + (classes.astype(np.float64) * offset)[:, None]
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while len(order) and len(keep) < limit:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        if not len(rest):
            break
        order = rest[iou_one(shifted[i], shifted[rest]) <= iou]
    return np.asarray(keep, np.int64)


def tile_windows(width: int, height: int, grid: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """The whole image, then a ``grid`` x ``grid`` of crops sharing ``overlap`` of their side with the next.

    With grid 2 and overlap 0.3 each tile is 1 / (2 - 0.3) = 59% of the side.
    """
    windows = [(0, 0, width, height)]
    if grid <= 1:
        return windows
    share = 1.0 / (grid - (grid - 1) * overlap)
    tw, th = max(1, round(width * share)), max(1, round(height * share))
    xs = np.linspace(0, width - tw, grid).round().astype(int)
    ys = np.linspace(0, height - th, grid).round().astype(int)
    windows += [(int(x), int(y), int(x) + tw, int(y) + th) for y in ys for x in xs]
    return windows


def cut_by_tile(boxes: np.ndarray, window: tuple[int, int, int, int], width: int, height: int, margin: float = 2.0) -> np.ndarray:
    """Which boxes touch an edge of the tile that is not an edge of the image (the object goes on beyond it)."""
    x0, y0, x1, y1 = window
    cut = np.zeros(len(boxes), bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + margin
    if x1 < width:
        cut |= boxes[:, 2] >= x1 - margin
    if y1 < height:
        cut |= boxes[:, 3] >= y1 - margin
    return cut


def letterbox(image: Image.Image, size: int, where: str, pad: float, stride: int = 0) -> tuple[np.ndarray, float, float, float]:
    """(HWC uint8 canvas, resize factor, x offset, y offset) of ``image`` fitted inside a square of ``size``.

    ``where``: ``topleft`` (YOLOX) or ``center`` (Ultralytics). ``stride`` > 0: the canvas is only as large as the
    resized image, each side rounded up to a multiple of ``stride`` (rectangular inference: the same scale, fewer
    pixels of padding); 0: the whole square. uint8 until the model's own conversion: a float canvas costs more
    than the model's input needs (measured 4x).
    """
    w, h = image.size
    r = min(size / w, size / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    resized = np.asarray(image.resize((nw, nh), Image.BILINEAR), dtype=np.uint8)
    cw, ch = (min(size, -(-nw // stride) * stride), min(size, -(-nh // stride) * stride)) if stride else (size, size)
    canvas = np.full((ch, cw, 3), int(round(pad)), dtype=np.uint8)
    dx, dy = ((cw - nw) // 2, (ch - nh) // 2) if where == "center" else (0, 0)
    canvas[dy : dy + nh, dx : dx + nw] = resized
    return canvas, r, float(dx), float(dy)
