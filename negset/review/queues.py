"""What ``negset review`` shows: the review queues of a built project, as cards.

- ``quarantine``: the suspected positives of ``data/select/quarantine.csv``,
  detections first, then most similar to the positives, each with its reason;
  then the suspects already decided in this queue that select has let go
  since (a ``no_target`` is eligible again, a ``contains_target`` a new
  positive), so the queue's progress counts every decision made in it;
- ``audit``: a seeded random sample of the chosen negatives
  (``data/negatives/manifest.parquet``; ``negset.review.audit.audit_sample``);
- ``hardest`` (``--hardest N``): the N chosen negatives most similar to the
  positives, leaving out those already in the audit.

Every card names its image by sha256 (the server looks the file up in the
ingest step's store), the nearest positive and its cosine similarity (from
``data/embed/embeddings.parquet`` when present), the reason text, and boxes to
draw: detections from ``data/detect/detections.parquet`` when that step has
run, else the best-matching crop of the region embeddings (``embed.regions``).
Anything optional that is missing just leaves its part of the card empty.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from negset.core import parquet as pq
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.review.audit import AUDIT_SIZE, audit_sample, quarantine_queue
from negset.review.decisions import NO_TARGET, read_reviews, reviews_path

log = logging.getLogger("negset.review")

DETECTIONS = Path("detect") / "detections.parquet"  # under data/: the detect step's output, when it exists


@dataclass
class Card:
    sha256: str
    uri: str
    queue: str
    reason: str = ""
    similarity: float | None = None  # hardness: similarity to the positives as the select step measured it
    nearest: dict | None = None  # {sha256, uri, similarity}: the most similar positive
    boxes: list[dict] = field(default_factory=list)  # {box: [x0, y0, x1, y1] in 0..1, label, score, kind}
    width: int = 0
    height: int = 0

    def to_dict(self) -> dict:
        return dict(sha256=self.sha256, uri=self.uri, queue=self.queue, reason=self.reason,
                    similarity=self.similarity, nearest=self.nearest, boxes=self.boxes,
                    width=self.width, height=self.height)


def _need(path: Path, step: str) -> Path:
    if not path.exists():
        raise NegsetError(f"{path}: missing; `negset review` reviews a built project",
                          hint=f"build it first (`dvc repro` or `negset build`; this file comes from `negset {step}`)")
    return path


def read_quarantine(path: Path) -> list[dict]:
    """Rows of quarantine.csv (uri, sha256, similarity, ...); none when the file does not exist."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for i, r in enumerate(rows, start=2):
        if not r.get("sha256"):
            raise NegsetError(f"{path}:{i}: no sha256", hint="rebuild it with `negset select`")
    return rows


def _float(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


class Project:
    """The built project's images and queues (read once when the server starts)."""

    def __init__(self, layout: Layout, audit: int = AUDIT_SIZE, hardest: int = 0):
        self.layout = layout
        images = pq.read_table(_need(layout.ingest / "images.parquet", "ingest")).to_pylist()
        self.images = {r["sha256"]: r for r in images}
        manifest = pq.read_table(_need(layout.negatives / "manifest.parquet", "export")).to_pylist()
        self.negatives = [r["sha256"] for r in manifest]
        quarantine = {r["sha256"]: r for r in read_quarantine(layout.select / "quarantine.csv") if r["sha256"] in self.images}
        reasons = self._quarantine_reasons()
        reviews = read_reviews(reviews_path(layout))
        candidates = {s for s, r in self.images.items() if r.get("role") == "candidate"}
        self.queues: dict[str, list[Card]] = {}
        self.queues["quarantine"] = []
        # what quarantine.csv holds back, then the suspects decided here already (select has let them go since), so
        # the queue's progress counts every decision made in it
        for sha in quarantine_queue(quarantine, reviews, candidates):
            row = quarantine.get(sha)
            if row is not None:
                reason = row.get("reason") or reasons.get(sha, "suspected positive (quarantine)")
                self.queues["quarantine"].append(self._card(sha, "quarantine", reason, _float(row.get("similarity"))))
            else:
                done = reviews[sha]
                after = "eligible again" if done.decision == NO_TARGET else "left out, listed in new_positives.csv"
                self.queues["quarantine"].append(
                    self._card(sha, "quarantine", f"suspected positive, decided: {done.describe()}; {after}", None))
        by_sha = {r["sha256"]: r for r in manifest}
        sample = audit_sample(self.negatives, audit)
        self.queues["audit"] = [
            self._card(s, "audit", by_sha[s].get("reason") or "", _float(by_sha[s].get("pos_similarity"))) for s in sample
        ]
        if hardest > 0:
            in_audit = set(sample)
            rest = [r for r in manifest if r["sha256"] not in in_audit]
            rest.sort(key=lambda r: (-(_float(r.get("pos_similarity")) or 0.0), r["sha256"]))
            self.queues["hardest"] = [
                self._card(r["sha256"], "hardest", r.get("reason") or "", _float(r.get("pos_similarity")))
                for r in rest[:hardest]
            ]
        self.cards = {c.sha256: c for cards in self.queues.values() for c in cards}
        self._add_nearest_positives()
        self._add_boxes()

    # ------------------------------------------------------------ building

    def _card(self, sha: str, queue: str, reason: str, similarity: float | None) -> Card:
        im = self.images.get(sha, {})
        return Card(sha, im.get("uri", sha), queue, reason, similarity,
                    width=int(im.get("width") or 0), height=int(im.get("height") or 0))

    def _quarantine_reasons(self) -> dict[str, str]:
        path = self.layout.select / "rejected.parquet"
        if not path.exists():
            return {}
        t = pq.read_table(path)
        if not {"sha256", "rule", "reason"} <= set(t.column_names):
            return {}
        return {r["sha256"]: r["reason"] for r in t.select(["sha256", "rule", "reason"]).to_pylist()
                if r["rule"] == "quarantine" and r["sha256"]}

    def _add_nearest_positives(self) -> None:
        path = self.layout.embed / "embeddings.parquet"
        if not path.exists() or not self.cards:
            return
        from negset.embed.store import read_embeddings

        shas, vectors = read_embeddings(self.layout)
        index = {s: i for i, s in enumerate(shas)}
        pos = [i for i, s in enumerate(shas) if self.images.get(s, {}).get("role") == "positive"]
        want = [s for s in self.cards if s in index]
        if not pos or not want:
            return
        P = vectors[pos]
        for start in range(0, len(want), 1024):
            chunk = want[start : start + 1024]
            sims = vectors[[index[s] for s in chunk]] @ P.T
            best = np.argmax(sims, axis=1)
            for s, b, row in zip(chunk, best, sims):
                psha = shas[pos[int(b)]]
                im = self.images[psha]
                self.cards[s].nearest = dict(sha256=psha, uri=im["uri"], similarity=round(float(row[b]), 4),
                                             width=int(im.get("width") or 0), height=int(im.get("height") or 0))

    def _add_boxes(self) -> None:
        if self._add_detections():
            return
        self._add_best_crops()

    def _add_detections(self) -> bool:
        """Boxes from ``data/detect/detections.parquet`` (sha256, box or x0..y1, label, score), when it exists."""
        path = self.layout.data / DETECTIONS
        if not path.exists():
            return False
        try:
            t = pq.read_table(path)
        except Exception as exc:  # another step's file: a bad one costs the drawing, not the review
            log.warning("%s: not readable, no detections drawn: %s", path, exc)
            return False
        names = set(t.column_names)
        if "sha256" not in names or not ({"box"} <= names or {"x0", "y0", "x1", "y1"} <= names):
            log.warning("%s: no sha256 and box columns, no detections drawn", path)
            return False
        n = 0
        for r in t.to_pylist():
            card = self.cards.get(r["sha256"])
            if card is None:
                continue
            box = r["box"] if "box" in r else [r["x0"], r["y0"], r["x1"], r["y1"]]
            norm = self._normalise(box, card)
            if norm is None:
                continue
            label = r.get("label") or r.get("cls") or r.get("class") or r.get("category") or "detection"
            card.boxes.append(dict(box=norm, label=str(label), score=_float(r.get("score")), kind="detection"))
            n += 1
        return n > 0

    @staticmethod
    def _normalise(box, card: Card) -> list[float] | None:
        """A box as fractions of the upright image: pixel boxes are divided by its size."""
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            return None
        if max(x0, y0, x1, y1) > 1.0:
            if not (card.width and card.height):
                return None
            x0, x1, y0, y1 = x0 / card.width, x1 / card.width, y0 / card.height, y1 / card.height
        box = [min(1.0, max(0.0, v)) for v in (x0, y0, x1, y1)]
        return [round(v, 4) for v in box] if box[2] > box[0] and box[3] > box[1] else None

    def _add_best_crops(self) -> None:
        """The grid crop most similar to a target object of the positives (what made the image hard)."""
        from negset.embed.store import read_regions

        try:
            regions = read_regions(self.layout)
        except NegsetError as exc:
            log.warning("no best crops drawn: %s", exc)
            return
        if regions is None:
            return
        shas, kinds, vec = regions
        boxes = pq.read_table(self.layout.embed / "regions.parquet", columns=["box"]).column("box").to_pylist()
        objects = np.flatnonzero(kinds == "object")
        if not len(objects):
            return
        O = np.asarray(vec[objects], np.float32)
        rows: dict[str, list[int]] = {}
        for i, (s, k) in enumerate(zip(shas, kinds)):
            if k == "grid" and s in self.cards:
                rows.setdefault(s, []).append(i)
        for s, idx in rows.items():
            sims = np.asarray(vec[idx], np.float32) @ O.T
            best = int(np.argmax(sims.max(axis=1)))
            card = self.cards[s]
            norm = self._normalise(boxes[idx[best]], card)
            if norm is not None:
                card.boxes.append(dict(box=norm, label="best crop", score=round(float(sims[best].max()), 4), kind="crop"))

    # ------------------------------------------------------------ queries

    def queue_names(self) -> list[str]:
        return list(self.queues)

    def page(self, queue: str, offset: int, limit: int) -> list[dict]:
        return [c.to_dict() for c in self.queues[queue][offset : offset + limit]]

    def image_file(self, sha256: str) -> Path | None:
        """The stored file of an image known to the catalog (None otherwise): the only files served."""
        if sha256 not in self.images:
            return None
        path = self.layout.object_path(sha256)
        return path if path.is_file() else None
