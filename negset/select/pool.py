"""The pool select works on: one row per image (positives and candidates), as arrays.

:func:`load_pool` reads it from the image catalog, the tags, the embeddings
and (when embedded) the region crops; vectors stay a float16 memory map where
they are one, so a pool of a million candidates never becomes Python lists.
``negset.tools.evaluate`` reads pools through here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from negset.core import catalog
from negset.core.layout import Layout
from negset.tag import quality


@dataclass
class Detections:
    """The detect step's evidence per pool row (``negset/detect/store.py``): the target and the confusers."""

    target_score: np.ndarray  # float64, 0 = no target detection
    threshold: np.ndarray  # float64: the calibrated threshold of the source that gave target_score; NaN = none
    detected: np.ndarray  # bool: target_score >= threshold
    source: np.ndarray  # object: source name of the target evidence (None)
    cls: np.ndarray  # object: detector class of it
    box: np.ndarray  # object: [x0, y0, x1, y1] pixels (None)
    confuser_score: np.ndarray  # float64
    confuser_threshold: np.ndarray  # float64: threshold of the confuser's source; NaN = none
    confuser_class: np.ndarray  # object
    user_hit: np.ndarray  # object: the user's own model's target detection at its threshold (dict) or None

    def take(self, idx: np.ndarray) -> "Detections":
        return Detections(**{k: v[idx] for k, v in self.__dict__.items()})

    def evidence_hardness(self) -> np.ndarray:
        """Distractor evidence in [0, 1]: a weak target score relative to its threshold, or a confuser's."""
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(self.threshold > 0, self.target_score / self.threshold, 0.0)
            c = np.where(self.confuser_threshold > 0, self.confuser_score / self.confuser_threshold, self.confuser_score)
        return np.clip(np.nan_to_num(np.maximum(t, c)), 0.0, 1.0)

    def distractor_evidence(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Per row (all, or ``rows``), what could pass for the target (select's detector distractors): a confuser
        class's score relative to its source's target threshold. A target detection never counts: on an unlabelled
        image it may be the target, and on COCO128 near misses on labelled negatives (often unlabelled targets)
        made the chosen sets worse (README, Detector distractors)."""
        score, thr = (self.confuser_score, self.confuser_threshold) if rows is None else (
            self.confuser_score[rows], self.confuser_threshold[rows])
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num(np.where(thr > 0, score / thr, 0.0))


@dataclass
class Pool:
    """One row per image (positives and candidates)."""

    sha256: np.ndarray  # str
    vectors: np.ndarray  # (n, d) unit rows; float16/float32; may be a memmap
    positive: np.ndarray  # bool
    has_target: np.ndarray  # bool
    stratum: np.ndarray  # int codes into stratum_names
    stratum_names: list[str]
    background: np.ndarray | None = None  # int cluster id
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # q_<check>: [0, 1], NaN = unknown
    area: np.ndarray | None = None  # pixels, prefers larger images inside a duplicate group
    uri: np.ndarray | None = None
    labelled: np.ndarray | None = None  # bool; labelled candidates are known negatives (never quarantined)
    dhash: np.ndarray | None = None  # int64 difference hash (negset.quality.dhash)
    # region embeddings (negset.regions): crops of images and the positives' target objects
    region_vectors: np.ndarray | None = None  # (r, d) unit rows, float16; may be a memmap
    region_owner: np.ndarray | None = None  # pool row of each region, -1 = none (skipped)
    object_vectors: np.ndarray | None = None  # (m, d) target objects cropped from positives
    object_owner: np.ndarray | None = None  # pool row of each object
    detections: Detections | None = None  # the detect step's evidence; None when detect has not run
    axis_values: dict[str, np.ndarray] | None = None  # stratum axis -> tag value per row (object)

    def name_of(self, row: int) -> str:
        """How reasons name an image: its uri (the sha256 where the pool has none)."""
        return str(self.uri[row] if self.uri is not None else self.sha256[row])

    def subset(self, idx: np.ndarray, positive: np.ndarray | None = None) -> Pool:
        """The rows ``idx`` (in that order) as a pool of their own; regions and objects follow their rows."""
        idx = np.asarray(idx, np.int64)
        remap = np.full(len(self.sha256), -1, np.int64)
        remap[idx] = np.arange(len(idx))

        def rows(a):
            return None if a is None else a[idx]

        def follow(vectors, owner):
            if vectors is None:
                return None, None
            new_owner = owner_rows(owner, remap)
            keep = new_owner >= 0
            return vectors[keep], new_owner[keep]

        rv, ro = follow(self.region_vectors, self.region_owner)
        ov, oo = follow(self.object_vectors, self.object_owner)
        return Pool(
            sha256=self.sha256[idx], vectors=self.vectors[idx],
            positive=self.positive[idx] if positive is None else positive,
            has_target=self.has_target[idx], stratum=self.stratum[idx], stratum_names=self.stratum_names,
            background=rows(self.background), scores={k: v[idx] for k, v in self.scores.items()},
            area=rows(self.area), uri=rows(self.uri), labelled=rows(self.labelled), dhash=rows(self.dhash),
            region_vectors=rv, region_owner=ro, object_vectors=ov, object_owner=oo,
            detections=None if self.detections is None else self.detections.take(idx),
            axis_values=None if self.axis_values is None else {k: v[idx] for k, v in self.axis_values.items()},
        )

    def restratified(self, axes: list[str]) -> "Pool":
        """The same pool with strata over ``axes`` only (a subset of ``axis_values``)."""
        from dataclasses import replace

        strata = [" | ".join(str(self.axis_values[a][i]) for a in axes) or "all" for i in range(len(self.sha256))]
        names = sorted(set(strata))
        code = {s: i for i, s in enumerate(names)}
        return replace(self, stratum=np.asarray([code[s] for s in strata], np.int32), stratum_names=names)


def owner_rows(owner: np.ndarray, position: np.ndarray) -> np.ndarray:
    """``position[owner]``, where an owner of -1 (no pool row) stays -1."""
    owner = np.asarray(owner, np.int64)
    return np.where(owner >= 0, position[np.maximum(owner, 0)], -1) if len(position) else np.full(len(owner), -1)


def load_pool(con, layout: Layout, axes: list[str]) -> Pool:
    """The catalog's images joined with their tags (by sha256), strata over ``axes``, embeddings and regions."""
    from negset.embed.store import read_embeddings

    catalog.load(con, layout, "images", "tags")
    tag_cols = {r[0] for r in con.execute("DESCRIBE tags").fetchall()}
    qcols = [f"q_{c}" for c in quality.PIXEL_CHECKS if f"q_{c}" in tag_cols]
    hash_sql = ", t.dhash" if "dhash" in tag_cols else ""
    stratum_sql = " || ' | ' || ".join(f"t.{a}" for a in axes)
    axis_sql = "".join(f", t.{a} AS axis_{a}" for a in axes)
    t = con.sql(
        f"""
        SELECT i.sha256, i.uri, i.role = 'positive' AS positive, coalesce(i.has_target, false) AS has_target,
               coalesce(i.labelled, false) AS labelled,
               i.width, i.height, {stratum_sql} AS stratum, t.background_cluster{axis_sql}
               {''.join(', t.' + c for c in qcols)}{hash_sql}
        FROM images i JOIN tags t USING (sha256) ORDER BY i.sha256
        """
    ).to_arrow_table()
    shas, vectors = read_embeddings(layout)
    index = {s: i for i, s in enumerate(shas)}
    sha = np.asarray(t.column("sha256").to_pylist(), dtype=object)
    vec = vectors[np.asarray([index[s] for s in sha], np.int64)] if len(sha) else vectors[:0]
    strata = t.column("stratum").to_pylist()
    names = sorted(set(strata))
    code = {s: i for i, s in enumerate(names)}
    width = t.column("width").to_numpy(zero_copy_only=False).astype(np.float64)
    height = t.column("height").to_numpy(zero_copy_only=False).astype(np.float64)
    scores = {c: t.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in qcols}
    scores.update(quality.geometry_scores(width, height))
    return Pool(
        sha256=sha,
        vectors=vec,
        positive=t.column("positive").to_numpy(zero_copy_only=False).astype(bool),
        has_target=t.column("has_target").to_numpy(zero_copy_only=False).astype(bool),
        stratum=np.asarray([code[s] for s in strata], np.int32),
        stratum_names=names,
        background=t.column("background_cluster").to_numpy(zero_copy_only=False).astype(np.int64),
        scores=scores,
        area=width * height,
        uri=np.asarray(t.column("uri").to_pylist(), dtype=object),
        labelled=t.column("labelled").to_numpy(zero_copy_only=False).astype(bool),
        dhash=t.column("dhash").to_numpy(zero_copy_only=False).astype(np.int64) if hash_sql else None,
        detections=_detections_of(layout, sha),
        axis_values={a: np.asarray(t.column(f"axis_{a}").to_pylist(), dtype=object) for a in axes},
        **_regions_of(layout, {s: i for i, s in enumerate(sha)}),
    )


def _detections_of(layout: Layout, sha: np.ndarray) -> Detections | None:
    """The detect step's evidence in pool row order; None when detect has not run (or had no source)."""
    from negset.detect import store

    if not store.has_run(layout):
        return None
    cal = store.calibration(layout)
    if not cal.get("sources"):
        return None
    thresholds = {n: c.get("threshold") for n, c in cal["sources"].items()}
    ev = {r["sha256"]: r for r in store.evidence(layout).to_pylist()}
    hits = store.user_model_hits(layout)
    n = len(sha)
    f = lambda: np.zeros(n, np.float64)  # noqa: E731
    o = lambda: np.full(n, None, dtype=object)  # noqa: E731
    d = Detections(target_score=f(), threshold=np.full(n, np.nan), detected=np.zeros(n, bool), source=o(), cls=o(),
                   box=o(), confuser_score=f(), confuser_threshold=np.full(n, np.nan), confuser_class=o(), user_hit=o())
    for i, s in enumerate(sha):
        r = ev.get(s)
        if r is None:
            continue
        d.target_score[i] = r["target_score"] or 0.0
        d.threshold[i] = np.nan if r["target_threshold"] is None else r["target_threshold"]
        d.detected[i] = bool(r["detected_target"])
        d.source[i], d.cls[i], d.box[i] = r["target_source"], r["target_class"], r["target_box"]
        d.confuser_score[i] = r["confuser_score"] or 0.0
        d.confuser_class[i] = r["confuser_class"]
        ct = thresholds.get(r["confuser_source"]) if r["confuser_source"] else None
        d.confuser_threshold[i] = np.nan if ct is None else ct
        d.user_hit[i] = hits.get(s)
    return d


def _regions_of(layout: Layout, row_of: dict) -> dict:
    from negset.embed.store import read_regions

    got = read_regions(layout)
    if got is None:
        return {}
    shas, kinds, vec = got
    owner = np.asarray([row_of.get(s, -1) for s in shas], np.int64)
    grid = (kinds == "grid") & (owner >= 0)
    obj = (kinds == "object") & (owner >= 0)
    # the grid crops stay in the memory map (row owner -1 = not a grid crop of this pool); objects are few
    return dict(region_vectors=vec, region_owner=np.where(grid, owner, -1),
                object_vectors=np.asarray(vec[obj]), object_owner=owner[obj])
