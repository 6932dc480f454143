"""ONNX detectors: the builtin YOLOX-Nano on the sample photos, the Ultralytics layout on a model built here."""

from __future__ import annotations


import duckdb
import numpy as np
import pytest
from PIL import Image

from negset.core import parquet as pq
from negset.core.config import Calibration, DetectSource
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.detect import store
from negset.detect.boxes import nms_per_class, tile_windows
from negset.detect.onnx_model import MODELS, OnnxDetector, model_path
from tests.detect.conftest import images, run_detect, set_detect
from tests.support.onnxdet import constant_detector, ultralytics_output


def test_builtin_yolox_nano_is_shipped_in_the_package():
    path = model_path("builtin:yolox_nano", root=MODELS)  # root is ignored for builtin models
    assert path.parent == MODELS and path.is_file()
    assert (MODELS / "LICENSE-Apache-2.0.txt").is_file()
    assert "Apache" in (MODELS / "NOTICE").read_text() and "YOLOX" in (MODELS / "NOTICE").read_text()
    det = OnnxDetector(DetectSource(model="builtin:yolox_nano"), MODELS)
    assert (det.layout, det.size, det.where, det.bgr, len(det.names)) == ("yolox", 416, "topleft", True, 80)
    assert det.names[:3] == ["person", "bicycle", "car"] and "motorcycle" in det.names  # COCO spelling


def test_builtin_yolox_finds_the_persons_in_the_person_photos(ingested):
    set_detect(ingested, sources=[{"model": "builtin:yolox_nano"}])  # whole image only: quick
    summary = run_detect(ingested)
    layout = Layout.at(ingested)
    ev = {r["sha256"]: r for r in store.evidence(layout).to_pylist()}
    pos = [e for e in ev.values() if e["role"] == "positive"]
    cand = [e for e in ev.values() if e["role"] == "candidate"]
    assert len(pos) == 16 and len(cand) == 17
    sure = [e for e in pos if e["target_score"] >= 0.5]
    assert len(sure) >= 12, sorted(e["target_score"] for e in pos)
    assert all(e["target_class"] == "person" and e["target_source"] == "yolox_nano" for e in sure)
    # the candidates hold no person (labelled): the detector fires far less on them
    assert np.median([e["target_score"] for e in cand]) < 0.1 < np.median([e["target_score"] for e in pos])
    # a box lies inside its image
    sizes = {im["sha256"]: (im["width"], im["height"]) for im in images(ingested)}
    for e in sure:
        x0, y0, x1, y1 = e["target_box"]
        w, h = sizes[e["sha256"]]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    # the DuckDB catalog has the detections; calibration is recorded and in the summary
    with duckdb.connect(str(layout.catalog), read_only=True) as con:
        n, classes = con.execute("SELECT count(*), count(DISTINCT class) FROM detections WHERE source = 'yolox_nano'").fetchone()
    assert n == summary["detections"] > 0 and classes > 3
    cal = store.calibration(layout)["sources"]["yolox_nano"]
    assert cal["method"] in ("calibrated", "floor") and cal["positives"] == 16
    assert summary["sources"]["yolox_nano"]["threshold"] == cal["threshold"]
    assert cal["speed"]["ran"] == 33 and cal["speed"]["images_per_s"] > 0


def test_tiles_find_more_small_objects_and_keep_whole_image_boxes(ingested):
    """Tiles add detections (small objects); a box cut by an inner tile edge never survives."""
    photo = Image.open(ingested / "examples/coco-sample/images/000000000086.jpg").convert("RGB")
    whole = OnnxDetector(DetectSource(model="builtin:yolox_nano"), ingested).detect(photo)
    tiled = OnnxDetector(DetectSource(model="builtin:yolox_nano", tiles=2, tile_overlap=0.3), ingested).detect(photo)
    assert set(tiled["tile"].tolist()) - {0}, "some detections come from tiles"
    assert (tiled["score"] >= 0.05).sum() > (whole["score"] >= 0.05).sum()
    assert set(whole["tile"].tolist()) == {0}


def test_fit_canvas_runs_the_letterboxed_photo_on_a_rectangle_and_finds_the_same_objects(ingested):
    """canvas: fit (rectangular inference): a 640 x 480 photo runs at 416 x 320 (sides multiples of 32), the sure
    detections are the square canvas's own (same classes, boxes within a few pixels), and the cache key differs."""
    photo = Image.open(ingested / "examples/coco-sample/images/000000000086.jpg").convert("RGB")
    square = OnnxDetector(DetectSource(model="builtin:yolox_nano"), ingested)
    fit = OnnxDetector(DetectSource(model="builtin:yolox_nano", canvas="fit"), ingested)
    assert (square.stride, fit.stride) == (0, 32) and square.key() != fit.key()
    w, h = photo.size
    x, r, _, _ = fit._input(photo, fit.size)
    want = (-(-round(h * r) // 32) * 32, -(-round(w * r) // 32) * 32)
    assert x.shape[2:] == want and max(want) == 416 and min(want) < 416
    assert square._input(photo, square.size)[0].shape[2:] == (416, 416)
    a, b = square.detect(photo), fit.detect(photo)
    sure_a, sure_b = a["score"] >= 0.5, b["score"] >= 0.5
    assert sure_a.sum() >= 1 and sorted(a["cls"][sure_a].tolist()) == sorted(b["cls"][sure_b].tolist())
    for box, cls in zip(a["box"][sure_a], a["cls"][sure_a]):
        nearest = np.abs(b["box"][sure_b & (b["cls"] == cls)] - box).max(axis=1).min()
        assert nearest < 0.05 * max(w, h)


def test_a_model_that_takes_only_its_square_input_stays_square(tmp_path, caplog):
    out = ultralytics_output([(32, 32, 20, 10, 1, 0.9)], n_classes=2)
    path = constant_detector(tmp_path / "fixed.onnx", out, size=64, names=NAMES, fixed_shape=True)
    with caplog.at_level("WARNING", logger="negset.detect"):
        det = OnnxDetector(DetectSource(model=str(path), canvas="fit"), tmp_path)
    assert det.stride == 0 and "takes no rectangular input" in caplog.text and str(path) in caplog.text
    found = det.detect(Image.new("RGB", (128, 64), (90, 90, 90)))  # runs, on the square canvas
    np.testing.assert_allclose(found["box"][0], [44, 22, 84, 42], atol=1e-4)


def test_tile_windows_and_per_class_nms():
    wins = tile_windows(1000, 500, 2, 0.3)
    assert wins[0] == (0, 0, 1000, 500) and len(wins) == 5
    tw = wins[1][2] - wins[1][0]
    assert tw == round(1000 / 1.7) and wins[2][2] == 1000 and wins[2][0] < tw  # last tile ends at the edge, overlaps
    assert (wins[2][2] - wins[2][0]) == tw and tw - wins[2][0] == pytest.approx(0.3 * tw, abs=1)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 0])
    assert nms_per_class(boxes, scores, classes, 0.45, 10).tolist() == [0, 2, 3]  # other class kept
    assert nms_per_class(boxes, scores, classes, 0.45, 2).tolist() == [0, 2]


NAMES = "{0: 'dog', 1: 'cat'}"  # what Ultralytics writes into the ONNX metadata


def test_ultralytics_layout_from_the_output_shape(tmp_path):
    # input 64 x 64; a 128 x 64 image is letterboxed at r = 0.5 into rows 16..48
    out = ultralytics_output([(32, 32, 20, 10, 1, 0.9),   # cat
                              (33, 32, 20, 10, 1, 0.8),   # the same cat again: suppressed
                              (32, 32, 20, 10, 0, 0.7),   # a dog on the same spot: kept (other class)
                              (10, 10, 4, 4, 0, 0.01)],   # under min_score
                             n_classes=2)
    path = constant_detector(tmp_path / "yolo11n.onnx", out, size=64, names=NAMES)
    det = OnnxDetector(DetectSource(model=str(path)), tmp_path)
    assert (det.layout, det.names, det.where, det.bgr, det.scale) == ("ultralytics", ["dog", "cat"], "center", False, 1 / 255)
    found = det.detect(Image.new("RGB", (128, 64), (90, 90, 90)))
    assert [det.names[c] for c in found["cls"]] == ["cat", "dog"]
    np.testing.assert_allclose(found["score"], [0.9, 0.7], atol=1e-6)
    np.testing.assert_allclose(found["box"][0], [44, 22, 84, 42], atol=1e-4)  # (22-0)/0.5, (27-16)/0.5, ...
    # class names from a file win over the metadata; the original size scales the boxes
    (tmp_path / "names.txt").write_text("hound\nkitten\n")
    det = OnnxDetector(DetectSource(model=str(path), classes="names.txt"), tmp_path)
    found = det.detect(Image.new("RGB", (128, 64)), original=(256, 128))
    assert det.names == ["hound", "kitten"]
    np.testing.assert_allclose(found["box"][0], [88, 44, 168, 84], atol=1e-3)


def test_ultralytics_model_through_the_step(ingested):
    (ingested / "models").mkdir()
    out = ultralytics_output([(32, 32, 30, 40, 0, 0.6)], n_classes=2)
    constant_detector(ingested / "models" / "persons.onnx", out, size=64, names="{0: 'person', 1: 'bicycle'}")
    set_detect(ingested, sources=[{"model": "models/persons.onnx", "name": "mine"}])
    summary = run_detect(ingested)
    det = pq.read_table(Layout.at(ingested).detect / "detections.parquet").to_pylist()
    assert len(det) == 33 and {d["source"] for d in det} == {"mine"} and {d["class"] for d in det} == {"person"}
    # every positive scores 0.6, so the calibrated threshold is 0.6 clipped to the ceiling (default 0.1)
    cal = store.calibration(Layout.at(ingested))["sources"]["mine"]
    assert cal["raw_threshold"] == pytest.approx(0.6) and cal["threshold"] == Calibration().ceiling == 0.1 and cal["method"] == "ceiling"
    assert summary["candidates_with_target"] == 17


@pytest.mark.parametrize("shape", [(1, 7, 3), (1, 6), (2, 84, 100)])
def test_an_output_of_no_known_layout_is_refused_naming_the_file(tmp_path, shape):
    path = constant_detector(tmp_path / "odd.onnx", np.zeros(shape, np.float32), size=32)
    with pytest.raises(NegsetError) as err:
        OnnxDetector(DetectSource(model=str(path)), tmp_path)
    assert str(path) in err.value.message and "layout" in err.value.message
    assert "\n" not in err.value.message


def test_class_names_that_do_not_fit_the_output_or_are_missing(tmp_path):
    out = ultralytics_output([(32, 32, 20, 10, 1, 0.9)], n_classes=2)
    path = constant_detector(tmp_path / "m.onnx", out, size=64)  # no names metadata
    with pytest.raises(NegsetError, match="no class names"):
        OnnxDetector(DetectSource(model=str(path)), tmp_path)
    with pytest.raises(NegsetError) as err:
        OnnxDetector(DetectSource(model=str(path), classes="missing.txt"), tmp_path)
    assert str(tmp_path / "missing.txt") in err.value.message and "not found" in err.value.message
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(NegsetError, match="3 class names"):
        OnnxDetector(DetectSource(model=str(path), classes="three.txt"), tmp_path)
    with pytest.raises(NegsetError, match="m.onnx.*does not fit layout 'yolox'"):
        OnnxDetector(DetectSource(model=str(path), layout="yolox", classes="three.txt"), tmp_path)
