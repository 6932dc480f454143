"""Read positives and their labels: COCO JSON, YOLO folders, or plain lists.

Everything is turned into one shape: for each labelled image (its resolved
path) the list of its boxes, as class name plus a normalised box
``(x0, y0, x1, y1)`` in [0, 1].
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from negset.core.config import Positives
from negset.core.errors import NegsetError
from negset.core.listfile import read_list_entries


@dataclass(frozen=True)
class Box:
    cls: str
    x0: float
    y0: float
    x1: float
    y1: float
    crowd: bool = False  # COCO iscrowd: counts for target presence, not as one object


@dataclass
class LabelSet:
    """Boxes per labelled image, keyed by the image's resolved path.

    ``clipped`` counts the boxes that reached outside their image and were
    clipped to it (``clipped_first`` names the first one); the ingest summary
    reports both.
    """

    boxes: dict[Path, list[Box]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    source: str = ""
    clipped: int = 0
    clipped_first: str = ""

    def has_any(self, path: Path, names: set[str]) -> bool:
        return any(b.cls in names for b in self.boxes.get(path, ()))

    def note_clipped(self, where: str) -> None:
        self.clipped += 1
        if not self.clipped_first:
            self.clipped_first = where


@dataclass
class PositiveSpec:
    paths: set[Path]
    labels: LabelSet | None
    uris: set[str] = field(default_factory=set)  # positives in object stores (s3://bucket/key)


def _clip(v: float) -> float:
    return min(1.0, max(0.0, float(v)))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


CLIP_TOLERANCE = 1e-3  # edges this far (share of the image) outside it are rounding, not counted as clipped


def normalised_box(x0: float, y0: float, x1: float, y1: float, where: str, labels: LabelSet) -> tuple:
    """The box clipped to the image (counted when it had to be), or an error when nothing of it is inside.

    Policy: a box that reaches outside its image is clipped to it (the object
    is there, its box is a little off); a box with no area inside the image
    (NaN, zero or negative size, wholly outside) is refused with an error: it
    cannot be trusted, and dropping it could make a positive look like a negative.
    """
    box = tuple(_clip(v) for v in (x0, y0, x1, y1))
    if not box[0] < box[2] or not box[1] < box[3]:
        raise NegsetError(f"{where}: the box has no area inside the image "
                          f"(x0 {x0:.4g}, y0 {y0:.4g}, x1 {x1:.4g}, y1 {y1:.4g}, as shares of the image)",
                          hint="fix or remove that box")
    if max(abs(a - b) for a, b in zip(box, (x0, y0, x1, y1))) > CLIP_TOLERANCE:
        labels.note_clipped(where)
    return box


def read_coco_json(path: Path, hint: str = "check ingest.positives.path") -> dict:
    """A COCO instances file as a dict, or a clear error naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NegsetError(f"{path}: COCO annotation file not found", hint=hint) from None
    except UnicodeDecodeError:
        raise NegsetError(f"{path}: not a text file (a COCO file is UTF-8 JSON)", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise NegsetError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise NegsetError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    return data


def _coco_id(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value != "")


def _coco_images(path: Path, data: dict, images: Path) -> dict:
    """image id -> (resolved path, width, height); every entry checked once, errors name the entry."""
    by_id: dict = {}
    root = images.resolve()
    for n, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise NegsetError(f"{path}: images[{n}]: expected an object, got {type(im).__name__}")
        where = f"{path}: image id {im['id']!r}" if _coco_id(im.get("id")) else f"{path}: images[{n}]"
        for key in ("id", "file_name", "width", "height"):
            if key not in im:
                raise NegsetError(f"{where}: missing '{key}'", hint="every COCO image needs id, file_name, width and height")
        if not _coco_id(im["id"]):
            raise NegsetError(f"{where}: 'id' must be an integer, got {im['id']!r}")
        if not isinstance(im["file_name"], str) or not im["file_name"].strip():
            raise NegsetError(f"{where}: 'file_name' must be a file name, got {im['file_name']!r}")
        for key in ("width", "height"):
            if not _finite(im[key]) or im[key] <= 0:
                raise NegsetError(f"{where}: '{key}' must be a positive number, got {im[key]!r}")
        if im["id"] in by_id:
            raise NegsetError(
                f"{where}: the id is used twice (images[{by_id[im['id']][3]}] and images[{n}]); "
                "its labels could belong to either image",
                hint="give every image its own id",
            )
        name = im["file_name"]
        p = (root / name).resolve()
        if Path(name).is_absolute() or "\0" in name or not p.is_relative_to(root):
            raise NegsetError(f"{where}: file_name {name!r} is outside the image folder {root}",
                              hint="file_name must be relative to ingest.positives.images, without '..'")
        by_id[im["id"]] = (p, float(im["width"]), float(im["height"]), n)
    return by_id


def load_coco(path: Path, images: Path) -> LabelSet:
    """The boxes of a COCO instances file, validated once: ids, references, boxes (errors name the id)."""
    data = read_coco_json(path)
    cats: dict = {}
    for n, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _coco_id(c.get("id")) or not isinstance(c.get("name"), str):
            raise NegsetError(f"{path}: categories[{n}]: needs an integer 'id' and a 'name'")
        if c["id"] in cats:
            raise NegsetError(f"{path}: category id {c['id']!r} is used twice ({cats[c['id']]!r} and {c['name']!r})")
        cats[c["id"]] = c["name"]
    by_id = _coco_images(path, data, images)
    out = LabelSet(classes=list(cats.values()), source=str(path))
    for p, *_ in by_id.values():
        out.boxes.setdefault(p, [])
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise NegsetError(f"{path}: 'annotations' must be a list")
    seen_ann: set = set()
    for n, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise NegsetError(f"{path}: annotations[{n}]: expected an object, got {type(ann).__name__}")
        where = f"{path}: annotation id {ann['id']!r}" if _coco_id(ann.get("id")) else f"{path}: annotations[{n}]"
        if _coco_id(ann.get("id")):
            if ann["id"] in seen_ann:
                raise NegsetError(f"{where}: the id is used twice", hint="give every annotation its own id")
            seen_ann.add(ann["id"])
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise NegsetError(f"{where}: missing '{key}'", hint="every COCO annotation needs image_id, category_id and bbox")
        image = by_id.get(ann["image_id"]) if _coco_id(ann["image_id"]) else None
        if image is None:
            raise NegsetError(f"{where}: image_id {ann['image_id']!r} is not the id of any image in 'images'",
                              hint="its image would lose this label; fix the id or add the image")
        name = cats.get(ann["category_id"]) if _coco_id(ann["category_id"]) else None
        if name is None:
            raise NegsetError(f"{where}: uses unknown category_id {ann['category_id']!r}")
        bbox = ann["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_finite(v) for v in bbox):
            raise NegsetError(f"{where}: 'bbox' must be 4 finite numbers [x, y, width, height], got {bbox!r}")
        p, w, h, _ = image
        x, y, bw, bh = (float(v) for v in bbox)
        box = normalised_box(x / w, y / h, (x + bw) / w, (y + bh) / h, where, out) if bw > 0 and bh > 0 else None
        if box is None:
            raise NegsetError(f"{where}: 'bbox' has zero or negative size ({bw:g} x {bh:g})", hint="fix or remove that box")
        out.boxes[p].append(Box(name, *box, bool(ann.get("iscrowd", 0))))
    return out


def read_class_names(path: Path) -> list[str]:
    if not path.is_file():
        raise NegsetError(f"{path}: class names file not found", hint="check ingest.positives.classes")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        names = (yaml.safe_load(text) or {}).get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
        raise NegsetError(f"{path}: expected a 'names' list or mapping")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_yolo(labels_dir: Path, classes_file: Path, images: Path) -> LabelSet:
    if not labels_dir.is_dir():
        raise NegsetError(f"{labels_dir}: YOLO label folder not found", hint="check ingest.positives.path")
    names = read_class_names(classes_file)
    stems: dict[str, Path] = {}
    for p in sorted(images.rglob("*")):
        if p.is_file() and p.suffix.lower() != ".txt":
            stems.setdefault(p.stem, p.resolve())
    out = LabelSet(classes=names, source=str(labels_dir))
    for txt in sorted(labels_dir.rglob("*.txt")):
        image = stems.get(txt.stem)
        if image is None:
            continue
        out.boxes[image] = yolo_boxes(txt, names, classes_file, out)
    return out


def yolo_boxes(txt: Path, names: list[str], classes_file: Path, labels: LabelSet) -> list[Box]:
    """The boxes of one YOLO label file: ``class cx cy w h`` per line, normalised to [0, 1]; errors name file:line."""
    try:
        text = txt.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NegsetError(f"{txt}: not a text file (byte {exc.start} is not UTF-8); YOLO labels are text lines "
                          "'class cx cy w h'", hint="replace or remove that file") from None
    if "\0" in text:
        raise NegsetError(f"{txt}: not a text file (it holds NUL bytes); YOLO labels are text lines 'class cx cy w h'",
                          hint="replace or remove that file")
    boxes = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise NegsetError(f"{txt}:{n}: expected 5 fields 'class cx cy w h', got {len(parts)}: {line[:80]!r}",
                              hint="negset reads YOLO detection boxes (not segments, keypoints or scores)")
        try:
            cid = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:5])
        except (ValueError, TypeError):
            raise NegsetError(f"{txt}:{n}: expected 'class cx cy w h', got {line[:80]!r}") from None
        if not 0 <= cid < len(names):
            raise NegsetError(f"{txt}:{n}: class id {cid} is not in {classes_file} ({len(names)} classes)")
        values = dict(cx=cx, cy=cy, w=w, h=h)
        bad = [k for k, v in values.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
        if bad:
            raise NegsetError(f"{txt}:{n}: {bad[0]} = {parts[1 + list(values).index(bad[0])]} is outside [0, 1]; "
                              "YOLO coordinates are shares of the image", hint="fix or remove that line")
        if w <= 0 or h <= 0:
            raise NegsetError(f"{txt}:{n}: the box has zero size (w {w:g}, h {h:g})", hint="fix or remove that line")
        box = normalised_box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, f"{txt}:{n}", labels)
        boxes.append(Box(names[cid], *box))
    return boxes


def load_list(path: Path) -> set[Path]:
    """Image paths from a text file (one per line) or a CSV (its column path/file/filename/image/uri, or the first)."""
    paths, uris = load_list_entries(path)
    if uris:
        first = sorted(uris)[0]
        raise NegsetError(f"{path}: {first}: only local paths are supported here",
                          hint="s3:// positives are read by the ingest step")
    return paths


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); a key is a name, never a local path."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"{uri}: expected s3://BUCKET/KEY of one object")
    return bucket, key


# the columns of a positives CSV that hold the image, in order of preference (case-insensitive)
LIST_COLUMNS = ("path", "file", "filename", "image", "uri")


def _looks_like_path(cell: str) -> bool:
    cell = cell.strip()
    return "/" in cell or "\\" in cell or "://" in cell or bool(Path(cell).suffix)


def _refuse_header(path: Path) -> Callable[[list[str]], None]:
    """A positives CSV's first row that names no ``LIST_COLUMNS``: data when a cell looks like a path
    (a folder, suffix or scheme), else a header naming no image column, which is an error."""

    def check(row: list[str]) -> None:
        if not any(_looks_like_path(h) for h in row):
            raise NegsetError(
                f"{path}: line 1: the header ({', '.join(h.strip() for h in row)}) names no image column",
                hint=f"name the column of image paths one of: {', '.join(LIST_COLUMNS)} (any case), or drop the header",
            )

    return check


def load_list_entries(path: Path) -> tuple[set[Path], set[str]]:
    """Local image paths and s3:// URIs from a positives list."""
    if not path.is_file():
        raise NegsetError(f"{path}: positives list not found", hint="check ingest.positives.path")
    base = path.parent
    entries = [entry for _, entry in read_list_entries(path, LIST_COLUMNS, _refuse_header(path))]
    out: set[Path] = set()
    uris: set[str] = set()
    for entry in entries:
        if entry.startswith("s3://"):
            try:
                parse_s3_uri(entry)
            except ValueError as exc:
                raise NegsetError(f"{path}: {exc}") from None
            uris.add(entry)
            continue
        if "://" in entry and not entry.startswith("file://"):
            raise NegsetError(
                f"{path}: {entry}: positives must be local paths or s3:// URIs",
                hint="copy the positives locally, or list them as s3://BUCKET/KEY",
            )
        p = Path(entry.removeprefix("file://"))
        out.add((p if p.is_absolute() else base / p).resolve())
    return out, uris


def check_targets(targets: list[str], labels: LabelSet) -> None:
    known = set(labels.classes)
    for t in targets:
        if t not in known:
            close = difflib.get_close_matches(t, labels.classes, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"classes there: {', '.join(labels.classes[:20])}"
            raise NegsetError(f"ingest.target: '{t}' is not a class in {labels.source}", hint=hint)


def load_positives(spec: Positives, targets: list[str], root: Path) -> PositiveSpec:
    path = (root / spec.path).resolve()
    if spec.format == "list":
        paths, uris = load_list_entries(path)
        missing = sorted(p for p in paths if not p.is_file())
        if missing:
            raise NegsetError(f"{path}: {len(missing)} positive image(s) not found, first: {missing[0]}")
        if not paths and not uris:
            raise NegsetError(f"{path}: the positives list is empty")
        return PositiveSpec(paths=paths, labels=None, uris=uris)
    images = (root / spec.images).resolve()
    if not images.is_dir():
        raise NegsetError(f"{images}: image folder not found", hint="check ingest.positives.images")
    if spec.format == "coco":
        labels = load_coco(path, images)
    else:
        labels = load_yolo(path, (root / spec.classes).resolve(), images)
    check_targets(targets, labels)
    wanted = set(targets)
    paths = {p for p in labels.boxes if labels.has_any(p, wanted) and p.is_file()}
    if not paths:
        raise NegsetError(
            f"{labels.source}: no image is labelled with {', '.join(targets)}",
            hint="check ingest.target and that the labels match the images folder",
        )
    for t in targets:  # each target must be one negset can keep out: a class no image has would be ignored
        if not any(labels.has_any(p, {t}) for p in paths):
            raise NegsetError(
                f"ingest.target: no image in {labels.source} is labelled '{t}'; "
                "the negatives could not be kept free of it",
                hint=f"remove '{t}' from ingest.target, or add images labelled with it",
            )
    return PositiveSpec(paths=paths, labels=labels)


__all__ = ["Box", "LabelSet", "PositiveSpec", "load_positives", "load_coco", "load_yolo", "load_list"]
