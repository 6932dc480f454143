"""Issue 18, case 1 (and the label-file parts of 3 and 4): the label readers check ids, references and boxes
once; a damaged file is one line naming the file and the image or annotation id, and data/ stays as it was."""

from __future__ import annotations

import copy
import json
import sys

import pytest

from negset.core.config import Positives
from negset.core.errors import NegsetError
from negset.ingest.labels import load_coco, load_positives, load_yolo
from tests.conftest import REPO, SAMPLE, copy_built, copy_project, run, write_params
from tests.support.datatree import changes, snapshot

INSTANCES = "examples/coco-sample/annotations/instances.json"
DOG = 309  # 000000000309.jpg: the sample's one dog photo


def coco() -> dict:
    return json.loads((SAMPLE / "annotations" / "instances.json").read_text())


def negset(root, *args):
    return run([sys.executable, "-m", "negset", "--no-prefect", *args], root, check=False)


def one_line_error(proc) -> str:
    """The error line of a failed command: exit 2, no traceback, one line (plus the hint)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("negset: error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0].removeprefix("negset: error: ")


def _dup_dog_id(d):  # another image, listed after the dog photo, takes its id
    later = next(im for im in d["images"][[im["id"] for im in d["images"]].index(DOG) + 1 :])
    later["id"] = DOG
    return later["file_name"]


def _orphan(d):
    d["annotations"][5]["image_id"] = 999_999_999


def _nan_box(d):
    d["annotations"][3]["bbox"][2] = float("nan")


def _negative_box(d):
    d["annotations"][3]["bbox"][3] = -12.0


def _outside_box(d):
    im = next(i for i in d["images"] if i["id"] == d["annotations"][4]["image_id"])
    d["annotations"][4]["bbox"] = [im["width"] + 10, 5.0, 20.0, 20.0]


def _escape(d):
    d["images"][2]["file_name"] = "../../secret/" + d["images"][2]["file_name"]


def _no_bbox(d):
    del d["annotations"][7]["bbox"]


def _no_file_name(d):
    del d["images"][4]["file_name"]


def _no_width(d):
    del d["images"][6]["width"]


def _dup_annotation(d):
    d["annotations"][9]["id"] = d["annotations"][8]["id"]


DAMAGE = {
    # name: (edit, the one-line message it must give, with {ann}/{img} filled from the edited entry)
    "duplicate image id": (_dup_dog_id, "image id 309: the id is used twice (images[{dog}] and images[{later}]); "
                           "its labels could belong to either image"),
    "annotation naming no image": (_orphan, "annotation id {ann5}: image_id 999999999 is not the id of any image in 'images'"),
    "NaN box": (_nan_box, "annotation id {ann3}: 'bbox' must be 4 finite numbers [x, y, width, height]"),
    "negative box": (_negative_box, "annotation id {ann3}: 'bbox' has zero or negative size"),
    "box outside the image": (_outside_box, "annotation id {ann4}: the box has no area inside the image"),
    "file_name with ..": (_escape, "image id {img2}: file_name '../../secret/"),
    "annotation without bbox": (_no_bbox, "annotation id {ann7}: missing 'bbox'"),
    "image without file_name": (_no_file_name, "image id {img4}: missing 'file_name'"),
    "image without width": (_no_width, "image id {img6}: missing 'width'"),
    "duplicate annotation id": (_dup_annotation, "annotation id {ann8}: the id is used twice"),
}


def _expected(message: str, d: dict) -> str:
    ids = [im["id"] for im in d["images"]]
    fill = {f"ann{i}": d["annotations"][i]["id"] for i in range(10)} | {f"img{i}": ids[i] for i in range(8)}
    fill |= {"dog": ids.index(DOG)}
    fill["later"] = ids.index(DOG) + 1  # (_dup_dog_id gives the dog's id to the image listed next)
    return message.format(**fill)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_coco_file_is_one_line_naming_the_id(case, tmp_path):
    edit, message = DAMAGE[case]
    original = coco()
    d = copy.deepcopy(original)
    expected = _expected(message, original)
    edit(d)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(d))  # (json writes NaN as NaN, as a careless tool would)
    with pytest.raises(NegsetError) as info:
        load_coco(path, SAMPLE / "images")
    text = str(info.value)
    assert text.splitlines()[0].startswith(f"{path}: {expected}"), text
    assert len([l for l in text.splitlines() if not l.startswith("  hint:")]) == 1


def test_duplicate_image_id_stops_the_build_and_the_dog_photo_is_never_chosen(project):
    """Before: the dog's labels moved to the other image, the dog photo became 'labelled, no boxes' and was chosen."""
    d = coco()
    other = _dup_dog_id(d)
    (project / INSTANCES).write_text(json.dumps(d))
    write_params(project, ingest={"target": ["dog"]}, select={"count": 30})
    proc = negset(project, "build")
    line = one_line_error(proc)
    dog = [i["id"] for i in coco()["images"]].index(DOG)
    assert [i["file_name"] for i in d["images"]].index(other) == dog + 1
    assert line == (f"{(project / INSTANCES).resolve()}: image id 309: the id is used twice "
                    f"(images[{dog}] and images[{dog + 1}]); its labels could belong to either image")
    # nothing was selected, so nothing (the dog photo least of all) can be chosen
    assert not (project / "data" / "select").exists() and not (project / "data" / "negatives").exists()
    assert not (project / "data" / "ingest").exists()


def test_the_same_labels_read_right_put_the_dog_photo_among_the_positives():
    """The control: with the ids intact, the dog photo is a positive, so the select step never picks it."""
    spec = Positives(format="coco", path=INSTANCES, images="examples/coco-sample/images")
    pos = load_positives(spec, ["dog"], REPO)
    assert {p.name for p in pos.paths} == {"000000000309.jpg"}


@pytest.fixture
def built(built_project, tmp_path):
    return copy_built(built_project, tmp_path / "proj")


@pytest.mark.parametrize("case", ["annotation naming no image", "file_name with ..", "image without width"])
def test_a_damaged_coco_file_leaves_data_unchanged(built, case):
    edit, message = DAMAGE[case]
    d = coco()
    expected = _expected(message, d)
    edit(d)
    (built / INSTANCES).write_text(json.dumps(d))
    before = snapshot(built / "data")
    line = one_line_error(negset(built, "ingest"))
    assert line.startswith(f"{(built / INSTANCES).resolve()}: {expected}")
    assert changes(before, snapshot(built / "data")) == []


def test_boxes_reaching_outside_the_image_are_clipped_and_counted(project):
    d = coco()
    ann = d["annotations"][0]
    im = next(i for i in d["images"] if i["id"] == ann["image_id"])
    ann["bbox"] = [im["width"] - 10.0, 0.0, 50.0, 20.0]  # 40 px beyond the right edge
    (project / INSTANCES).write_text(json.dumps(d))
    proc = negset(project, "--json", "ingest")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["boxes_clipped"] == 1
    assert f"1 box(es) reached outside their image and were clipped to it; first: " in proc.stderr
    assert f"annotation id {ann['id']}" in proc.stderr
    on_disk = json.loads((project / "data" / "ingest" / "summary.json").read_text())
    assert on_disk["boxes_clipped"] == 1


YOLO = dict(format="yolo", path="labels", images="examples/coco-sample/images", classes="examples/coco-sample/classes.txt")


def yolo_project(tmp_path):
    root = copy_project(tmp_path / "proj")
    import shutil

    shutil.copytree(SAMPLE / "labels", root / "labels")
    return root


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2 0.2 0.9", "expected 5 fields 'class cx cy w h', got 6: '0 0.5 0.5 0.2 0.2 0.9'"),
    ("0 0.5 0.5 0.2 0.2 0.1 0.1 0.3 0.3", "expected 5 fields 'class cx cy w h', got 9: '0 0.5 0.5 0.2 0.2 0.1 0.1 0.3 0.3'"),
    ("0 1.5 0.5 0.2 0.2", "cx = 1.5 is outside [0, 1]; YOLO coordinates are shares of the image"),
    ("0 0.5 0.5 -0.2 0.2", "w = -0.2 is outside [0, 1]; YOLO coordinates are shares of the image"),
    ("0 0.5 0.5 nan 0.2", "w = nan is outside [0, 1]; YOLO coordinates are shares of the image"),
    ("0 0.5 0.5 0 0.2", "the box has zero size (w 0, h 0.2)"),
])
def test_yolo_lines_out_of_format_are_refused(tmp_path, line, message):
    root = yolo_project(tmp_path)
    txt = root / "labels" / "000000000030.txt"
    txt.write_text(txt.read_text() + line + "\n")
    n = txt.read_text().count("\n")
    with pytest.raises(NegsetError) as info:
        load_yolo(root / "labels", SAMPLE / "classes.txt", SAMPLE / "images")
    assert str(info.value).splitlines()[0] == f"{txt}:{n}: {message}"


def test_a_binary_yolo_label_file_is_one_line_and_data_stays(tmp_path):
    root = yolo_project(tmp_path)
    write_params(root, ingest={"positives": YOLO})
    assert negset(root, "ingest").returncode == 0
    before = snapshot(root / "data")
    txt = sorted((root / "labels").glob("*.txt"))[1]
    txt.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    line = one_line_error(negset(root, "ingest"))
    assert line == (f"{txt.resolve()}: not a text file (byte 0 is not UTF-8); YOLO labels are text lines "
                    "'class cx cy w h'")
    assert changes(before, snapshot(root / "data")) == []


def test_a_target_no_image_is_labelled_with_is_an_error(project):
    """Before: [dog, toaster] dropped toaster silently (a COCO category, but no image has it)."""
    write_params(project, ingest={"target": ["dog", "toaster"]})
    line = one_line_error(negset(project, "ingest"))
    assert line == (f"ingest.target: no image in {(project / INSTANCES).resolve()} is labelled 'toaster'; "
                    "the negatives could not be kept free of it")
    assert not (project / "data" / "ingest").exists()
