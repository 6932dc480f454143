"""Bad detect sources: one line naming the file (and a hint), exit 2, no traceback, nothing under data/ lost."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from negset.cli import main
from tests.detect.conftest import images, set_detect
from tests.support.onnxdet import constant_detector, ultralytics_output


def snapshot(root: Path) -> dict[str, str]:
    data = root / "data"
    return {p.relative_to(data).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file() and p.name != ".negset.lock"}


def negset(root: Path, capsys, *args: str) -> tuple[int, str]:
    code = main(["--no-prefect", "-q", "--params", str(root / "params.yaml"), *args])
    return code, capsys.readouterr().err


@pytest.fixture
def detected(ingested, capsys) -> Path:
    """The sample after a good detect run (its outputs must survive every mistake)."""
    pos = [im for im in images(ingested) if im["role"] == "positive"]
    (ingested / "good.json").write_text(json.dumps([dict(file_name=im["uri"].rsplit("/", 1)[-1], category="person",
                                                         bbox=[1, 1, 5, 5], score=0.9) for im in pos]))
    set_detect(ingested, sources=[{"predictions": "good.json"}])
    assert negset(ingested, capsys, "detect") == (0, "")
    assert (ingested / "data/detect/evidence.parquet").is_file()
    return ingested


def fails(root: Path, capsys, *needles: str) -> str:
    before = snapshot(root)
    code, err = negset(root, capsys, "detect")
    assert code == 2, err
    assert "Traceback" not in err
    first, *rest = err.strip().splitlines()
    assert first.startswith("negset: error: ") and all(line.startswith("  hint: ") for line in rest) and len(rest) <= 1
    for needle in needles:
        assert needle in first, (needle, first)
    assert snapshot(root) == before, "a mistake must leave data/ as it was"
    return first


def test_a_model_of_the_wrong_layout(detected, capsys):
    constant_detector(detected / "seg.onnx", np.zeros((1, 32, 160, 160), np.float32), size=64)
    set_detect(detected, sources=[{"model": "seg.onnx"}])
    fails(detected, capsys, str(detected / "seg.onnx"), "no detector layout")


def test_a_missing_classes_file(detected, capsys):
    constant_detector(detected / "m.onnx", ultralytics_output([(9, 9, 4, 4, 0, 0.9)], 2), size=64)
    set_detect(detected, sources=[{"model": "m.onnx", "classes": "names.txt"}])
    fails(detected, capsys, str(detected / "names.txt"), "not found")
    (detected / "preds").mkdir()
    set_detect(detected, sources=[{"predictions": "preds"}])
    fails(detected, capsys, str(detected / "preds"), "class names")


def test_predictions_naming_an_unknown_image(detected, capsys):
    (detected / "p.json").write_text(json.dumps([dict(file_name="not-in-the-pool.jpg", category="person", bbox=[0, 0, 1, 1], score=0.5)]))
    set_detect(detected, sources=[{"predictions": "p.json"}])
    fails(detected, capsys, str(detected / "p.json"), "not-in-the-pool.jpg", "not in the pool")
    (detected / "p.json").write_text(json.dumps([dict(image_id=123456, category_id=1, bbox=[0, 0, 1, 1], score=0.5)]))
    fails(detected, capsys, str(detected / "p.json"), "image_id 123456")
    (detected / "txt").mkdir()
    (detected / "txt" / "elsewhere.txt").write_text("0 0.5 0.5 0.1 0.1 0.9\n")
    (detected / "names.txt").write_text("person\n")
    set_detect(detected, sources=[{"predictions": "txt", "classes": "names.txt"}])
    fails(detected, capsys, str(detected / "txt" / "elsewhere.txt"), "no image named elsewhere")


def test_predictions_naming_an_unknown_category(detected, capsys):
    im = images(detected)[0]
    stem = im["uri"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    (detected / "p.json").write_text(json.dumps([dict(file_name=f"{stem}.jpg", category_id=999, bbox=[0, 0, 1, 1], score=0.5)]))
    set_detect(detected, sources=[{"predictions": "p.json"}])
    fails(detected, capsys, str(detected / "p.json"), "category_id 999")
    (detected / "txt").mkdir()
    (detected / "txt" / f"{stem}.txt").write_text("0 0.5 0.5 0.1 0.1 0.9\n7 0.5 0.5 0.1 0.1 0.9\n")
    (detected / "names.txt").write_text("person\ncar\n")
    set_detect(detected, sources=[{"predictions": "txt", "classes": "names.txt"}])
    fails(detected, capsys, f"{stem}.txt:2", "class 7")


def test_params_mistakes_in_the_detect_section(detected, capsys):
    set_detect(detected, sources=[{"model": "builtin:yolox_nano", "tilez": 2}])
    fails(detected, capsys, "detect.sources.0.tilez", "did you mean 'tiles'")
    set_detect(detected, sources=[{"model": "builtin:yolox_nano"}], calibraton={"recall": 0.9})
    fails(detected, capsys, "detect.calibraton", "did you mean 'calibration'")
    set_detect(detected, sources=[{"model": "builtin:yolox_pico"}])
    fails(detected, capsys, "builtin:yolox_pico", "unknown builtin")
    set_detect(detected, sources=[{"model": "builtin:yolox_nano", "predictions": "good.json"}])
    fails(detected, capsys, "detect.sources.0", "exactly one of")
