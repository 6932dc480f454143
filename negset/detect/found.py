"""One detect source's detections as columns: what the detect step calibrates on and writes.

A detector's cache holds one row per image (lists of classes, scores, boxes,
tiles); a predictions file gives one dict per detection. ``Found`` keeps them
as NumPy columns (row ``i``: image ``shas[image[i]]``, class ``names[cls[i]]``),
so a pool of 10,000 images and 130,000 detections is calibrated, reduced to
each image's strongest target and confuser, and written without a Python
object per detection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from negset.detect.names import normalise


@dataclass
class Found:
    shas: list[str]  # the images the rows refer to (``image`` indexes this list)
    names: list[str]  # class names (``cls`` indexes this list)
    image: np.ndarray  # int64
    cls: np.ndarray  # int64
    score: np.ndarray  # float64
    box: np.ndarray  # (n, 4) float64: x0, y0, x1, y1 in image pixels
    tile: np.ndarray  # int64: 0 = whole image, 1.. = the tile that found it

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def from_cached(cls, names: list[str], hits: list[tuple[str, dict]]) -> "Found":
        """From a detector's cached rows ``(sha256, {cls, score, box, tile})``, in that order."""
        shas, counts, classes, scores, boxes, tiles = [], [], [], [], [], []
        for sha, hit in hits:
            shas.append(sha)
            counts.append(len(hit["cls"]))
            classes += hit["cls"]
            scores += hit["score"]
            boxes += hit["box"]
            tiles += hit["tile"]
        return cls(shas, list(names), np.repeat(np.arange(len(shas)), counts), np.asarray(classes, np.int64),
                   np.asarray(scores, np.float64), np.asarray(boxes, np.float64).reshape(-1, 4),
                   np.asarray(tiles, np.int64))

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "Found":
        """From one dict per detection (sha256, cls name, score, x0, y0, x1, y1, optional tile), in that order."""
        shas: dict[str, int] = {}
        names: dict[str, int] = {}
        image = np.fromiter((shas.setdefault(r["sha256"], len(shas)) for r in rows), np.int64, len(rows))
        classes = np.fromiter((names.setdefault(r["cls"], len(names)) for r in rows), np.int64, len(rows))
        box = np.array([(r["x0"], r["y0"], r["x1"], r["y1"]) for r in rows], np.float64).reshape(-1, 4)
        return cls(list(shas), list(names), image, classes, np.array([r["score"] for r in rows], np.float64), box,
                   np.array([r.get("tile", 0) for r in rows], np.int64))

    def images(self) -> set[str]:
        """The images with at least one detection."""
        return {self.shas[i] for i in np.unique(self.image)}

    def class_names(self) -> set[str]:
        """The classes detected at least once."""
        return {self.names[i] for i in np.unique(self.cls)}

    def strongest(self, wanted: set[str]) -> dict[str, tuple]:
        """sha256 -> (score, class, box) of each image's highest-scoring detection of a class in ``wanted``
        (normalised names); of equal scores the first row's."""
        hit = np.array([normalise(n) in wanted for n in self.names], bool)
        rows = np.flatnonzero(hit[self.cls]) if hit.any() else np.zeros(0, np.int64)
        if not len(rows):
            return {}
        rows = rows[np.lexsort((-self.score[rows], self.image[rows]))]  # by image, then score high to low (stable)
        first = rows[np.r_[True, self.image[rows][1:] != self.image[rows][:-1]]]
        return {self.shas[self.image[i]]: (float(self.score[i]), self.names[self.cls[i]], tuple(self.box[i]))
                for i in first}

    def table(self, source: str) -> pa.Table:
        """The rows as ``detections.parquet`` columns (sha256, source, class, score, x0..y1, tile), float64 as held."""
        n = len(self)
        sha = pa.array(self.shas, pa.string()).take(pa.array(self.image)) if n else pa.array([], pa.string())
        names = pa.array(self.names, pa.string()).take(pa.array(self.cls)) if n else pa.array([], pa.string())
        cols = {"sha256": sha, "source": pa.array([source] * n, pa.string()), "class": names,
                "score": pa.array(self.score, pa.float64())}
        cols.update({k: pa.array(self.box[:, j], pa.float64()) for j, k in enumerate(("x0", "y0", "x1", "y1"))})
        cols["tile"] = pa.array(self.tile, pa.int64())
        return pa.table(cols)
