"""The negative set in the formats trainers read, built from ``data/negatives/manifest.parquet``.

* COCO (``negset export-coco``): the negatives as ``images`` entries with no
  annotations. When the positives are a COCO file (``ingest.positives.format:
  coco``, or ``--positives FILE``) the negatives are merged into a copy of it:
  every original image, annotation, category and top-level key is kept
  unchanged; the negatives get new, unique image ids; a negative that is
  already an image of that file is not added twice. ``file_name`` is relative
  to the image root the trainer uses (the positives' ``images`` folder when
  merging), so a loader that joins ``image_root / file_name`` finds every file.
* YOLO (``negset export-yolo``): the Ultralytics layout, ``images/`` and
  ``labels/`` siblings with matching stems, one empty ``.txt`` per negative
  (an image with no objects), plus ``negatives.txt``, the image list with
  ``./images/...`` lines that Ultralytics resolves against the list's folder.
  Put the folder or the list in ``train:`` of the trainer's ``data.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from negset.core import atomic
from negset.core.config import Params
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.export.step import image_name
from negset.ingest.labels import read_coco_json

log = logging.getLogger("negset.exports")

DEFAULT_COCO = "data/exports/coco/instances.json"
DEFAULT_YOLO = "data/exports/yolo"
YOLO_MARKER = ".negset-yolo-export"
# suffixes Ultralytics lists as images; other formats are written as PNG
YOLO_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp", "MPO": ".mpo"}
YOLO_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}


def read_manifest(layout: Layout) -> list[dict]:
    path = layout.negatives / "manifest.parquet"
    if not path.exists():
        raise NegsetError(f"{path}: missing; the negative set is not built yet", hint="run `negset build` or `dvc repro` first")
    return pq.read_table(path).to_pylist()


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _candidates(layout: Layout, row: dict) -> list[Path]:
    """Files holding this negative: the original source file, then the exported copy."""
    out = []
    if "://" not in row["uri"] or row["uri"].startswith("file://"):
        out.append(layout.resolve_uri(row["uri"]).resolve())
    out.append((layout.negatives / "images" / image_name(row["uri"], row["sha256"])).resolve())
    return [p for p in out if p.is_file()]


def _read_coco(path: Path) -> dict:
    return read_coco_json(path, hint="check --positives or ingest.positives.path")


# Long: the merge must keep every original image, annotation, category and key unchanged while adding the
# negatives with new unique ids; kept in one function so that contract reads top to bottom.
def coco(
    params: Params,
    layout: Layout,
    out: Path | str | None = None,
    positives: Path | str | None = None,
    merge: bool = True,
    image_root: Path | str | None = None,
) -> dict:
    """Write the negatives as a COCO file (merged into the positives' COCO file when there is one)."""
    manifest = read_manifest(layout)
    spec = params.ingest.positives
    pos_path = Path(positives).resolve() if positives else None
    if pos_path is None and merge and spec.format == "coco":
        pos_path = (layout.root / spec.path).resolve()
    if not merge:
        pos_path = None
    out_path = Path(out).resolve() if out else layout.root / DEFAULT_COCO
    if pos_path is not None and out_path == pos_path:
        raise NegsetError(f"{out_path}: refusing to overwrite the positives' COCO file", hint="pass another --out")
    _refuse_foreign_file(out_path)

    if image_root is not None:
        root = Path(image_root).resolve()
    elif pos_path is not None and spec.format == "coco" and spec.images and pos_path == (layout.root / spec.path).resolve():
        root = (layout.root / spec.images).resolve()
    elif pos_path is not None:
        root = pos_path.parent
    elif (layout.negatives / "images").is_dir():
        root = (layout.negatives / "images").resolve()
    else:
        root = layout.root

    if pos_path is not None:
        data = _read_coco(pos_path)
        existing = {(root / im["file_name"]).resolve() for im in data["images"] if "file_name" in im}
    else:
        cats = [{"id": i, "name": name, "supercategory": name} for i, name in enumerate(params.ingest.target, 1)]
        data = {
            "info": {"description": "negset negatives: images without the target", "version": "1"},
            "licenses": [],
            "categories": cats,
            "images": [],
            "annotations": [],
        }
        existing = set()
    data.setdefault("annotations", [])
    next_id = max((int(im["id"]) for im in data["images"]), default=0) + 1
    added, present, absolute = 0, 0, 0
    for row in manifest:
        files = _candidates(layout, row)
        if not files:
            raise NegsetError(
                f"{row['uri']}: the negative's file is missing (and no copy in data/negatives/images)",
                hint="set export.copy_images: true and run `negset export`",
            )
        if any(f in existing for f in files):
            present += 1
            continue
        chosen = next((f for f in files if _inside(f, root)), files[0])
        if _inside(chosen, root):
            file_name = chosen.relative_to(root).as_posix()
        else:
            file_name = str(chosen)
            absolute += 1
        data["images"].append(
            {"id": next_id, "file_name": file_name, "width": int(row["width"]), "height": int(row["height"])}
        )
        next_id += 1
        added += 1
    atomic.write_text(out_path, json.dumps(data, ensure_ascii=False) + "\n")
    atomic.write_text(coco_marker(out_path), atomic.sha256_file(out_path) + "\n")
    summary = dict(
        out=str(out_path),
        merged_into=str(pos_path) if pos_path else None,
        image_root=str(root),
        images=len(data["images"]),
        annotations=len(data["annotations"]),
        categories=len(data["categories"]),
        negatives_added=added,
        negatives_already_present=present,
        absolute_file_names=absolute,
    )
    log.info(
        "export-coco: %s (%d negatives added, %d already in the positives' file; image root %s)",
        out_path, added, present, root,
    )
    return summary


def coco_marker(out_path: Path) -> Path:
    """Beside a COCO export: the sha256 of the file as negset wrote it (the file's counterpart of YOLO_MARKER)."""
    return out_path.with_name(f".{out_path.name}.negset-export")


def _refuse_foreign_file(out_path: Path) -> None:
    """The rule of both exports: negset replaces only an output it wrote (and that nobody changed since)."""
    if not out_path.exists() and not out_path.is_symlink():
        return
    marker = coco_marker(out_path)
    if out_path.is_file() and not out_path.is_symlink() and marker.is_file():
        if marker.read_text(encoding="utf-8").strip() == atomic.sha256_file(out_path):
            return
        raise NegsetError(f"{out_path}: changed since negset export-coco wrote it; refusing to replace it",
                          hint="pass a new --out path, or remove the file first")
    raise NegsetError(f"{out_path}: exists and was not written by negset export-coco; refusing to replace it",
                      hint="pass a new --out path, or remove the file first")


def yolo(params: Params, layout: Layout, out: Path | str | None = None) -> dict:
    """Write the Ultralytics layout: images/ + labels/ (empty .txt) + negatives.txt."""
    manifest = read_manifest(layout)
    out_dir = Path(out).resolve() if out else layout.root / DEFAULT_YOLO
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / YOLO_MARKER).exists():
        raise NegsetError(
            f"{out_dir}: folder exists and was not written by negset export-yolo; refusing to replace it",
            hint="pass an empty or new --out folder",
        )
    names = []
    with atomic.atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for row in manifest:
            name = image_name(row["uri"], row["sha256"])
            src = layout.object_path(row["sha256"])
            if not src.is_file():
                copies = _candidates(layout, row)
                if not copies:
                    raise NegsetError(f"{row['uri']}: the negative's file is missing", hint="run `negset ingest` again")
                src = copies[-1]
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in YOLO_SUFFIXES:
                shutil.copyfile(src, tmp / "images" / name)
            elif row.get("format") in YOLO_SUFFIX:  # right content, unusual name: add the suffix
                name = stem + suffix + YOLO_SUFFIX[row["format"]]
                shutil.copyfile(src, tmp / "images" / name)
            else:  # a format Ultralytics does not read (GIF, ...): decode once, store as PNG
                from negset.core.imageio import load_rgb

                name = stem + suffix + ".png"
                load_rgb(src).save(tmp / "images" / name, "PNG")
            (tmp / "labels" / (name.rsplit(".", 1)[0] + ".txt")).write_text("")
            names.append(name)
        (tmp / "negatives.txt").write_text("".join(f"./images/{n}\n" for n in names))
        (tmp / YOLO_MARKER).write_text("written by `negset export-yolo`; the folder is replaced on the next export\n")
    log.info("export-yolo: %d negatives -> %s", len(names), out_dir)
    return dict(out=str(out_dir), images=len(names), list=str(out_dir / "negatives.txt"))
