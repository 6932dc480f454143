"""Tags read from annotations and from the user, for the tag step.

- COCO panoptic labels (``tag.background.panoptic``): per image the dominant
  *stuff* class by area (sky, grass, wall, floor, ...) and indoor/outdoor
  from the stuff supercategories; source ``annotation``.
- User tags (``tag.user_tags``): a CSV, or a JSON list of rows or mapping
  of key to tags; rows keyed by ``file`` (file name), ``uri`` or ``sha256``,
  with any of the columns ``lighting``, ``background``, ``occlusion``;
  source ``user``. An empty cell leaves that tag to the other sources.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from negset.core.errors import NegsetError

log = logging.getLogger("negset.tags")

# COCO panoptic stuff supercategories (the JSON's own "supercategory" field)
OUTDOOR_SUPERCATEGORIES = frozenset({"sky", "ground", "water", "plant", "building", "solid", "structural"})
INDOOR_SUPERCATEGORIES = frozenset({"ceiling", "floor", "wall", "window", "furniture-stuff", "textile"})
# food-stuff and raw-material (paper, cardboard, ...) say nothing about the scene

TAG_COLUMNS = ("lighting", "background", "occlusion")
KEY_COLUMNS = ("sha256", "uri", "file")
NOTE_COLUMNS = ("note", "notes", "comment")
OCCLUSION_VALUES = ("none", "partial", "heavy", "unknown")


def file_name(uri: str) -> str:
    """The file name of an image's uri (relative path, file://, s3:// or http(s) URL)."""
    return posixpath.basename(unquote(urlsplit(uri).path))


# ----------------------------------------------------------------- panoptic


@dataclass
class PanopticImage:
    file_name: str  # the image's file name
    png: str  # the panoptic PNG's file name
    width: int
    height: int
    segments: list[dict]
    scene: str = "unknown"  # indoor / outdoor / unknown
    scene_share: float = 0.0  # the scene's share of the stuff area that has a scene
    stuff: str | None = None  # dominant stuff class by area
    stuff_share: float = 0.0  # its share of the stuff area
    stuff_areas: dict[str, float] = field(default_factory=dict)


def load_panoptic(path: Path) -> tuple[dict[str, PanopticImage], dict[int, dict]]:
    """Panoptic labels per image file name, and the categories by id."""
    hint = "check tag.background.panoptic.json"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NegsetError(f"{path}: COCO panoptic file not found", hint=hint) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NegsetError(f"{path}: not valid JSON: {exc}", hint=hint) from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise NegsetError(f"{path}: not a COCO panoptic file (needs 'images', 'annotations' and 'categories' lists)", hint=hint)
    try:
        cats = {int(c["id"]): c for c in data["categories"]}
        images = {int(im["id"]): im for im in data["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise NegsetError(f"{path}: a category or image without an id ({exc})", hint=hint) from None
    out: dict[str, PanopticImage] = {}
    for n, ann in enumerate(data["annotations"]):
        try:
            im = images[int(ann["image_id"])]
            segments = list(ann["segments_info"])
            entry = PanopticImage(
                file_name=str(im["file_name"]), png=str(ann["file_name"]),
                width=int(im["width"]), height=int(im["height"]), segments=segments,
            )
            areas: dict[str, float] = {}
            scene = {"indoor": 0.0, "outdoor": 0.0}
            for seg in segments:
                cat = cats[int(seg["category_id"])]
                if cat.get("isthing"):
                    continue
                area = float(seg["area"])
                areas[cat["name"]] = areas.get(cat["name"], 0.0) + area
                sup = cat.get("supercategory")
                if sup in OUTDOOR_SUPERCATEGORIES:
                    scene["outdoor"] += area
                elif sup in INDOOR_SUPERCATEGORIES:
                    scene["indoor"] += area
        except (KeyError, TypeError, ValueError) as exc:
            raise NegsetError(f"{path}: annotation {n}: missing or bad field ({exc!r})", hint=hint) from None
        entry.stuff_areas = areas
        total = sum(areas.values())
        if total > 0:
            entry.stuff = max(sorted(areas), key=lambda k: areas[k])
            entry.stuff_share = areas[entry.stuff] / total
        if scene["indoor"] + scene["outdoor"] > 0:
            entry.scene = "indoor" if scene["indoor"] > scene["outdoor"] else "outdoor"
            entry.scene_share = scene[entry.scene] / (scene["indoor"] + scene["outdoor"])
        out[entry.file_name] = entry
    return out, cats


def panoptic_background(entry: PanopticImage, value: str) -> tuple[str, float] | None:
    """(background value, confidence) from an image's panoptic labels; None when they say nothing."""
    if value == "scene":
        return (entry.scene, entry.scene_share) if entry.scene != "unknown" else None
    if value == "stuff":
        return (entry.stuff, entry.stuff_share) if entry.stuff else None
    if entry.scene == "unknown" or not entry.stuff:
        return None
    return f"{entry.scene}: {entry.stuff}", min(entry.scene_share, entry.stuff_share)


def match_by_file_name(images: list[dict], names: set[str]) -> dict[str, str]:
    """sha256 -> file name for the images whose file name is in ``names`` and unique in the pool."""
    by_name: dict[str, list[str]] = {}
    for im in images:
        by_name.setdefault(file_name(im["uri"]), []).append(im["sha256"])
    out = {}
    for name, shas in by_name.items():
        if name in names:
            if len(set(shas)) > 1:
                log.warning("tag: %d images are named %s; annotations by file name skip them", len(shas), name)
                continue
            out[shas[0]] = name
    return out


# ---------------------------------------------------------------- user tags


def _check_columns(path: Path, columns: list[str], where: str) -> None:
    if not any(c in columns for c in KEY_COLUMNS):
        raise NegsetError(f"{path}: {where}: no key column", hint="add a column file (file name), uri or sha256")
    valid = KEY_COLUMNS + TAG_COLUMNS + NOTE_COLUMNS
    for col in columns:
        if col not in valid:
            close = difflib.get_close_matches(col, valid, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"columns: {', '.join(valid)}"
            raise NegsetError(f"{path}: {where}: unknown column '{col}'", hint=hint)
    if not any(c in columns for c in TAG_COLUMNS):
        raise NegsetError(f"{path}: {where}: no tag column", hint="add any of the columns lighting, background, occlusion")


def _check_value(path: Path, where: str, column: str, value) -> str | None:
    from negset.tag.lighting import LIGHTING_CLASSES

    if value is None:
        return None
    if not isinstance(value, str):
        raise NegsetError(f"{path}: {where}: column '{column}': expected text, got {value!r}")
    value = value.strip()
    if not value:
        return None
    allowed = {"lighting": LIGHTING_CLASSES, "occlusion": OCCLUSION_VALUES}.get(column)
    if allowed and value not in allowed:
        raise NegsetError(
            f"{path}: {where}: column '{column}': '{value}' is not a {column} value",
            hint=f"one of {', '.join(allowed)} (or leave the cell empty)",
        )
    if len(value) > 200:
        raise NegsetError(f"{path}: {where}: column '{column}': value longer than 200 characters")
    return value


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) pairs from a CSV or JSON user-tag file."""
    hint = "check tag.user_tags"
    if not path.is_file():
        raise NegsetError(f"{path}: user tags file not found", hint=hint)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NegsetError(f"{path}: not UTF-8 text ({exc})", hint=hint) from None
    if suffix == ".csv":
        reader = csv.reader(text.splitlines())
        rows = list(reader)
        if not rows:
            raise NegsetError(f"{path}: empty user tags file", hint="a header row: file,lighting,background,occlusion")
        header = [h.strip().lower() for h in rows[0]]
        _check_columns(path, header, "header")
        out = []
        for n, row in enumerate(rows[1:], start=2):
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise NegsetError(f"{path}: row {n}: {len(row)} cells for {len(header)} columns")
            out.append((f"row {n}", dict(zip(header, row))))
        return out
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NegsetError(f"{path}: not valid JSON: {exc}", hint=hint) from None
        if isinstance(data, dict):  # {key: {lighting: ...}}: the key is a sha256, uri or file name
            items = []
            for key, tags in data.items():
                if not isinstance(tags, dict):
                    raise NegsetError(f"{path}: entry '{key}': expected an object of tags, got {tags!r}")
                items.append((f"entry '{key}'", {"key": key, **tags}))
        elif isinstance(data, list):
            items = []
            for n, row in enumerate(data):
                if not isinstance(row, dict):
                    raise NegsetError(f"{path}: entry {n}: expected an object, got {row!r}")
                items.append((f"entry {n}", row))
        else:
            raise NegsetError(f"{path}: expected a list of rows or an object of key -> tags", hint=hint)
        for where, row in items:
            cols = [c for c in row if c != "key"] + (["file"] if "key" in row else [])
            _check_columns(path, cols, where)
        return items
    raise NegsetError(f"{path}: user tags must be a .csv or .json file", hint=hint)


def load_user_tags(path: Path, images: list[dict]) -> dict[str, dict[str, str]]:
    """sha256 -> {tag: value} from a user-tag file; rows for images not in the pool are skipped."""
    shas = {im["sha256"] for im in images}
    by_uri = {im["uri"]: im["sha256"] for im in images}
    by_name: dict[str, set[str]] = {}
    for im in images:
        by_name.setdefault(file_name(im["uri"]), set()).add(im["sha256"])
    out: dict[str, dict[str, str]] = {}
    unmatched = 0
    for where, row in _read_rows(Path(path)):
        tags = {c: _check_value(path, where, c, row.get(c)) for c in TAG_COLUMNS if c in row}
        tags = {c: v for c, v in tags.items() if v is not None}
        targets: set[str] = set()
        keys = [(c, row[c]) for c in KEY_COLUMNS if row.get(c) not in (None, "")]
        if "key" in row:
            keys.append(("key", row["key"]))
        if not keys:
            raise NegsetError(f"{path}: {where}: empty key", hint="fill file, uri or sha256")
        for col, key in keys:
            key = str(key).strip()
            if col in ("sha256", "key") and key.lower() in shas:
                targets.add(key.lower())
            elif col in ("uri", "key") and key in by_uri:
                targets.add(by_uri[key])
            elif col in ("file", "key") and key in by_name:
                if len(by_name[key]) > 1:
                    raise NegsetError(
                        f"{path}: {where}: {len(by_name[key])} images are named '{key}'",
                        hint="key this row by uri or sha256",
                    )
                targets |= by_name[key]
        if not targets:
            unmatched += 1
            continue
        for sha in targets:
            out.setdefault(sha, {}).update(tags)
    if unmatched:
        log.warning("tag: %s: %d row(s) name no image of the pool", path, unmatched)
    log.info("tag: user tags for %d images from %s", len(out), path)
    return out
