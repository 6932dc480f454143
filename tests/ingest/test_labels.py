"""Positives from COCO JSON, YOLO folders and lists agree on the sample."""

from __future__ import annotations

import pytest

from negset.core.config import Positives
from negset.core.errors import NegsetError
from negset.ingest.labels import load_positives
from tests.conftest import REPO, SAMPLE

COCO = Positives(format="coco", path="examples/coco-sample/annotations/instances.json", images="examples/coco-sample/images")
YOLO = Positives(format="yolo", path="examples/coco-sample/labels", images="examples/coco-sample/images", classes="examples/coco-sample/classes.txt")


def test_coco_and_yolo_agree():
    coco = load_positives(COCO, ["person"], REPO)
    yolo = load_positives(YOLO, ["person"], REPO)
    assert coco.paths == yolo.paths
    assert len(coco.paths) == 16  # person is in 16 of the 33 sample photos
    for path in coco.paths:
        a = sorted((b.cls, b.x0, b.y0, b.x1, b.y1) for b in coco.labels.boxes[path] if not b.crowd)
        b = sorted((b.cls, b.x0, b.y0, b.x1, b.y1) for b in yolo.labels.boxes[path])
        assert [x[0] for x in a] == [x[0] for x in b]
        for x, y in zip(a, b):
            assert x[1:] == pytest.approx(y[1:], abs=2e-3)  # YOLO files round to 6 digits
    # every labelled image is known, also those without the target (and 508, with no boxes)
    assert len(coco.labels.boxes) == len(yolo.labels.boxes) == 33
    assert coco.labels.boxes[(SAMPLE / "images" / "000000000508.jpg").resolve()] == []


def test_several_targets():
    paths = load_positives(COCO, ["dog", "cat"], REPO).paths
    assert {p.name for p in paths} == {"000000000309.jpg", "000000000599.jpg"}


def test_list_and_csv(tmp_path):
    imgs = sorted((SAMPLE / "images").glob("*.jpg"))[:3]
    (tmp_path / "pos.txt").write_text("# positives\n" + "\n".join(str(p) for p in imgs) + "\n")
    (tmp_path / "pos.csv").write_text("id,path\n" + "".join(f"{i},{p}\n" for i, p in enumerate(imgs)))
    for name in ("pos.txt", "pos.csv"):
        spec = load_positives(Positives(format="list", path=name), ["x"], tmp_path)
        assert spec.paths == {p.resolve() for p in imgs}
        assert spec.labels is None


def test_unknown_target_suggests_class():
    with pytest.raises(NegsetError) as info:
        load_positives(COCO, ["persn"], REPO)
    assert "ingest.target: 'persn' is not a class" in str(info.value)
    assert "did you mean 'person'?" in str(info.value)


def test_missing_annotation_file(tmp_path):
    spec = Positives(format="coco", path="missing.json", images=str(SAMPLE / "images"))
    with pytest.raises(NegsetError, match="missing.json: COCO annotation file not found"):
        load_positives(spec, ["person"], tmp_path)


@pytest.mark.parametrize("header", ["path", "File", "FILENAME", "image", "uri"])
def test_a_positives_csv_is_read_by_its_column(tmp_path, header):
    from negset.ingest.labels import load_list_entries

    names = sorted(p.name for p in (SAMPLE / "images").iterdir())[:3]
    rows = [f"label,{header},note"] + [f"person,{SAMPLE / 'images' / n},x" for n in names]
    (tmp_path / "pos.csv").write_text("\n".join(rows) + "\n")
    paths, uris = load_list_entries(tmp_path / "pos.csv")
    assert paths == {(SAMPLE / "images" / n).resolve() for n in names} and not uris


def test_a_positives_csv_header_naming_no_image_column_lists_the_accepted_ones(tmp_path):
    from negset.ingest.labels import LIST_COLUMNS, load_list_entries

    (tmp_path / "pos.csv").write_text("picture,label\na.jpg,person\n")
    with pytest.raises(NegsetError) as info:
        load_list_entries(tmp_path / "pos.csv")
    msg = str(info.value)
    assert "pos.csv: line 1" in msg and "picture" in msg and all(c in msg for c in LIST_COLUMNS)


def test_a_positives_csv_without_header_reads_its_first_column(tmp_path):
    from negset.ingest.labels import load_list_entries

    first = sorted((SAMPLE / "images").iterdir())[0]
    (tmp_path / "pos.csv").write_text(f"{first},person\n")
    paths, _ = load_list_entries(tmp_path / "pos.csv")
    assert paths == {first.resolve()}
