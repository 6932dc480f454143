"""Readers of the detect step's outputs (what tag and select import).

``evidence(layout)`` is one row per ingested image (``data/detect/evidence.parquet``):

- ``sha256``, ``role`` (positive / candidate), ``labelled``;
- ``target_score``: the score of the strongest target detection (a target
  class, or a class ``detect.target_map`` maps to the target), taken from the
  source with the largest margin over its own threshold (with one source, or
  equal thresholds, the highest score over the sources); 0 when no source
  sees the target;
- ``target_source``, ``target_class``, ``target_box`` ([x0, y0, x1, y1] in
  image pixels): where that score comes from;
- ``target_threshold``: that source's calibrated threshold (``calibration``);
- ``detected_target``: ``target_score >= target_threshold``;
- ``confuser_score``, ``confuser_class``, ``confuser_source``,
  ``confuser_box``: the strongest detection of a ``detect.confusers`` class.

How select uses it (``negset/select/rules.py`` ``DetectedTarget``, ``picks.py``, ``evidence.py``):

1. quarantine: an unlabelled candidate with ``detected_target`` is a
   suspected positive: rule ``detected_target``, score = ``target_score``,
   reason naming ``target_source``, ``target_class`` and ``target_box``
   (listed in quarantine.csv, never chosen). A labelled candidate is a known
   negative and is not quarantined by a detector. A weak detection (under
   the threshold) on an unlabelled candidate that also looks like the
   positives (``select.weak_detection_percentile``) is quarantined too.
2. hard negatives by evidence: a candidate with ``0 < target_score <
   target_threshold`` (the detector fires weakly on the target) or with a
   ``confuser_score`` at or above the confuser's source threshold is a
   distractor; its hardness evidence is ``max(target_score / target_threshold,
   confuser_score)`` (a hardness signal beside object similarity, chosen in
   ``select.hardness``).
3. model false positives: a LABELLED candidate (a known negative) on which
   the user's own model (``kind`` model or predictions: ``user_model_hits``)
   fires on the target at its threshold is a false positive of that model:
   the most valuable hard negative, offered first, reason ``model false positive``.

``calibration(layout)`` is ``data/detect/calibration.json``: ``target_classes``,
``confusers`` and per source ``threshold`` (null when the source has no target
class), ``method`` (calibrated / floor / ceiling / fixed / uncalibrated),
``raw_threshold``, ``positives``, ``positives_found``, ``recall_at_threshold``,
``recall_wanted``, ``floor``, ``ceiling``, ``knows_target``, ``kind``
(``builtin``: a model shipped with negset; ``model``: the user's ONNX file;
``predictions``: the user's predictions) and, for detectors, ``speed``.

``user_model_hits(layout)`` are the target detections at or above the
threshold from the user's own model (``kind`` model or predictions): on a
labelled image without the target, these are the model's false positives.
``boxes_of(layout, shas)`` are the detections to draw (the report).
"""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow as pa

from negset.core import parquet as pq
from negset.core.errors import NegsetError
from negset.core.layout import Layout


def has_run(layout: Layout) -> bool:
    return (layout.detect / "evidence.parquet").exists()


def _need(layout: Layout, name: str):
    path = layout.detect / name
    if not path.exists():
        raise NegsetError(f"{path}: missing; the 'detect' step has not run", hint="run `negset detect` first")
    return path


def read_detections(layout: Layout, columns: list[str] | None = None) -> pa.Table:
    """``data/detect/detections.parquet``: sha256, source, class, score, x0, y0, x1, y1 (pixels), tile."""
    return pq.read_table(_need(layout, "detections.parquet"), columns=columns)


def evidence(layout: Layout) -> pa.Table:
    """One row per image: the target and confuser evidence (see the module docstring)."""
    return pq.read_table(_need(layout, "evidence.parquet"))


def calibration(layout: Layout) -> dict:
    """The thresholds and how each was found (see the module docstring)."""
    return json.loads(_need(layout, "calibration.json").read_text(encoding="utf-8"))


def object_classes(layout: Layout, min_score: float) -> dict[str, tuple[list[str], list[float]]]:
    """sha256 -> (classes, scores) of the detections scoring >= ``min_score`` (every source); {} when detect has not run."""
    if not has_run(layout):
        return {}
    t = read_detections(layout, ["sha256", "class", "score"]).to_pydict()
    out: dict[str, tuple[list[str], list[float]]] = defaultdict(lambda: ([], []))
    for sha, cls, score in zip(t["sha256"], t["class"], t["score"]):
        if score >= min_score:
            out[sha][0].append(cls)
            out[sha][1].append(float(score))
    return dict(out)


def object_boxes(layout: Layout, min_score: float) -> dict[str, tuple[list[tuple[float, float, float, float]], list[float], float]]:
    """sha256 -> (boxes normalised to [0, 1] scoring >= ``min_score``, their scores, the top score of all).

    Every detection of every source counts as an object. Only images a source looked at are
    listed (a detector looks at every image; a predictions file at those it names); {} when
    detect has not run.
    """
    if not has_run(layout):
        return {}
    import numpy as np

    t = read_detections(layout, ["sha256", "score", "x0", "y0", "x1", "y1"])
    im = pq.read_table(layout.ingest / "images.parquet", columns=["sha256", "width", "height"])
    shas = im.column("sha256").to_pylist()
    # each detection's row in images.parquet (-1: an image ingest no longer has), by way of its sha256's code
    where = {s: i for i, s in enumerate(shas)}
    codes = t.column("sha256").combine_chunks().dictionary_encode()
    row = np.array([where.get(s, -1) for s in codes.dictionary.to_pylist()], np.int64)[
        codes.indices.to_numpy(zero_copy_only=False)] if len(t) else np.zeros(0, np.int64)
    # one NumPy pass over every detection (the same float64 values a per-detection loop makes), then per image
    order = np.argsort(row, kind="stable")
    order = order[row[order] >= 0]
    row = row[order]
    score = t.column("score").to_numpy().astype(np.float64)[order]
    w = im.column("width").to_numpy().astype(np.float64)[row]
    h = im.column("height").to_numpy().astype(np.float64)[row]
    xy = np.stack([t.column(c).to_numpy().astype(np.float64)[order] for c in ("x0", "y0", "x1", "y1")], axis=1)
    xy = np.minimum(np.maximum(xy / np.stack([w, h, w, h], axis=1), 0.0), 1.0)
    out: dict[str, tuple[list, list, float]] = {}
    if len(row):
        starts = np.concatenate([[0], np.flatnonzero(np.diff(row)) + 1])
        top = np.maximum(np.maximum.reduceat(score, starts), 0.0).tolist()
        keep = score >= min_score
        kept = np.searchsorted(np.flatnonzero(keep), np.concatenate([starts, [len(row)]])).tolist()
        boxes, scores = [tuple(b) for b in xy[keep].tolist()], score[keep].tolist()
        for g, image in enumerate(row[starts].tolist()):
            lo, hi = kept[g], kept[g + 1]
            out[shas[image]] = (boxes[lo:hi], scores[lo:hi], top[g])
    looked_at = set(out)
    if any("speed" in c for c in calibration(layout)["sources"].values()):  # a detector looked at every image
        failed = set(pq.read_table(layout.detect / "rejected.parquet", columns=["sha256"]).column("sha256").to_pylist())
        looked_at |= set(evidence(layout).column("sha256").to_pylist()) - failed
    return {s: out.get(s, ([], [], 0.0)) for s in looked_at if s in where}


USER_KINDS = ("model", "predictions")


def user_model_hits(layout: Layout) -> dict[str, dict]:
    """sha256 -> the strongest target detection at or above its source's threshold, over the user's own sources.

    Each value: ``source``, ``class``, ``score``, ``threshold``, ``box`` (pixels). A source's kind comes
    from ``calibration.json`` (a shipped detector is not the user's model); {} when detect has not run.
    """
    from negset.detect.names import normalise

    if not has_run(layout):
        return {}
    cal = calibration(layout)
    thresholds = {n: c["threshold"] for n, c in cal["sources"].items()
                  if c.get("kind") in USER_KINDS and c.get("threshold") is not None}
    if not thresholds:
        return {}
    targets = set(cal["target_classes"])
    t = read_detections(layout, ["sha256", "source", "class", "score", "x0", "y0", "x1", "y1"]).to_pylist()
    out: dict[str, dict] = {}
    for r in t:
        thr = thresholds.get(r["source"])
        if thr is None or r["score"] < thr or normalise(r["class"]) not in targets:
            continue
        if r["sha256"] not in out or r["score"] - thr > out[r["sha256"]]["score"] - out[r["sha256"]]["threshold"]:
            out[r["sha256"]] = dict(source=r["source"], **{"class": r["class"]}, score=float(r["score"]), threshold=float(thr),
                                    box=[float(r[k]) for k in ("x0", "y0", "x1", "y1")])
    return out


def _among(table: pa.Table, shas: set[str]) -> pa.ChunkedArray:
    """Per row of ``table``: is its sha256 one of ``shas``."""
    import pyarrow.compute as pc

    return pc.is_in(table.column("sha256"), value_set=pa.array(sorted(shas), pa.string()))


def evidence_of(layout: Layout, shas: set[str]) -> list[dict]:
    """The evidence rows of ``shas`` (in file order)."""
    t = evidence(layout)
    return t.filter(_among(t, shas)).to_pylist()


def boxes_of(layout: Layout, shas: set[str], min_score: float = 0.0, per_image: int = 8) -> dict[str, list[dict]]:
    """sha256 -> up to ``per_image`` detections (source, class, score, box in pixels), strongest first, for ``shas``."""
    if not has_run(layout) or not shas:
        return {}
    t = read_detections(layout, ["sha256", "source", "class", "score", "x0", "y0", "x1", "y1"])
    t = t.filter(_among(t, shas)).to_pylist()  # the few images asked for, before a Python row is made
    out: dict[str, list[dict]] = defaultdict(list)
    for r in t:
        if r["score"] >= min_score:
            out[r["sha256"]].append(dict(source=r["source"], **{"class": r["class"]}, score=float(r["score"]),
                                         box=[float(r[k]) for k in ("x0", "y0", "x1", "y1")]))
    return {s: sorted(v, key=lambda d: -d["score"])[:per_image] for s, v in out.items()}
