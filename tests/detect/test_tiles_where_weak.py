"""``tiles_when: weak``: tiles only where the whole image has a weak target signal, only the tiles holding it."""

from __future__ import annotations

import numpy as np
import pytest

from negset.core.config import DetectSource
from negset.core.imageio import load_rgb
from negset.detect.boxes import tile_windows
from negset.detect.names import normalise
from negset.detect.onnx_model import MODELS, OnnxDetector, deepest_tiles
from tests.conftest import COCO128

needs_coco128 = pytest.mark.skipif(not (COCO128 / "images").is_dir(), reason=f"no COCO128 at {COCO128} (../shared)")


def detector(when: str, target: str = "car", **kw) -> OnnxDetector:
    det = OnnxDetector(DetectSource(model="builtin:yolox_nano", tiles=2, tile_overlap=0.4, tiles_when=when, **kw), MODELS)
    det.plan_tiles({target}, 0.1, normalise)
    return det


def target_score(det: OnnxDetector, found: dict, target: str = "car") -> float:
    hits = found["score"][found["cls"] == det.names.index(target)]
    return float(hits.max()) if len(hits) else 0.0


def test_deepest_tiles_picks_the_tile_a_point_lies_deepest_in():
    wins = tile_windows(1000, 1000, 2, 0.4)  # tiles of 625 px at 0 and 375
    assert deepest_tiles(wins, np.array([[100.0, 100.0]])) == [1]  # top left: only the top-left tile
    assert deepest_tiles(wins, np.array([[900.0, 900.0]])) == [4]
    assert deepest_tiles(wins, np.array([[100.0, 900.0], [900.0, 100.0]])) == [2, 3]
    assert len(deepest_tiles(wins, np.array([[500.0, 500.0]]))) == 1  # the centre is in all four: one is enough
    assert deepest_tiles(wins, np.zeros((0, 2))) == []


def test_the_cache_key_holds_the_tile_plan():
    keys = {when: detector(when).key() for when in ("always", "unsure", "weak")}
    assert len(set(keys.values())) == 3
    assert detector("weak", tile_probe=0.02).key() != keys["weak"]
    assert detector("weak", target="dog").key() != keys["weak"]  # the signal's classes are the target's


@needs_coco128
def test_a_small_car_seen_weakly_on_the_whole_image_is_found_by_one_tile():
    """COCO 540: a car the whole image scores about 0.012 (under min_score); a tile holding it finds it."""
    picture = load_rgb(COCO128 / "images" / "000000000540.jpg", reduce_to=detector("always").decode_side())
    whole = OnnxDetector(DetectSource(model="builtin:yolox_nano"), MODELS)
    assert target_score(whole, whole.detect(picture)) == 0.0
    always, weak = detector("always"), detector("weak")
    found_always, found_weak = always.detect(picture), weak.detect(picture)
    assert target_score(weak, found_weak) >= 0.05 and target_score(weak, found_weak) == target_score(always, found_always)
    assert 1 <= weak.tile_passes < always.tile_passes == 4
    assert set(found_weak["tile"].tolist()) - {0}


@needs_coco128
def test_no_signal_no_tiles_and_a_sure_target_no_tiles():
    # COCO 247 holds a car the whole image is sure of (about 0.75); COCO 009 (food) has no car signal at the probe
    for stem, target in (("000000000247", "car"), ("000000000009", "car")):
        det = detector("weak", target)
        found = det.detect(load_rgb(COCO128 / "images" / f"{stem}.jpg", reduce_to=det.decode_side()))
        assert det.tile_passes == 0 and set(found["tile"].tolist()) <= {0}, stem
    # a model without the target class gets no tiles under weak (they cannot change the target decision)
    det = detector("weak", target="sample bag")
    det.detect(load_rgb(COCO128 / "images" / "000000000540.jpg", reduce_to=det.decode_side()))
    assert det.tile_passes == 0
