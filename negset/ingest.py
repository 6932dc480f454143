"""Step 1, ingest: pull candidate images from the sources, pin and store them.

Every object is identified by content (not extension), hashed (sha256) and
stored once under ``data/ingest/objects/<aa>/<sha256>``. The step writes
``images.parquet`` (one row per distinct image, with its role: positive or
candidate), ``labels.parquet`` (boxes of labelled images) and
``rejected.parquet`` (what was not an image, and why).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from negset import atomic
from negset.config import LocalSource as LocalSourceSpec
from negset.config import Params
from negset.errors import NegsetError
from negset.imageio import ImageRejected, probe
from negset.labels import load_positives
from negset.layout import Layout
from negset.progress import track
from negset.sources import SourceObject, build_sources

log = logging.getLogger("negset.ingest")

IMAGES_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("uri", pa.string()),
        ("source", pa.string()),
        ("version", pa.string()),
        ("size", pa.int64()),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("role", pa.string()),
        ("labelled", pa.bool_()),
        ("has_target", pa.bool_()),
        ("classes", pa.list_(pa.string())),
        ("n_boxes", pa.int32()),
        ("copies", pa.int32()),
    ]
)
LABELS_SCHEMA = pa.schema(
    [("sha256", pa.string()), ("cls", pa.string())]
    + [(k, pa.float32()) for k in ("x0", "y0", "x1", "y1")]
    + [("crowd", pa.bool_())]
)
REJECTED_SCHEMA = pa.schema(
    [("uri", pa.string()), ("source", pa.string()), ("step", pa.string()), ("rule", pa.string()), ("reason", pa.string())]
)


def default_source_specs(positive_paths: set[Path]) -> list[LocalSourceSpec]:
    """The folders the positives live in (not their subfolders)."""
    folders = sorted({p.parent for p in positive_paths})
    return [LocalSourceSpec(path=str(f), recursive=False) for f in folders]


def store_object(layout: Layout, sha256: str, data: bytes) -> Path:
    target = layout.object_path(sha256)
    if not target.exists():
        atomic.write_bytes(target, data)
    return target


def run(params: Params, layout: Layout) -> dict:
    cfg = params.ingest
    positives = load_positives(cfg.positives, cfg.target, layout.root)
    targets = set(cfg.target)
    specs = list(cfg.sources) or default_source_specs(positives.paths)
    sources = build_sources(specs, layout.root, layout)
    for i, src in enumerate(sources if cfg.sources else ()):  # validate before anything is written
        if next(iter(src.list()), None) is None:
            raise NegsetError(
                f"ingest.sources: no candidate images found in {src.name} (ingest.sources[{i}].path holds no files)",
                hint="point it at the folder with the candidate images, or remove the entry",
            )
    labels = positives.labels

    rows: dict[str, dict] = {}
    boxes: list[dict] = []
    rejected: list[dict] = []
    seen_paths: set[Path] = set()

    def take(obj: SourceObject) -> None:
        path = obj.local_path
        if path is not None:
            seen_paths.add(path)
        try:
            data = obj.read()
        except OSError as exc:
            rejected.append(dict(uri=obj.uri, source=obj.source, step="ingest", rule="unreadable", reason=str(exc)))
            return
        try:
            info = probe(data, cfg.max_image_pixels)
        except ImageRejected as exc:
            rejected.append(dict(uri=obj.uri, source=obj.source, step="ingest", rule="not_image", reason=exc.reason))
            return
        sha = atomic.sha256_bytes(data)
        is_positive = path in positives.paths
        row = rows.get(sha)
        if row is not None:  # same bytes seen before: one image, positive if any copy is
            row["copies"] += 1
            if is_positive:
                row["role"] = "positive"
            return
        store_object(layout, sha, data)
        image_boxes = labels.boxes.get(path) if (labels and path is not None) else None
        classes = sorted({b.cls for b in image_boxes}) if image_boxes is not None else []
        rows[sha] = dict(
            sha256=sha,
            uri=obj.uri,
            source=obj.source,
            version=obj.version,
            size=len(data),
            format=info.format,
            width=info.width,
            height=info.height,
            role="positive" if is_positive else "candidate",
            labelled=image_boxes is not None,
            has_target=bool(targets.intersection(classes)),
            classes=classes,
            n_boxes=sum(not b.crowd for b in image_boxes or ()),
            copies=1,
        )
        for b in image_boxes or ():
            boxes.append(dict(sha256=sha, cls=b.cls, x0=b.x0, y0=b.y0, x1=b.x1, y1=b.y1, crowd=b.crowd))

    def all_objects():
        for src in sources:
            yield from src.list()

    for obj in track(all_objects(), None, "ingest"):
        take(obj)
    # Positives that live outside the candidate sources are ingested too: later
    # steps need them (embedding, strata, leak checks).
    from negset.sources.local import LocalSource

    extra = sorted(positives.paths - seen_paths)
    for p in extra:
        for obj in LocalSource(p.parent, recursive=False, layout=layout).list():
            if obj.local_path == p:
                take(obj)

    n_pos = sum(r["role"] == "positive" for r in rows.values())
    n_cand = len(rows) - n_pos
    if n_cand == 0:
        names = ", ".join(s.name for s in sources) or "(none)"
        raise NegsetError(
            f"ingest.sources: no candidate images found in {names}",
            hint="point ingest.sources at folders with images other than the positives",
        )
    ordered = sorted(rows.values(), key=lambda r: r["uri"])
    atomic.write_parquet(pa.Table.from_pylist(ordered, schema=IMAGES_SCHEMA), layout.ingest / "images.parquet")
    boxes.sort(key=lambda b: (b["sha256"], b["cls"], b["x0"], b["y0"], b["x1"], b["y1"]))
    atomic.write_parquet(pa.Table.from_pylist(boxes, schema=LABELS_SCHEMA), layout.ingest / "labels.parquet")
    atomic.write_parquet(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), layout.ingest / "rejected.parquet")
    summary = dict(
        target=list(cfg.target),
        sources=[s.name for s in sources],
        images=len(rows),
        positives=n_pos,
        candidates=n_cand,
        candidates_with_target=sum(r["role"] == "candidate" and r["has_target"] for r in rows.values()),
        rejected=len(rejected),
    )
    atomic.write_json(layout.ingest / "summary.json", summary)
    log.info(
        "ingest: %d images (%d positives, %d candidates), %d rejected",
        len(rows), n_pos, n_cand, len(rejected),
    )
    return summary
