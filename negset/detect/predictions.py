"""The user's own model's predictions on the pool, as detection evidence.

Two forms:

- a COCO results JSON: a list of ``{image_id | file_name, category_id |
  category | category_name, bbox: [x, y, w, h] (pixels), score}``, or a COCO
  file whose ``annotations`` carry a ``score`` (its ``images`` and
  ``categories`` then name the ids). Ids are named by the source's ``coco``
  file (default: the positives' COCO file); a ``category_id`` may also index
  the source's ``classes`` list;
- a folder of YOLO prediction txt files (``save_txt`` with ``save_conf``):
  ``STEM.txt`` per image, one ``cls cx cy w h conf`` line per box (normalised),
  class names from ``classes``.

An image with no prediction has no detections. A prediction naming an image
or a category that is not known is an error naming the file (a predictions
file for another pool, or the wrong classes file, must not pass unnoticed).
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from pathlib import Path

from negset.core.config import DetectSource
from negset.core.errors import NegsetError
from negset.detect.names import read_class_names


class ImageMatcher:
    """sha256 of a pool image from a file name: its uri, a path suffix of it, or a unique base name (or stem)."""

    def __init__(self, images: list[dict]):
        self.by_uri = {im["uri"]: im["sha256"] for im in images}
        self.by_base: dict[str, set[str]] = defaultdict(set)
        self.by_stem: dict[str, set[str]] = defaultdict(set)
        for im in images:
            base = posixpath.basename(im["uri"].split("?")[0])
            self.by_base[base].add(im["sha256"])
            self.by_stem[posixpath.splitext(base)[0]].add(im["sha256"])

    def _unique(self, found: set[str] | None) -> str | None:
        return next(iter(found)) if found and len(found) == 1 else None

    def by_name(self, name: str) -> str | None:
        name = str(name).replace("\\", "/")
        if name in self.by_uri:
            return self.by_uri[name]
        suffix = [s for u, s in self.by_uri.items() if u.endswith("/" + name.lstrip("./"))]
        if len(set(suffix)) == 1:
            return suffix[0]
        return self._unique(self.by_base.get(posixpath.basename(name)))

    def by_stem_name(self, stem: str) -> str | None:
        return self._unique(self.by_stem.get(stem))


def _load_json(path: Path):
    if not path.is_file():
        raise NegsetError(f"{path}: predictions file not found", hint="detect.sources[].predictions: a COCO results JSON or a folder of YOLO txt files")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise NegsetError(f"{path}: not valid JSON ({str(exc)[:120]})") from None


def _coco_names(doc: dict, path: Path) -> tuple[dict, dict]:
    """(image id -> file name, category id -> name) of a COCO instances document."""
    try:
        images = {im["id"]: im["file_name"] for im in doc.get("images", [])}
        cats = {c["id"]: c["name"] for c in doc.get("categories", [])}
    except (KeyError, TypeError, AttributeError) as exc:
        raise NegsetError(f"{path}: not a COCO file (images need id and file_name, categories id and name: {exc})") from None
    return images, cats


def read_coco_results(src: DetectSource, path: Path, root: Path, default_coco: Path | None, matcher: ImageMatcher,
                      sizes: dict[str, tuple[int, int]]) -> list[dict]:
    doc = _load_json(path)
    image_names, cat_names = {}, {}
    if isinstance(doc, dict):
        image_names, cat_names = _coco_names(doc, path)
        doc = doc.get("annotations")
    if not isinstance(doc, list):
        raise NegsetError(f"{path}: expected a list of predictions (COCO results) or a COCO file with scored annotations")
    needs_ids = any(isinstance(p, dict) and "image_id" in p and "file_name" not in p for p in doc)
    needs_cats = any(isinstance(p, dict) and "category_id" in p and not ("category" in p or "category_name" in p) for p in doc)
    coco = (Path(root) / src.coco).resolve() if src.coco else default_coco
    if (needs_ids and not image_names) or (needs_cats and not cat_names and not src.classes):
        if coco is None:
            raise NegsetError(f"{path}: predictions name images or categories by id, and no COCO file names the ids",
                              hint="set the source's coco: the COCO instances file of the pool (or classes: names by category_id)")
        more_images, more_cats = _coco_names(_load_json(coco), coco)
        image_names = image_names or more_images
        cat_names = cat_names or more_cats
    if needs_cats and not cat_names and src.classes:
        cat_names = dict(enumerate(read_class_names((Path(root) / src.classes).resolve())))
    rows = []
    for n, p in enumerate(doc):
        where = f"{path}: prediction {n}"
        if not isinstance(p, dict):
            raise NegsetError(f"{where}: expected an object with image_id/file_name, category_id, bbox and score")
        if "file_name" in p:
            name = p["file_name"]
        elif p.get("image_id") in image_names:
            name = image_names[p["image_id"]]
        else:
            raise NegsetError(f"{where}: image_id {p.get('image_id')!r} is not an image of {coco or path}",
                              hint="predictions must be on the ingested pool, with ids from the same COCO file")
        sha = matcher.by_name(name)
        if sha is None:
            raise NegsetError(f"{where}: image {name!r} is not in the pool (data/ingest/images.parquet)",
                              hint="predictions must be for the ingested images; a name must match one image's file name")
        cls = p.get("category", p.get("category_name"))
        if cls is None:
            if p.get("category_id") not in cat_names:
                raise NegsetError(f"{where}: category_id {p.get('category_id')!r} is not a known category",
                                  hint=f"known: {', '.join(map(str, list(cat_names)[:12]))}")
            cls = cat_names[p["category_id"]]
        try:
            x, y, w, h = (float(v) for v in p["bbox"])
            score = float(p["score"])
        except (KeyError, TypeError, ValueError):
            raise NegsetError(f"{where}: needs bbox [x, y, w, h] and score numbers") from None
        rows.append(dict(sha256=sha, cls=str(cls), score=score, x0=x, y0=y, x1=x + w, y1=y + h))
    return rows


def read_yolo_txt(src: DetectSource, folder: Path, root: Path, matcher: ImageMatcher, sizes: dict[str, tuple[int, int]]) -> list[dict]:
    if not src.classes:
        raise NegsetError(f"{folder}: YOLO prediction files need class names", hint="set the source's classes: names one a line, or a data.yaml")
    names = read_class_names((Path(root) / src.classes).resolve())
    rows = []
    for txt in sorted(folder.glob("*.txt")):
        sha = matcher.by_stem_name(txt.stem)
        if sha is None:
            raise NegsetError(f"{txt}: no image named {txt.stem}.* in the pool (or more than one)",
                              hint="one STEM.txt per pool image, named after the image file")
        width, height = sizes[sha]
        for i, line in enumerate(txt.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise NegsetError(f"{txt}:{i}: expected 6 values 'cls cx cy w h conf', got {len(parts)}",
                                  hint="predict with save_txt=True and save_conf=True")
            try:
                c = int(float(parts[0]))
                cx, cy, w, h, conf = map(float, parts[1:])
            except ValueError:
                raise NegsetError(f"{txt}:{i}: not numbers: {line[:80]!r}") from None
            if not 0 <= c < len(names):
                raise NegsetError(f"{txt}:{i}: class {c} is not in {src.classes} ({len(names)} names)",
                                  hint="the classes file must list the model's classes in order")
            rows.append(dict(sha256=sha, cls=names[c], score=conf, x0=(cx - w / 2) * width, y0=(cy - h / 2) * height,
                             x1=(cx + w / 2) * width, y1=(cy + h / 2) * height))
    return rows


def read_predictions(src: DetectSource, root: Path, default_coco: Path | None, images: list[dict]) -> list[dict]:
    """Rows (sha256, cls, score, x0, y0, x1, y1 in image pixels) of one predictions source."""
    path = (Path(root) / src.predictions).resolve()
    matcher = ImageMatcher(images)
    sizes = {im["sha256"]: (im["width"], im["height"]) for im in images}
    if path.is_dir():
        rows = read_yolo_txt(src, path, root, matcher, sizes)
    else:
        rows = read_coco_results(src, path, root, default_coco, matcher, sizes)
    return [r for r in rows if r["score"] >= src.min_score]
