"""Occlusion of unlabelled images from the detect step's boxes (tag source ``detector``)."""

from __future__ import annotations

from PIL import Image

from negset.core import parquet as pq
from negset.core.config import load_params
from negset.core.layout import Layout
from negset.detect import store
from negset.detect import step as detect
from negset.embed import step as embed
from negset.ingest import step as ingest
from negset.tag import step as tags
from negset.tag.occlusion import occlusion_of
from tests.conftest import write_params


def test_unlabelled_images_get_occlusion_from_detections(project):
    pool = project / "pool"
    pool.mkdir()
    photos = sorted((project / "examples/coco-sample/images").glob("*.jpg"))[:5]
    for p in photos:  # new bytes, in no label file: unlabelled candidates
        Image.open(p).convert("RGB").save(pool / f"raw-{p.name}", quality=80)
    write_params(project, ingest={"sources": [{"type": "local", "path": "examples/coco-sample/images"},
                                              {"type": "local", "path": "pool"}]},
                 embed={"regions": 0}, detect={"sources": [{"model": "builtin:yolox_nano"}]})
    params, layout = load_params(project / "params.yaml"), Layout.at(project)
    for step in (ingest, embed, detect, tags):
        step.run(params, layout)
    images = {r["sha256"]: r for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}
    rows = pq.read_table(layout.tags / "tags.parquet").to_pylist()
    unlabelled = [r for r in rows if not images[r["sha256"]]["labelled"]]
    assert len(unlabelled) == 5
    boxes = store.object_boxes(layout, params.tag.occlusion.detected_score)
    # the reader's one NumPy pass gives what a loop over the detections gives
    sizes = {r["sha256"]: (r["width"], r["height"]) for r in images.values()}
    want: dict = {}
    for d in store.read_detections(layout).to_pylist():
        found, scores, top = want.get(d["sha256"], ([], [], 0.0))
        if d["score"] >= params.tag.occlusion.detected_score:
            w, h = sizes[d["sha256"]]
            found.append(tuple(min(max(v, 0.0), 1.0) for v in (d["x0"] / w, d["y0"] / h, d["x1"] / w, d["y1"] / h)))
            scores.append(d["score"])
        want[d["sha256"]] = (found, scores, max(top, d["score"]))
    assert want and {s: boxes[s] for s in want} == want
    assert all(boxes[s] == ([], [], 0.0) for s in set(boxes) - set(want))
    for r in unlabelled:
        assert r["occlusion_source"] == "detector" and r["occlusion"] != "unknown"
        found, scores, top = boxes[r["sha256"]]
        assert r["detected_objects"] == len(found)
        assert (r["occlusion"], r["occluded_share"]) == occlusion_of(found, params.tag.occlusion)
    assert any(r["detected_objects"] for r in unlabelled)
    assert all(r["occlusion_source"] == "annotation" for r in rows if images[r["sha256"]]["labelled"])
    # the scene from the same detections: a street photo is outdoor, a cluster may be named by its scene
    from negset.tag.scene import SCENES

    with_scene = [r for r in rows if r["scene"]]
    assert with_scene and all(r["indoor_outdoor"] in ("indoor", "outdoor") for r in with_scene)
    assert all(SCENES[r["scene"]][0] == r["indoor_outdoor"] for r in with_scene if r["indoor_outdoor_confidence"] == 1.0)
    named = {r["background_computed"] for r in rows if r["background_computed"].split(": ", 1)[1] in SCENES}
    assert named, "some cluster is named by the scene of its members"

    # without the detector's evidence (detected_score: null) they are unknown again, as before
    write_params(project, tag={"occlusion": {"detected_score": None}})
    tags.run(load_params(project / "params.yaml"), layout)
    rows = pq.read_table(layout.tags / "tags.parquet").to_pylist()
    assert {r["occlusion"] for r in rows if not images[r["sha256"]]["labelled"]} == {"unknown"}
