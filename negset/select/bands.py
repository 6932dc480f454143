"""Bands of hardness: hard (distractors that look like the target), medium, context.

The edges are percentiles of the eligible candidates' hardness (``bands.by:
percentile``) or fixed similarities (``bands.by: similarity``); each
stratum's quota is then split over the bands by ``bands.mix``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from negset.core.config import Bands as BandParams

BANDS = ("hard", "medium", "context")


@dataclass
class Bands:
    code: np.ndarray  # int8 per pool row: index into BANDS, -1 = not eligible
    hard_from: float  # hardness at which the hard band starts (NaN: nothing eligible)
    medium_from: float

    def name_of(self, row: int) -> str:
        return BANDS[self.code[row]] if self.code[row] >= 0 else ""

    def edges(self, band: str) -> tuple[float, float]:
        """(lower, upper) hardness of a band."""
        return {"hard": (self.hard_from, 1.0), "medium": (self.medium_from, self.hard_from),
                "context": (-1.0, self.medium_from)}[band]

    def eligible(self) -> int:
        return int((self.code >= 0).sum())


def assign_bands(hardness: np.ndarray, eligible_rows: np.ndarray, cfg: BandParams) -> Bands:
    code = np.full(len(hardness), -1, np.int8)
    if not len(eligible_rows):
        return Bands(code, float("nan"), float("nan"))
    s = hardness[eligible_rows]
    if cfg.by == "percentile":
        hi, mid = float(np.percentile(s, cfg.hard)), float(np.percentile(s, cfg.medium))
    else:
        hi, mid = cfg.hard, cfg.medium
    code[eligible_rows] = np.where(s >= hi, 0, np.where(s >= mid, 1, 2))
    return Bands(code, hi, mid)
