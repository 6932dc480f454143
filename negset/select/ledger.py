"""The ledger: for each image, the FIRST rule it broke, with that rule's score and detail.

Rules run in precedence order (``negset.select.rules.PIPELINE``); an image a
rule already left out is not judged again by a later one, so each rejected
image is listed once, under its first rule. ``rejected.parquet`` is the
ledger, with each rule's ``explain`` as the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Verdict:
    """What a rule found: which pool rows broke it, their score and, for some, a detail for the reason."""

    mask: np.ndarray  # bool per pool row
    score: np.ndarray | float  # per pool row (or one value for every row)
    detail: dict[int, str] = field(default_factory=dict)  # pool row -> evidence the reason names
    facts: dict = field(default_factory=dict)  # what the rule derived for the whole pool (thresholds)


class Ledger:
    def __init__(self, candidates: np.ndarray, rules: tuple[str, ...]):
        self.rules = rules
        self.candidates = candidates
        n = len(candidates)
        self.code = np.zeros(n, np.int16)  # 0 = not left out; else 1 + index into rules
        self.score = np.full(n, np.nan, np.float64)
        self.detail: dict[int, str] = {}
        self.facts: dict[str, dict] = {}

    def live(self) -> np.ndarray:
        """Candidates no rule has left out yet."""
        return self.candidates & (self.code == 0)

    def record(self, rule: str, verdict: Verdict) -> np.ndarray:
        """Leave out the rows that broke ``rule`` and broke no rule before; returns those rows' mask."""
        m = verdict.mask & self.live()
        self.code[m] = self.rules.index(rule) + 1
        s = verdict.score
        self.score[m] = s[m] if isinstance(s, np.ndarray) else s
        self.detail.update((r, d) for r, d in verdict.detail.items() if m[r])
        self.facts.setdefault(rule, {}).update(verdict.facts)
        return m

    def status(self) -> np.ndarray:
        """Per pool row: '' (not left out) or the rule that left it out."""
        out = np.full(len(self.code), "", dtype=object)
        left = self.code > 0
        out[left] = np.asarray(self.rules, dtype=object)[self.code[left] - 1]
        return out

    def rule_of(self, row: int) -> str:
        return self.rules[self.code[row] - 1] if self.code[row] else ""

    def left_out(self, names: np.ndarray) -> np.ndarray:
        """The rows left out, by precedence of their rule, then by ``names`` (uri)."""
        rows = np.flatnonzero(self.code > 0)
        return rows[np.lexsort((names[rows].astype(str), self.code[rows]))]

    def counts(self) -> dict[str, int]:
        """Images left out per rule (rules that left out none are not listed), by name."""
        codes, n = np.unique(self.code[self.code > 0], return_counts=True)
        return dict(sorted((self.rules[c - 1], int(k)) for c, k in zip(codes, n)))
