"""Issue 18, case 5 (exports): names in line-based files are safe, and both exports replace only what they wrote."""

from __future__ import annotations

import json
import os
import sys

import pyarrow.parquet as pq
import pytest

from negset.export.step import image_name
from tests.conftest import copy_built, run
from tests.support.datatree import changes, snapshot

INSTANCES = "examples/coco-sample/annotations/instances.json"


def negset(root, *args, check=True):
    return run([sys.executable, "-m", "negset", "--no-prefect", *args], root, check=check)


@pytest.fixture
def built(built_project, tmp_path):
    return copy_built(built_project, tmp_path / "proj")


@pytest.mark.parametrize("name, safe", [
    ("evil\nname.jpg", "evil_name.jpg"),
    ("tab\there\r.png", "tab_here_.png"),
    ("my photo (1).jpg", "my_photo__1_.jpg"),
    ("..hidden.jpg", "hidden.jpg"),
    ("héllo.jpg", "héllo.jpg"),
])
def test_exported_names_are_one_safe_line(name, safe):
    assert image_name(f"pool/{name}", "0123456789abcdef" * 4) == f"0123456789ab_{safe}"


@pytest.mark.slow
def test_a_newline_in_a_file_name_does_not_break_negatives_txt(project):
    """Before: `negatives.txt` of export-yolo got two bogus lines for one image."""
    images = project / "examples" / "coco-sample" / "images"
    chosen = "000000000092.jpg"  # one of the demo's 8 negatives
    odd = "000000000092\nfrom a careless tool.jpg"
    os.rename(images / chosen, images / odd)
    coco = json.loads((project / INSTANCES).read_text())
    next(im for im in coco["images"] if im["file_name"] == chosen)["file_name"] = odd  # its labels follow it
    (project / INSTANCES).write_text(json.dumps(coco))
    negset(project, "-q", "build")
    rows = pq.read_table(project / "data" / "negatives" / "manifest.parquet").to_pylist()
    row = next(r for r in rows if r["uri"] == f"examples/coco-sample/images/{odd}")  # the real uri, kept
    assert row["image"] == f"images/{row['sha256'][:12]}_000000000092_from_a_careless_tool.jpg"
    out = project / "yolo"
    negset(project, "export-yolo", "--out", str(out))
    lines = (out / "negatives.txt").read_text().split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == len(rows) == 8
    assert all(line.startswith("./images/") and (out / line[2:]).is_file() for line in lines[:-1])
    assert f"./images/{row['sha256'][:12]}_000000000092_from_a_careless_tool.jpg" in lines
    labels = {p.stem for p in (out / "labels").iterdir()}
    assert labels == {os.path.splitext(os.path.basename(l))[0] for l in lines[:-1]}


def test_export_coco_refuses_a_file_it_did_not_write(built, tmp_path):
    target = tmp_path / "train.json"
    target.write_text('{"a user\'s": "file"}\n')
    before = snapshot(built / "data")
    proc = negset(built, "export-coco", "--out", str(target), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-2:] == [
        f"negset: error: {target}: exists and was not written by negset export-coco; refusing to replace it",
        "  hint: pass a new --out path, or remove the file first",
    ]
    assert target.read_text() == '{"a user\'s": "file"}\n'
    assert changes(before, snapshot(built / "data")) == []


def test_export_coco_replaces_its_own_output_unless_it_was_changed(built, tmp_path):
    out = tmp_path / "negatives.json"
    negset(built, "export-coco", "--no-merge", "--out", str(out))
    first = out.read_bytes()
    negset(built, "export-coco", "--no-merge", "--out", str(out))  # its own output: replaced
    assert out.read_bytes() == first
    out.write_text(out.read_text().replace('"annotations"', '"annotations" ', 1))  # a user edits it
    proc = negset(built, "export-coco", "--no-merge", "--out", str(out), check=False)
    assert proc.returncode == 2
    assert f"{out}: changed since negset export-coco wrote it; refusing to replace it" in proc.stderr


def test_export_yolo_refuses_a_folder_it_did_not_write(built, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = negset(built, "export-yolo", "--out", str(out), check=False)
    assert proc.returncode == 2 and "was not written by negset export-yolo; refusing to replace it" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
