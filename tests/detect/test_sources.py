"""Predictions files as evidence (COCO results JSON, YOLO txt), several sources at once, calibration, resuming."""

from __future__ import annotations

import json

import pytest

from negset.core import parquet as pq
from negset.core.config import Calibration
from negset.core.layout import Layout
from negset.detect import store
from negset.detect.calibrate import threshold_from_positives
from tests.detect.conftest import images, run_detect, set_detect


def by_role(root):
    ims = sorted(images(root), key=lambda im: im["uri"])
    return [im for im in ims if im["role"] == "positive"], [im for im in ims if im["role"] == "candidate"]


def name(im) -> str:
    return im["uri"].rsplit("/", 1)[-1]


def test_threshold_from_known_scores():
    cfg = Calibration(recall=0.75, floor=0.1, ceiling=0.9)
    # 8 positives: 75% = 6 of them are found at the 6th highest score
    scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.0]
    cal = threshold_from_positives(scores, cfg)
    assert cal["threshold"] == 0.5 and cal["method"] == "calibrated" and cal["positives_found"] == 6
    assert cal["recall_at_threshold"] == 0.75
    assert threshold_from_positives(scores, Calibration(recall=1.0, floor=0.1, ceiling=0.9))["threshold"] == 0.1  # floor
    high = threshold_from_positives([0.99, 0.98], cfg)
    assert high["threshold"] == 0.9 and high["method"] == "ceiling" and high["raw_threshold"] == 0.98
    assert threshold_from_positives(scores, Calibration(threshold=0.42))["threshold"] == 0.42
    none = threshold_from_positives([], cfg)
    assert none["threshold"] == 0.9 and none["positives"] == 0 and none["recall_at_threshold"] is None


def test_coco_results_json_by_file_name_and_by_id(ingested):
    positives, candidates = by_role(ingested)
    ids = {im["file_name"]: im["id"] for im in json.loads(
        (ingested / "examples/coco-sample/annotations/instances.json").read_text())["images"]}
    # the user's model: the target at known scores on the positives, a weak target and a cat on candidates
    preds = [dict(file_name=name(im), category="person", bbox=[10, 20, 30, 40], score=0.5 + 0.03 * i)
             for i, im in enumerate(positives)]
    preds += [dict(image_id=ids[name(candidates[0])], category_id=1, bbox=[1, 2, 3, 4], score=0.2),   # 1 = person
              dict(image_id=ids[name(candidates[1])], category_id=17, bbox=[5, 5, 50, 50], score=0.9),  # 17 = cat
              dict(file_name=name(candidates[2]), category_name="person", bbox=[0, 0, 9, 9], score=0.95)]
    (ingested / "preds.json").write_text(json.dumps(preds))
    set_detect(ingested, sources=[{"predictions": "preds.json", "name": "user"}], confusers=["cat"],
               calibration={"recall": 0.9, "floor": 0.05, "ceiling": 0.99})
    summary = run_detect(ingested)
    layout = Layout.at(ingested)
    rows = pq.read_table(layout.detect / "detections.parquet").to_pylist()
    assert len(rows) == 19 and {r["source"] for r in rows} == {"user"}
    first = next(r for r in rows if r["sha256"] == positives[0]["sha256"])
    assert (first["x0"], first["y0"], first["x1"], first["y1"], first["class"]) == (10, 20, 40, 60, "person")
    # 16 positives at 0.50, 0.53, ... 0.95; recall 0.9 -> the 15th highest = 0.53
    cal = store.calibration(layout)["sources"]["user"]
    assert cal["threshold"] == pytest.approx(0.53) and cal["positives_found"] == 15 and cal["positives"] == 16
    ev = {r["sha256"]: r for r in store.evidence(layout).to_pylist()}
    weak, cat, strong = (ev[c["sha256"]] for c in candidates[:3])
    assert weak["target_score"] == pytest.approx(0.2) and not weak["detected_target"]
    assert weak["target_threshold"] == pytest.approx(0.53) and weak["target_box"] == [1, 2, 4, 6]
    assert cat["confuser_class"] == "cat" and cat["confuser_score"] == pytest.approx(0.9) and cat["target_score"] == 0
    assert strong["detected_target"] and strong["target_source"] == "user"
    assert summary["candidates_with_target"] == 1


def test_yolo_txt_folder_and_two_sources_at_once(ingested):
    positives, candidates = by_role(ingested)
    folder = ingested / "preds"
    folder.mkdir()
    (ingested / "classes.txt").write_text("bag\nperson\n")
    for im in positives[:4]:
        (folder / f"{name(im).rsplit('.', 1)[0]}.txt").write_text("1 0.5 0.5 0.2 0.4 0.8\n0 0.25 0.25 0.1 0.1 0.3\n")
    (folder / f"{name(candidates[0]).rsplit('.', 1)[0]}.txt").write_text("1 0.5 0.5 1.0 1.0 0.9\n")
    (ingested / "other.json").write_text(json.dumps([dict(file_name=name(candidates[0]), category="person",
                                                          bbox=[0, 0, 5, 5], score=0.4)]))
    set_detect(ingested, sources=[{"predictions": "preds", "classes": "classes.txt"},
                                  {"predictions": "other.json", "name": "second"}], calibration={"ceiling": 0.85})
    run_detect(ingested)
    layout = Layout.at(ingested)
    rows = pq.read_table(layout.detect / "detections.parquet").to_pylist()
    assert {r["source"] for r in rows} == {"preds", "second"} and len(rows) == 10
    im = positives[0]
    person = next(r for r in rows if r["sha256"] == im["sha256"] and r["class"] == "person")
    w, h = im["width"], im["height"]
    assert person["x0"] == pytest.approx(0.4 * w, abs=0.01) and person["y1"] == pytest.approx(0.7 * h, abs=0.01)
    assert person["score"] == pytest.approx(0.8)
    cal = store.calibration(layout)["sources"]
    # only the positives the txt files cover calibrate it; 'second' covers no positive: the ceiling
    assert cal["preds"]["positives"] == 4 and cal["preds"]["threshold"] == pytest.approx(0.8)
    assert cal["second"]["positives"] == 0 and cal["second"]["threshold"] == 0.85 and cal["second"]["method"].startswith("uncalibrated")
    ev = {r["sha256"]: r for r in store.evidence(layout).to_pylist()}[candidates[0]["sha256"]]
    assert ev["target_source"] == "preds" and ev["target_score"] == pytest.approx(0.9) and ev["detected_target"]


def test_target_map_makes_a_custom_class_the_target(ingested):
    positives, _ = by_role(ingested)
    preds = [dict(file_name=name(im), category="sample bag", bbox=[0, 0, 5, 5], score=0.7) for im in positives]
    (ingested / "preds.json").write_text(json.dumps(preds))
    set_detect(ingested, sources=[{"predictions": "preds.json"}], target_map={"Sample  Bag": "person"})
    run_detect(ingested)
    cal = store.calibration(Layout.at(ingested))
    assert "sample bag" in cal["target_classes"] and cal["sources"]["preds"]["threshold"] == Calibration().ceiling
    assert cal["sources"]["preds"]["positives_found"] == 16


def test_a_detector_run_is_cached_and_resumes_after_a_kill(ingested, monkeypatch):
    from negset.detect import onnx_model

    set_detect(ingested, sources=[{"model": "builtin:yolox_nano"}], checkpoint_every=5)
    real = onnx_model.OnnxDetector.detect
    calls = []

    def dies_after_12(self, image, original=None):
        if len(calls) == 12:
            raise KeyboardInterrupt  # killed mid-run
        calls.append(1)
        return real(self, image, original)

    monkeypatch.setattr(onnx_model.OnnxDetector, "detect", dies_after_12)
    with pytest.raises(KeyboardInterrupt):
        run_detect(ingested)
    parts = list((ingested / "data/cache/detect").rglob("part-*.parquet"))
    assert len(parts) == 2  # two checkpoints of 5 images were written before the kill

    calls.clear()
    monkeypatch.setattr(onnx_model.OnnxDetector, "detect", lambda self, image, original=None: (calls.append(1), real(self, image, original))[1])
    first = run_detect(ingested)
    assert first["detected_now"] == len(calls) == 33 - 10  # only what was not cached yet
    calls.clear()
    again = run_detect(ingested)
    assert again["detected_now"] == 0 and calls == []  # a cache hit: the model never runs
    assert again["detections"] == first["detections"]
    # another setting is another cache key
    set_detect(ingested, sources=[{"model": "builtin:yolox_nano", "min_score": 0.3}])
    assert run_detect(ingested)["detected_now"] == 33
