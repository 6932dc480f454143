"""Read positives and their labels: COCO JSON, YOLO folders, or plain lists.

Everything is turned into one shape: for each labelled image (its resolved
path) the list of its boxes, as class name plus a normalised box
``(x0, y0, x1, y1)`` in [0, 1].
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

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
    """Boxes per labelled image, keyed by the image's resolved path."""

    boxes: dict[Path, list[Box]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    source: str = ""

    def has_any(self, path: Path, names: set[str]) -> bool:
        return any(b.cls in names for b in self.boxes.get(path, ()))


@dataclass
class PositiveSpec:
    paths: set[Path]
    labels: LabelSet | None
    uris: set[str] = field(default_factory=set)  # positives in object stores (s3://bucket/key)


def _clip(v: float) -> float:
    return min(1.0, max(0.0, float(v)))


def read_coco_json(path: Path, hint: str = "check ingest.positives.path") -> dict:
    """A COCO instances file as a dict, or a clear error naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NegsetError(f"{path}: COCO annotation file not found", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise NegsetError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise NegsetError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    return data


def load_coco(path: Path, images: Path) -> LabelSet:
    data = read_coco_json(path)
    cats = {c["id"]: c["name"] for c in data["categories"]}
    by_id = {}
    out = LabelSet(classes=[c["name"] for c in data["categories"]], source=str(path))
    for im in data["images"]:
        p = (images / im["file_name"]).resolve()
        by_id[im["id"]] = (p, float(im["width"]), float(im["height"]))
        out.boxes[p] = []
    for ann in data.get("annotations", []):
        if ann["image_id"] not in by_id:
            continue
        p, w, h = by_id[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        name = cats.get(ann["category_id"])
        if name is None:
            raise NegsetError(f"{path}: annotation {ann.get('id')} uses unknown category_id {ann['category_id']}")
        out.boxes[p].append(
            Box(name, _clip(x / w), _clip(y / h), _clip((x + bw) / w), _clip((y + bh) / h), bool(ann.get("iscrowd", 0)))
        )
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
        boxes = []
        for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                cid = int(parts[0])
                cx, cy, w, h = (float(v) for v in parts[1:5])
            except (ValueError, TypeError):
                raise NegsetError(f"{txt}:{n}: expected 'class cx cy w h', got {line!r}") from None
            if not 0 <= cid < len(names):
                raise NegsetError(f"{txt}:{n}: class id {cid} is not in {classes_file} ({len(names)} classes)")
            boxes.append(Box(names[cid], _clip(cx - w / 2), _clip(cy - h / 2), _clip(cx + w / 2), _clip(cy + h / 2)))
        out.boxes[image] = boxes
    return out


def load_list(path: Path) -> set[Path]:
    """Image paths from a text file (one per line) or a CSV (column path/uri/image or the first)."""
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


def load_list_entries(path: Path) -> tuple[set[Path], set[str]]:
    """Local image paths and s3:// URIs from a positives list."""
    if not path.is_file():
        raise NegsetError(f"{path}: positives list not found", hint="check ingest.positives.path")
    base = path.parent
    entries = [entry for _, entry in read_list_entries(path, ("path", "uri", "image", "file"))]
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
    return PositiveSpec(paths=paths, labels=labels)


__all__ = ["Box", "LabelSet", "PositiveSpec", "load_positives", "load_coco", "load_yolo", "load_list"]
