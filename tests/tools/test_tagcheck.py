"""`negset check-tags` on the sample: hand lighting labels that name no image are a user error, not zeros."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from negset.cli import main
from negset.tag.sources import file_name
from tests.conftest import copy_project, tag_project, write_params


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """The sample through ingest, embed (whole images only) and tag, with a panoptic file for two of its images."""
    root = copy_project(tmp_path_factory.mktemp("tagcheck") / "proj")
    write_params(root, embed={"regions": 0})
    layout, _ = tag_project(root)
    names = sorted(file_name(r["uri"]) for r in pq.read_table(layout.ingest / "images.parquet").to_pylist())
    panoptic = {
        "categories": [{"id": 1, "name": "wall", "isthing": 0, "supercategory": "wall"},
                       {"id": 2, "name": "sky", "isthing": 0, "supercategory": "sky"}],
        "images": [{"id": i, "file_name": n, "width": 640, "height": 480} for i, n in enumerate(names[:2])],
        "annotations": [{"image_id": i, "file_name": f"{i}.png", "segments_info": [
            {"id": 7, "category_id": 1 + i, "area": 1000, "iscrowd": 0}]} for i in range(2)],
    }
    (root / "panoptic.json").write_text(json.dumps(panoptic))
    return root, layout, names


def _check_tags(root, labels, capsys) -> tuple[int, str, str]:
    code = main(["--params", str(root / "params.yaml"), "check-tags", "--panoptic", str(root / "panoptic.json"),
                 "--lighting-labels", str(labels)])
    out, err = capsys.readouterr()
    return code, out, err


def test_labels_matching_no_image_are_a_user_error(tagged, capsys, tmp_path):
    """Labels of other photos: a clear error naming what was read, no table of zeros."""
    root, layout, names = tagged
    (layout.tags / "agreement.json").unlink(missing_ok=True)
    labels = tmp_path / "other.csv"
    labels.write_text("file,lighting,note\n" + "".join(f"other-{i}.jpg,dark,\n" for i in range(4)))
    code, out, err = _check_tags(root, labels, capsys)
    assert code == 2 and "Traceback" not in err and "accuracy" not in out
    message, hint = err.strip().splitlines()
    assert message == (
        f"negset: error: {labels}: none of its 4 lighting labels names an image of this project (labels name "
        f"other-0.jpg, other-1.jpg, other-2.jpg, ...; the {len(names)} images here are {', '.join(names[:3])}, ...)"
    )
    assert hint.strip().startswith("hint: the file column holds image file names as ingested")
    assert not (layout.tags / "agreement.json").exists()


def test_an_empty_labels_file_is_a_user_error(tagged, capsys, tmp_path):
    root, _, _ = tagged
    labels = tmp_path / "empty.csv"
    labels.write_text("file,lighting,note\n")
    code, _, err = _check_tags(root, labels, capsys)
    assert code == 2 and err.startswith(f"negset: error: {labels}: no lighting labels in the file\n")


def test_labels_matching_some_images_say_how_many_do_not(tagged, capsys, tmp_path):
    root, layout, names = tagged
    labels = tmp_path / "labels.csv"
    labels.write_text(f"file,lighting,note\n{names[0]},normal,\n{names[1]},dark,\nnot-here.jpg,dim,\n")
    code, out, err = _check_tags(root, labels, capsys)
    assert code == 0, err
    assert "lighting (computed) vs 2 hand labels" in out
    assert "  1 of the file's 3 labels name no image here (or several): not-here.jpg" in out
    li = json.loads((layout.tags / "agreement.json").read_text())["lighting"]
    assert (li["labels"], li["images"], li["missing"]) == (3, 2, ["not-here.jpg"])
    computed = {file_name(r["uri"]): r["sha256"] for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}
    tagged_rows = {r["sha256"]: r for r in pq.read_table(layout.tags / "tags.parquet").to_pylist()}
    truth = {names[0]: "normal", names[1]: "dark"}
    hits = sum(tagged_rows[computed[n]]["lighting_computed"] == lab for n, lab in truth.items())
    assert li["accuracy"] == hits / 2
