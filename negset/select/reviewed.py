"""What a person decided in ``negset review`` (``reviews.csv``), as select applies it.

- ``contains_target``: the image is left out for good by the rule
  ``reviewed_positive`` and listed in ``data/select/new_positives.csv`` (and
  ``new_positives.coco.json``, images only) to be labelled;
- ``no_target``: the rules that only *suspect* a positive (``Rule.suspects_positive``:
  ``quarantine``) skip the image, so it is eligible again; if chosen, its reason
  says who reviewed it and when. Rules about facts (a label, a copy of a
  positive, quality, context) still apply;
- ``unsure``: changes nothing (a quarantined image stays quarantined).

A decision on an image that is not a candidate of this pool (gone from the
sources, or a positive) is kept in ``reviews.csv`` and ignored here; the
summary counts both (``reviews_applied``, ``reviews_ignored``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from negset.review.decisions import CONTAINS_TARGET, NO_TARGET, Review
from negset.select.ledger import Verdict
from negset.select.pool import Pool

log = logging.getLogger("negset.select")

RULE = "reviewed_positive"


@dataclass
class Reviewed:
    """The decisions in force on this pool's candidates, by pool row."""

    of_row: dict[int, Review]  # candidate pool row -> its decision (no_target, contains_target or unsure)
    negative: np.ndarray  # bool per pool row: reviewed no_target
    positive: np.ndarray  # bool per pool row: reviewed contains_target
    ignored: int  # decisions on images that are not candidates of this pool
    spared: dict[int, str] = field(default_factory=dict)  # row -> the suspecting rule a no_target review overrode

    @classmethod
    def none(cls, n: int) -> "Reviewed":
        return cls({}, np.zeros(n, bool), np.zeros(n, bool), 0)

    def spare(self, rule: str, verdict: Verdict, live: np.ndarray) -> Verdict:
        """The verdict of a rule that suspects a positive, without the live rows a person reviewed as no_target."""
        hit = verdict.mask & live & self.negative
        for r in np.flatnonzero(hit).tolist():
            self.spared.setdefault(r, rule)
        if hit.any():
            verdict.mask = verdict.mask & ~self.negative
        return verdict

    def reason_of(self, row: int, reason: str) -> str:
        """A chosen negative's reason, with the review behind it when a person decided no_target."""
        r = self.of_row.get(row)
        if r is None or r.decision != NO_TARGET:
            return reason
        rule = self.spared.get(row)
        what = f"suspected positive ({rule}) cleared: " if rule else ""
        return f"{reason}; {what}{r.describe()}"

    def counts(self) -> dict:
        decided: dict[str, int] = {}
        for r in self.of_row.values():
            decided[r.decision] = decided.get(r.decision, 0) + 1
        spared: dict[str, int] = {}
        for rule in self.spared.values():
            spared[rule] = spared.get(rule, 0) + 1
        return dict(reviews_applied=len(self.of_row), reviews_ignored=self.ignored,
                    reviews_by_decision=dict(sorted(decided.items())), reviews_cleared=dict(sorted(spared.items())))


def reviewed_in_pool(pool: Pool, reviews: dict[str, Review]) -> Reviewed:
    """The decisions of ``read_reviews`` that concern this pool's candidates (positives and unknown images ignored)."""
    n = len(pool.sha256)
    out = Reviewed.none(n)
    if not reviews:
        return out
    row_of = {s: i for i, s in enumerate(pool.sha256.tolist())}
    for sha, r in reviews.items():
        row = row_of.get(sha)
        if row is None or pool.positive[row]:
            out.ignored += 1
            continue
        out.of_row[row] = r
        out.negative[row] = r.decision == NO_TARGET
        out.positive[row] = r.decision == CONTAINS_TARGET
    if out.ignored:
        log.info("select: %d decision(s) of reviews.csv are on images that are not candidates now: kept, ignored",
                 out.ignored)
    return out


NEW_POSITIVES_SCHEMA = pa.schema([("sha256", pa.string()), ("uri", pa.string()), ("reviewer", pa.string()),
                                  ("time", pa.string()), ("queue", pa.string())])


def new_positive_rows(choice) -> list[int]:
    """The pool rows ``reviewed_positive`` left out, by uri."""
    led = choice.ledger
    return [int(r) for r in led.left_out(choice.evidence.pool.uri) if led.rule_of(r) == RULE]


def new_positives_table(choice, pool: Pool) -> pa.Table:
    """``new_positives.csv``: images a person found the target in, to be labelled (sha256, uri, reviewer, time, queue)."""
    of_row = choice.evidence.reviewed.of_row
    rows = [dict(sha256=pool.sha256[r], uri=pool.uri[r], reviewer=of_row[r].reviewer, time=of_row[r].time,
                 queue=of_row[r].queue) for r in new_positive_rows(choice)]
    return pa.Table.from_pylist(rows, schema=NEW_POSITIVES_SCHEMA)


def new_positives_coco(choice, pool: Pool, sizes: dict[str, tuple[int, int]], target: list[str], layout) -> dict:
    """The new positives as a COCO file for a labelling tool: the images and the target categories, no annotations.

    ``file_name`` is the image's path relative to the project (absolute where it
    lies outside); ``sha256`` is kept on each image to map the labels back.
    """
    images = []
    for i, r in enumerate(new_positive_rows(choice), 1):
        sha, uri = str(pool.sha256[r]), str(pool.uri[r])
        w, h = sizes.get(sha, (0, 0))
        name = str(layout.resolve_uri(uri)) if uri.startswith("file://") else uri
        images.append(dict(id=i, file_name=name, width=int(w), height=int(h), sha256=sha))
    return {
        "info": {"description": "negset: images a reviewer found the target in (reviews.csv), to be labelled",
                 "version": "1"},
        "licenses": [],
        "categories": [{"id": i, "name": t, "supercategory": t} for i, t in enumerate(target, 1)],
        "images": images,
        "annotations": [],
    }


def image_sizes(con, shas: list[str]) -> dict[str, tuple[int, int]]:
    """(width, height) of these images from the catalog's ``images`` table (for the COCO file)."""
    if not shas:
        return {}
    got = con.execute("SELECT sha256, width, height FROM images WHERE list_contains(?, sha256)", [shas]).fetchall()
    return {s: (int(w or 0), int(h or 0)) for s, w, h in got}
