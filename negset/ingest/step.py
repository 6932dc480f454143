"""Step 1, ingest: pull candidate images from the sources, pin and store them.

Every object is identified by content (not extension), hashed (sha256) and
stored once under ``data/ingest/objects/<aa>/<sha256>``. The step writes
``images.parquet`` (one row per distinct image, with its role: positive or
candidate), ``labels.parquet`` (boxes of labelled images) and
``rejected.parquet`` (what was not an image or could not be read, and why),
``pins.parquet`` (one row per source object: key, ETag, VersionId, size,
last-modified, sha256, status) and ``history.parquet`` (objects that left the
pool: deleted from their source or replaced by a new version).

A second ingest downloads only new or changed remote objects: an object with
the same uri and ETag as in the previous ``pins.parquet`` reuses its stored
bytes (``data/ingest`` is a persistent DVC output for that reason). Stored
objects no longer referenced are removed at the end, so ``objects/`` always
holds exactly the current pool.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pyarrow as pa

from negset.core import atomic
from negset.core.config import LocalSource as LocalSourceSpec
from negset.core.config import Params
from negset.core.config import S3Source as S3SourceSpec
from negset.core.errors import NegsetError
from negset.core.imageio import ImageRejected, probe
from negset.core.layout import Layout
from negset.core.progress import track
from negset.ingest.labels import load_positives, parse_s3_uri
from negset.ingest.sources import FetchError, Previous, SourceObject, build_sources, fetch
from negset.ingest.sources.local import LocalSource
from negset.ingest.statcache import KnownImage, LocalStatCache

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
PINS_SCHEMA = pa.schema(
    [("uri", pa.string()), ("source", pa.string()), ("key", pa.string()), ("etag", pa.string()),
     ("version_id", pa.string()), ("size", pa.int64()), ("last_modified", pa.string()), ("sha256", pa.string()),
     ("status", pa.string()), ("reason", pa.string())]
)
HISTORY_SCHEMA = pa.schema(
    [("event", pa.string()), ("at", pa.string())] + [f for f in PINS_SCHEMA if f.name not in ("status", "reason")]
)
REJECTED_SCHEMA = pa.schema(
    [("uri", pa.string()), ("source", pa.string()), ("step", pa.string()), ("rule", pa.string()), ("reason", pa.string())]
)


def default_source_specs(positive_paths: set[Path], depth: int = 0) -> list[LocalSourceSpec]:
    """The folders the positives live in (not their subfolders), or the folders ``depth`` levels up (recursive)."""
    folders = sorted({p.parents[min(depth, len(p.parents) - 1)] for p in positive_paths})
    return [LocalSourceSpec(path=str(f), recursive=depth > 0) for f in folders]


def default_s3_specs(uris: set[str], depth: int, connection) -> list[S3SourceSpec]:
    """The prefixes the s3:// positives live in (``depth`` levels up: recursive), one source per bucket."""
    prefixes: dict[str, set[str]] = {}
    for uri in uris:
        bucket, key = parse_s3_uri(uri)
        parts = key.split("/")[:-1]
        parts = parts[: max(0, len(parts) - depth)]
        prefixes.setdefault(bucket, set()).add("/".join(parts) + "/" if parts else "")
    return [
        S3SourceSpec(type="s3", bucket=b, prefixes=sorted(p), recursive=depth > 0, **connection.model_dump())
        for b, p in sorted(prefixes.items())
    ]


def _uncovered_folders(own: list[LocalSourceSpec], listed, root: Path) -> list[LocalSourceSpec]:
    """The positives' folders (as default sources) that no listed local source walks."""
    walked = [((root / s.path).resolve(), s.recursive) for s in listed if s.type == "local"]
    out = []
    for spec in own:
        folder = Path(spec.path).resolve()
        if not any(folder == w or (recursive and w in folder.parents) for w, recursive in walked):
            out.append(spec)
    return out


def store_object(layout: Layout, sha256: str, data: bytes) -> Path:
    target = layout.object_path(sha256)
    if not target.exists():
        atomic.write_bytes(target, data)
    return target


# Long (phases in one function): listing, fetching and storing, pinning, labels and the summary share the
# pin journal, the stat cache and the counts the summary reports; splitting them is the next clean-up.
def run(params: Params, layout: Layout) -> dict:
    cfg = params.ingest
    positives = load_positives(cfg.positives, cfg.target, layout.root)
    targets = set(cfg.target)
    own_folders = default_source_specs(positives.paths, cfg.source_depth)
    left_out = _uncovered_folders(own_folders, cfg.sources, layout.root) if cfg.sources else []
    specs = list(cfg.sources) or (own_folders + default_s3_specs(positives.uris, cfg.source_depth, cfg.s3))
    if left_out and cfg.include_positive_folders:
        specs += left_out
        left_out = []
    previous = Previous.load(layout)
    sources = build_sources(specs, layout.root, layout, previous)
    for i, src in enumerate(sources if cfg.sources else ()):  # validate local folders before anything is written
        if isinstance(src, LocalSource) and next(iter(src.list()), None) is None:
            raise NegsetError(
                f"ingest.sources: no candidate images found in {src.name} (ingest.sources[{i}].path holds no files)",
                hint="point it at the folder with the candidate images, or remove the entry",
            )
    labels = positives.labels

    rows: dict[str, dict] = {}
    boxes: list[dict] = []
    rejected: list[dict] = []
    pins: list[dict] = []
    seen_paths: set[Path] = set()
    seen_uris: set[str] = set()

    journal = Journal(layout)
    known = LocalStatCache(layout)

    def pin_row(obj: SourceObject, sha: str, status: str, reason: str = "", size: int | None = None) -> None:
        pin = dict(
            uri=obj.uri, source=obj.source, key=obj.pin.key or obj.uri, etag=obj.pin.etag,
            version_id=obj.pin.version_id, size=obj.size if size is None else size,
            last_modified=obj.pin.last_modified, sha256=sha, status=status, reason=reason,
        )
        pins.append(pin)
        if status == "image" and obj.local_path is None and obj.pin.etag:
            journal.add(pin)  # a killed run's next try reuses what this one stored

    def reject(obj: SourceObject, rule: str, reason: str, sha: str = "", size: int | None = None) -> None:
        rejected.append(dict(uri=obj.uri, source=obj.source, step="ingest", rule=rule, reason=reason))
        pin_row(obj, sha, "rejected", f"{rule}: {reason}", size)

    def take(obj: SourceObject, data: bytes | None, error: Exception | None) -> None:
        path = obj.local_path
        if path is not None:
            seen_paths.add(path)
        else:
            seen_uris.add(obj.uri)
        if error is not None:
            if isinstance(error, FetchError):
                reason = error.reason
                if error.rule == "not_image":  # a verdict carried over from the previous ingest
                    reason = reason.removesuffix(" (unchanged since the last ingest)")
                reject(obj, error.rule, reason)
            else:
                reject(obj, "unreadable", str(error))
            return
        if isinstance(data, KnownImage):  # an unchanged local file: not read again
            sha, info, nbytes = data.sha256, data.info, data.size
        else:
            sha = atomic.sha256_bytes(data)
            try:
                info = probe(data, cfg.max_image_pixels)
            except ImageRejected as exc:
                reject(obj, "not_image", exc.reason, sha, len(data))
                return
            nbytes = len(data)
            if path is not None:
                known.record(path, data, sha, info)
        is_positive = path in positives.paths if path is not None else obj.uri in positives.uris
        row = rows.get(sha)
        if row is not None:  # same bytes seen before: one image, positive if any copy is
            pin_row(obj, sha, "image", size=nbytes)
            row["copies"] += 1
            if is_positive:
                row["role"] = "positive"
            return
        if not isinstance(data, KnownImage):  # (a known image's object is stored: lookup checked)
            store_object(layout, sha, data)
        pin_row(obj, sha, "image", size=nbytes)  # after the bytes are stored: the journal never promises more
        image_boxes = labels.boxes.get(path) if (labels and path is not None) else None
        classes = sorted({b.cls for b in image_boxes}) if image_boxes is not None else []
        rows[sha] = dict(
            sha256=sha,
            uri=obj.uri,
            source=obj.source,
            version=obj.pin.version_id or obj.pin.etag or obj.version,
            size=nbytes,
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

    def unchanged_or_read(objects):
        for obj in objects:
            hit = known.lookup(obj.local_path, cfg.max_image_pixels) if obj.local_path is not None else None
            if hit is not None:
                yield obj, hit, None
            else:
                yield from fetch([obj], 1)

    def all_objects():
        for src in sources:
            if isinstance(src, LocalSource):
                yield from unchanged_or_read(src.list())
            else:
                yield from fetch(src.list(), getattr(src, "workers", 1))

    for obj, data, error in track(all_objects(), None, "ingest", nbytes=lambda item: len(item[1] or b"")):
        take(obj, data, error)
    # Positives that live outside the candidate sources are ingested too: later
    # steps need them (embedding, strata, leak checks).

    extra = sorted(positives.paths - seen_paths)
    for p in extra:
        for obj in LocalSource(p.parent, recursive=False, layout=layout).list():
            if obj.local_path == p:
                take(*next(fetch([obj], 1)))

    extra_uris = sorted(positives.uris - seen_uris)
    if extra_uris:
        from negset.ingest.sources.s3 import S3Source

        by_bucket: dict[str, list[str]] = {}
        for uri in extra_uris:
            bucket, key = parse_s3_uri(uri)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in sorted(by_bucket.items()):
            spec = S3SourceSpec(type="s3", bucket=bucket, **cfg.s3.model_dump())
            src = S3Source(spec, previous=previous)
            src.name = f"s3://{bucket} (positives)"
            sources.append(src)
            for item in fetch(src.objects_for(keys), src.workers):
                take(*item)
    read = {r["uri"] for r in pins if r["status"] == "image"}
    missing = sorted(u for u in positives.uris if u not in read)
    if missing:
        raise NegsetError(f"ingest.positives: {len(missing)} s3:// positive(s) could not be read as images, "
                          f"first: {missing[0]}", hint="the warnings above name the cause of each")

    fetched = _fetch_stats(sources)
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
    pins.sort(key=lambda r: (r["uri"], r["source"]))
    removed = _update_history(layout, previous, pins)
    atomic.write_parquet(pa.Table.from_pylist(pins, schema=PINS_SCHEMA), layout.ingest / "pins.parquet")
    journal.close(done=True)  # pins.parquet holds it all now
    pruned = _prune_objects(layout, set(rows))
    known.save()
    pool = {s.name: 0 for s in sources}
    for r in rows.values():
        if r["role"] == "candidate":
            pool[r["source"]] = pool.get(r["source"], 0) + 1
    left_out_names = [layout.uri(Path(f.path)) for f in left_out]
    if left_out_names:
        log.warning(
            "ingest: ingest.sources leaves out the folder(s) the positives live in (%s): their other images are "
            "not candidates; set ingest.include_positive_folders: true to draw from them too",
            ", ".join(left_out_names),
        )
    summary = dict(
        target=list(cfg.target),
        sources=[s.name for s in sources],
        candidates_per_source=pool,  # which folders (prefixes, lists) the pool came from
        positive_folders_left_out=left_out_names,
        images=len(rows),
        positives=n_pos,
        candidates=n_cand,
        candidates_with_target=sum(r["role"] == "candidate" and r["has_target"] for r in rows.values()),
        rejected=len(rejected),
        # boxes that reached outside their image, clipped to it (README "Bad input and faults")
        boxes_clipped=labels.clipped if labels else 0,
    )
    if labels and labels.clipped:
        log.warning("ingest: %d box(es) reached outside their image and were clipped to it; first: %s",
                    labels.clipped, labels.clipped_first)
    atomic.write_json(layout.ingest / "summary.json", summary)
    log.info(
        "ingest: %d images (%d positives, %d candidates), %d rejected; candidates per source: %s",
        len(rows), n_pos, n_cand, len(rejected), ", ".join(f"{k} {v}" for k, v in pool.items()),
    )
    if fetched or removed:
        log.info("ingest: %d downloaded, %d reused, %d left the pool, %d stored objects pruned",
                 fetched.get("downloaded", 0), fetched.get("reused", 0), removed, pruned)
    # what this run did (not written to summary.json, which must not change when the pool does not)
    if known.reused:
        log.info("ingest: %d unchanged local files not read again", known.reused)
    return dict(summary, fetch=fetched, removed=removed, unchanged_local=known.reused)


class Journal:
    """Pins of remote objects as they are stored, one JSON line each, flushed at once.

    ``pins.parquet`` is written at the end of an ingest; if the process is
    killed before that, the next ingest reads this journal too (``Previous``)
    and does not download again what was already stored (journal and objects
    lie in the step's staging folder, whose ``salvage`` part the next ingest
    keeps: negset/core/staging.py).
    """

    NAME = "pins-journal.jsonl"

    def __init__(self, layout: Layout):
        self.path = layout.ingest / self.NAME
        self.fh = None
        self.lock = threading.Lock()

    def add(self, pin: dict) -> None:
        with self.lock:
            if self.fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fh = open(self.path, "a", encoding="utf-8")
            self.fh.write(json.dumps(pin, sort_keys=True, default=str) + "\n")
            self.fh.flush()

    def close(self, done: bool) -> None:
        with self.lock:
            if self.fh is not None:
                self.fh.close()
                self.fh = None
            if done and self.path.exists():
                self.path.unlink()


def _fetch_stats(sources) -> dict:
    """Sum of the remote sources' counters; logs each source's throughput."""
    total: dict[str, int] = {}
    for src in sources:
        stats = getattr(src, "stats", None)
        if stats is None:
            continue
        d = stats.as_dict()
        log.info(
            "%s: %d listed, %d filtered out, %d downloaded (%.1f MB), %d reused, %d retries, %d failed",
            src.name, d["listed"], d["filtered"], d["downloaded"], d["bytes"] / 1e6, d["reused"], d["retries"],
            d["failed"],
        )
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


def _update_history(layout: Layout, previous: Previous, pins: list[dict]) -> int:
    """Append to history.parquet the previous objects that are not in the pool any more.

    ``deleted``: the uri is gone from its source; ``replaced``: the uri now has
    other bytes (new ETag/version) or could not be read this time.
    """
    import datetime as _dt

    from negset.core import parquet as pq

    path = layout.ingest / "history.parquet"
    old_rows = pq.read_table(path).to_pylist() if path.is_file() else []
    current = {(r["uri"], r["sha256"]) for r in pins if r["status"] == "image"}
    listed = {r["uri"] for r in pins}
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    events = []
    for uri, row in sorted(previous.by_uri.items()):
        if row["status"] != "image" or (uri, row["sha256"]) in current:
            continue
        event = "replaced" if uri in listed else "deleted"
        events.append(dict({k: row.get(k) for k in HISTORY_SCHEMA.names if k in row}, event=event, at=now))
    if events or not path.is_file():
        atomic.write_parquet(pa.Table.from_pylist(old_rows + events, schema=HISTORY_SCHEMA), path)
    return len(events)


def _prune_objects(layout: Layout, keep: set[str]) -> int:
    """Remove stored objects that no image of the current pool refers to."""
    if not layout.objects.is_dir():
        return 0
    removed = 0
    for sub in layout.objects.iterdir():
        if not sub.is_dir():
            continue
        for f in sub.iterdir():
            if f.name not in keep:
                f.unlink()
                removed += 1
    return removed
