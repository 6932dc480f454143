"""What :func:`negset.select.step.choose` returns: the picks and, per pool row, what the selection found."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from negset.select.bands import Bands
from negset.select.evidence import Evidence
from negset.select.ledger import Ledger
from negset.select.picks import Pick


@dataclass
class Choice:
    """The negatives chosen (picks, with their reasons) and what the selection found for every pool row."""

    picks: list[Pick]  # in pick order
    reasons: list[str]  # one per pick
    evidence: Evidence  # per pool row: scene similarity, hardness, nearest positive
    ledger: Ledger  # per pool row: the first rule it broke, score, detail
    bands: Bands  # per pool row: band of the eligible candidates, and the band edges
    strata: list[dict]  # per stratum: positives, available (per band), quota, chosen
    want: int
    timings: dict[str, float] = field(default_factory=dict)
    axes: list[str] = field(default_factory=list)  # the stratum axes the quotas used
    dropped_axes: list[dict] = field(default_factory=list)  # axes left out (mostly unknown in the candidates)
    warnings: list[str] = field(default_factory=list)

    @property
    def rows(self) -> np.ndarray:
        """The chosen pool rows, in pick order."""
        return np.asarray([p.row for p in self.picks], np.int64)

    @property
    def fill(self) -> int:
        return sum(p.rule == "fill" for p in self.picks)

    @property
    def status(self) -> np.ndarray:
        """Per pool row: '' (chosen, eligible or positive) or the rule that left it out."""
        return self.ledger.status()
