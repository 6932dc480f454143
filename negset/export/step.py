"""Step 5, export: the negative set as files a person and a trainer can use.

``data/negatives/`` holds ``manifest.parquet`` and ``manifest.csv`` (one row
per chosen image: uri, sha256, tags, stratum, scores, reason), ``images/``
(the chosen images), ``metrics.json`` (counts per stratum, positives vs
negatives; the audited contamination and the review progress, from
``reviews.csv``) and ``run.json`` (parameters, model and weights hash, seed
and source versions: everything needed to explain and re-run the selection).
The folder is built aside and swapped in whole.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from negset import __version__
from negset.core import atomic, catalog
from negset.core import parquet as pq
from negset.core.config import Params
from negset.core.layout import Layout

log = logging.getLogger("negset.export")

MANIFEST_SQL = """
SELECT s.uri, s.sha256, i.source, i.version, i.format, i.width, i.height, i.size,
       t.lighting, t.background, t.occlusion, s.stratum,
       s.pos_similarity, t.luma_p50, t.luma_std, t.occluded_share,
       s.rule, s.reason
FROM selection s JOIN images i USING (sha256) JOIN tags t USING (sha256)
ORDER BY s.stratum, s.pick_rank, s.sha256
"""


_UNSAFE = re.compile(r"[^\w.+=@,-]")  # (\w: letters and digits of any script, and _)


def image_name(uri: str, sha256: str) -> str:
    """The file name of an exported copy: sha256 prefix + the source's base name, made safe.

    Whitespace, control characters (a newline would split a line of YOLO's
    ``negatives.txt``), quotes, backslashes and the like become ``_``; the
    manifest keeps the real uri. The sha256 prefix keeps names unique.
    """
    base = _UNSAFE.sub("_", Path(uri.rstrip("/")).name).lstrip(".") or "image"
    return f"{sha256[:12]}_{base}"


def tv_distance(a: dict[str, float], b: dict[str, float]) -> float:
    ta, tb = sum(a.values()) or 1, sum(b.values()) or 1
    keys = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0) / ta - b.get(k, 0) / tb) for k in keys)


def review_metrics(layout: Layout, negatives: list[str]) -> dict:
    """``audit`` (the audited contamination of the chosen set, Clopper-Pearson 95% upper bound) and
    ``reviews`` (review progress of the quarantine), from ``reviews.csv`` (none: nothing reviewed yet)."""
    from negset.review import audit
    from negset.review.decisions import read_reviews, reviews_path

    reviews = read_reviews(reviews_path(layout))
    held = []
    path = layout.select / "quarantine.csv"
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            held = [r["sha256"] for r in csv.DictReader(fh) if r.get("sha256")]
    candidates = set()
    if reviews:  # the suspects already decided count too (select lets them go: quarantine.csv no longer holds them)
        images = pq.read_table(layout.ingest / "images.parquet", columns=["sha256", "role"]).to_pylist()
        candidates = {r["sha256"] for r in images if r["role"] == "candidate"}
    quarantine = audit.quarantine_queue(held, reviews, candidates)
    return dict(audit=audit.contamination(negatives, reviews), reviews=audit.progress(quarantine, reviews))


def run(params: Params, layout: Layout) -> dict:
    cfg = params.export
    with catalog.connect(layout) as con:
        catalog.load(con, layout, "images", "tags", "selection", "strata")
        manifest = con.sql(MANIFEST_SQL).to_arrow_table()
        strata = con.execute("SELECT stratum, positives, chosen FROM strata ORDER BY stratum").fetchall()
        counts = dict(
            con.execute(
                "SELECT role, count(*) FROM images GROUP BY role"
            ).fetchall()
        )
    names = [image_name(u, s) for u, s in zip(manifest.column("uri").to_pylist(), manifest.column("sha256").to_pylist())]
    if cfg.copy_images:
        manifest = manifest.append_column("image", pa.array([f"images/{n}" for n in names], pa.string()))

    pos = {s: p for s, p, _ in strata if p}
    neg = {s: c for s, _, c in strata if c}
    per_stratum = {s: {"positives": int(p), "negatives": int(c)} for s, p, c in strata if p or c}
    metrics = dict(
        positives=int(counts.get("positive", 0)),
        candidates=int(counts.get("candidate", 0)),
        negatives=manifest.num_rows,
        negatives_per_positive=round(manifest.num_rows / max(1, counts.get("positive", 0)), 4),
        strata_positives=len(pos),
        strata_negatives=len(neg),
        strata_tv_distance=round(tv_distance(pos, neg), 4),
        per_stratum=per_stratum,
    )
    metrics.update(review_metrics(layout, manifest.column("sha256").to_pylist()))
    model = atomic.read_json(layout.embed / "model.json")
    ingest_summary = atomic.read_json(layout.ingest / "summary.json")
    run_info = dict(
        negset=__version__,
        params=params.model_dump(mode="json"),
        model=model,
        seed=params.select.seed,
        ingest=ingest_summary,
        ingest_manifest_sha256=atomic.sha256_file(layout.ingest / "images.parquet"),
        sources="each row of manifest.parquet carries uri, sha256 and version of its source object",
    )
    with atomic.atomic_dir(layout.negatives) as tmp:
        if cfg.copy_images:
            (tmp / "images").mkdir()
            for sha, name in zip(manifest.column("sha256").to_pylist(), names):
                shutil.copyfile(layout.object_path(sha), tmp / "images" / name)
        import pyarrow.parquet as pq

        pq.write_table(manifest, tmp / "manifest.parquet", compression="zstd")
        pacsv.write_csv(manifest, tmp / "manifest.csv")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        (tmp / "run.json").write_text(json.dumps(run_info, indent=2, sort_keys=True, default=str) + "\n")
    log.info("export: %d negatives for %d positives -> %s", manifest.num_rows, metrics["positives"], layout.negatives)
    return metrics
