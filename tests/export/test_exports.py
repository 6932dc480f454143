"""COCO and YOLO exports a trainer reads without edits (pycocotools; the Ultralytics layout)."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import copy_built, run

pycocotools_coco = pytest.importorskip("pycocotools.coco")


@pytest.fixture
def built(built_project, tmp_path):
    return copy_built(built_project, tmp_path / "proj")


def negset(root, *args, check=True):
    return run([sys.executable, "-m", "negset", "--no-prefect", *args], root, check=check)


def manifest(root) -> list[dict]:
    return pq.read_table(root / "data/negatives/manifest.parquet").to_pylist()


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def positives_only_coco(root, dest):
    """The demo's COCO file cut down to the images that hold a person: a typical positives file."""
    data = json.loads((root / "examples/coco-sample/annotations/instances.json").read_text())
    person = {c["id"] for c in data["categories"] if c["name"] == "person"}
    keep = {a["image_id"] for a in data["annotations"] if a["category_id"] in person}
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    dest.write_text(json.dumps(data))
    return data


def test_coco_merge_keeps_every_original_and_adds_the_negatives(built, tmp_path):
    original = positives_only_coco(built, tmp_path / "positives.json")
    images_root = built / "examples/coco-sample/images"
    out = tmp_path / "train.json"
    proc = negset(built, "--json", "export-coco", "--positives", str(tmp_path / "positives.json"),
                  "--image-root", str(images_root), "--out", str(out))
    summary = json.loads(proc.stdout)
    rows = manifest(built)
    assert summary["negatives_added"] == len(rows) == 8 and summary["negatives_already_present"] == 0

    coco = pycocotools_coco.COCO(str(out))  # the reference reader loads it
    merged = json.loads(out.read_text())
    for key in ("info", "licenses", "categories"):
        assert merged[key] == original[key]
    assert merged["images"][: len(original["images"])] == original["images"]
    assert merged["annotations"] == original["annotations"]
    ids = [im["id"] for im in merged["images"]]
    assert len(ids) == len(set(ids)) == len(original["images"]) + 8
    new = merged["images"][len(original["images"]) :]
    assert not {im["id"] for im in new} & {im["id"] for im in original["images"]}
    by_sha = {r["sha256"]: r for r in rows}
    for im in new:
        assert coco.getAnnIds(imgIds=[im["id"]]) == []  # a negative: no objects
        path = images_root / im["file_name"]  # how detectron2, mmdet, torchvision join them
        assert not os.path.isabs(im["file_name"]) and path.is_file()
        row = by_sha[sha256(path)]
        assert (im["width"], im["height"]) == Image.open(path).size == (row["width"], row["height"])
    assert {sha256(images_root / im["file_name"]) for im in new} == set(by_sha)
    # the positives keep their annotations through the reader too
    person = coco.getCatIds(catNms=["person"])
    assert set(coco.getImgIds(catIds=person)) == {im["id"] for im in original["images"]}


def test_coco_default_merge_does_not_duplicate_images_already_in_the_file(built):
    proc = negset(built, "--json", "export-coco")
    summary = json.loads(proc.stdout)
    original = json.loads((built / "examples/coco-sample/annotations/instances.json").read_text())
    out = built / "data/exports/coco/instances.json"
    # the demo's COCO file already lists every candidate: all 8 negatives are there, none is added twice
    assert summary["negatives_already_present"] == 8 and summary["negatives_added"] == 0
    assert json.loads(out.read_text()) == original
    pycocotools_coco.COCO(str(out))


def test_coco_negatives_alone(built):
    out = built / "negatives.json"
    negset(built, "export-coco", "--no-merge", "--out", str(out))
    coco = pycocotools_coco.COCO(str(out))
    data = json.loads(out.read_text())
    assert data["annotations"] == [] and [c["name"] for c in data["categories"]] == ["person"]
    root = built / "data/negatives/images"
    assert sorted(sha256(root / im["file_name"]) for im in data["images"]) == sorted(r["sha256"] for r in manifest(built))
    assert all(coco.getAnnIds(imgIds=[i]) == [] for i in coco.getImgIds())


def test_coco_refuses_to_overwrite_the_positives_file(built):
    target = built / "examples/coco-sample/annotations/instances.json"
    before = target.read_bytes()
    proc = negset(built, "export-coco", "--out", str(target), check=False)
    assert proc.returncode == 2 and "refusing to overwrite the positives' COCO file" in proc.stderr
    assert "Traceback" not in proc.stderr and target.read_bytes() == before


def ultralytics_label_path(image_path: str) -> str:
    """Ultralytics' rule: the last /images/ becomes /labels/, the suffix becomes .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return sb.join(image_path.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt"


def test_yolo_layout_is_what_ultralytics_reads(built, tmp_path):
    out = tmp_path / "yolo"
    proc = negset(built, "--json", "export-yolo", "--out", str(out))
    assert json.loads(proc.stdout)["images"] == 8
    listing = out / "negatives.txt"
    lines = listing.read_text().splitlines()
    assert len(lines) == 8 and all(line.startswith("./images/") for line in lines)
    parent = str(listing.parent) + os.sep
    images = [line.replace("./", parent) if line.startswith("./") else line for line in lines]  # Ultralytics resolves ./ this way
    shas = set()
    for img in images:
        assert img.rsplit(".", 1)[1].lower() in ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "mpo")
        with Image.open(img) as im:
            im.verify()
        label = ultralytics_label_path(img)
        assert os.path.isfile(label) and os.path.getsize(label) == 0  # background image: no objects
        shas.add(sha256(out / "images" / os.path.basename(img)))
    assert shas == {r["sha256"] for r in manifest(built)}
    stems = lambda d: sorted(p.rsplit(".", 1)[0] for p in os.listdir(out / d))  # noqa: E731
    assert stems("images") == stems("labels")

    negset(built, "export-yolo", "--out", str(out))  # a second export replaces its own folder
    assert len(os.listdir(out / "images")) == 8


def test_yolo_refuses_to_replace_a_foreign_folder(built, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    proc = negset(built, "export-yolo", "--out", str(foreign), check=False)
    assert proc.returncode == 2 and "refusing to replace it" in proc.stderr and "Traceback" not in proc.stderr
    assert (foreign / "keep.txt").read_text() == "precious"


def test_help_shows_each_command_with_examples(built):
    top = run([sys.executable, "-m", "negset", "--help"], built).stdout
    for cmd in ("report", "export-coco", "export-yolo"):
        assert f"\n    {cmd} " in top and f"negset {cmd}" in top
    for cmd, option in (("export-coco", "--no-merge"), ("export-yolo", "--out")):
        text = run([sys.executable, "-m", "negset", cmd, "--help"], built).stdout
        assert "examples:" in text and option in text
