"""Tags: lighting from pixels, occlusion from box geometry, seeded background clusters."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from negset.core.config import Lighting, Occlusion, load_params
from negset.core.layout import Layout
from negset.embed import step as embed
from negset.ingest import step as ingest
from negset.tag import step as tags
from negset.tag.occlusion import occlusion_of
from negset.tag.lighting import LIGHTING_CLASSES, lighting_tag, luminance_stats
from tests.conftest import tag_project, write_params


def gray(value: int) -> Image.Image:
    return Image.new("RGB", (64, 48), (value, value, value))


def class_from_pixels(stats: dict, cfg: Lighting) -> str:
    """The class ``lighting_tag`` gives a frame without EXIF (decided by its pixels)."""
    cls, confidence, basis = lighting_tag(stats, cfg)
    assert basis == "pixels" and 0.0 <= confidence <= 1.0
    return cls


def test_lighting_classes_follow_thresholds():
    cfg = Lighting()
    assert class_from_pixels(luminance_stats(gray(20)), cfg) == "dark"
    assert class_from_pixels(luminance_stats(gray(80)), cfg) == "dim"
    assert class_from_pixels(luminance_stats(gray(128)), cfg) == "normal"
    assert class_from_pixels(luminance_stats(gray(230)), cfg) == "bright"
    checker = np.indices((48, 64)).sum(axis=0) % 2 * 235 + 10
    im = Image.fromarray(checker.astype(np.uint8)).convert("RGB")
    stats = luminance_stats(im)
    assert stats["luma_std"] > 100
    # median of a half-dark, half-bright frame sits between: neither dark nor bright
    assert class_from_pixels(stats, Lighting(dark_below=5, bright_above=250)) == "high-contrast"
    # moving a threshold moves the class
    assert class_from_pixels(luminance_stats(gray(80)), Lighting(dim_below=70)) == "normal"


def test_occlusion_from_boxes():
    cfg = Occlusion()
    assert occlusion_of([], cfg) == ("none", 0.0)
    inside = (0.2, 0.2, 0.4, 0.4)
    far = (0.6, 0.6, 0.8, 0.8)
    assert occlusion_of([inside, far], cfg) == ("none", 0.0)
    cut = (0.0, 0.5, 0.3, 0.9)  # touches the left edge
    assert occlusion_of([inside, far, cut], cfg) == ("partial", 1 / 3)
    behind = (0.25, 0.25, 0.45, 0.45)  # mostly covered by `inside`, and covering it
    label, share = occlusion_of([inside, behind], cfg)
    assert label == "heavy" and share == 1.0
    assert occlusion_of([inside, behind], Occlusion(overlap=0.9))[0] == "none"


def test_occlusion_of_every_image_at_once_equals_one_at_a_time(monkeypatch):
    from negset.tag import occlusion

    rng = np.random.default_rng(3)
    images = []
    for n in [0, 1, 2, 5, 0, 12, 40, 3, 1, 7] * 3:
        xy = rng.random((n, 2)) * 0.9
        wh = rng.random((n, 2)) * 0.5
        images.append([tuple(b) for b in np.concatenate([xy, np.minimum(xy + wh, 1.0)], axis=1).tolist()])
    images.append([(0.2, 0.2, 0.4, 0.4), (0.25, 0.25, 0.45, 0.45)])  # heavy, as above
    seen = set()
    for cfg in (Occlusion(), Occlusion(overlap=0.05, heavy_share=0.3), Occlusion(edge_margin=0.2)):
        want = [occlusion_of(b, cfg) for b in images]
        seen |= {w[0] for w in want}
        assert occlusion.occlusions(images, cfg) == want
        monkeypatch.setattr(occlusion, "PAIRS_PER_CHUNK", 30)  # many chunks, one image larger than a chunk
        assert occlusion.occlusions(images, cfg) == want
        monkeypatch.undo()
    assert seen == {"none", "partial", "heavy"}  # every class is compared
    assert occlusion.occlusions([], Occlusion()) == []
    assert occlusion.occlusions([[], []], Occlusion()) == [("none", 0.0), ("none", 0.0)]


def test_kmeans_is_seeded_and_labels_are_stable():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 16))
    x = np.concatenate([c + 0.05 * rng.normal(size=(20, 16)) for c in centers])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a, _ = tags.kmeans(x, 3, seed=0)
    b, _ = tags.kmeans(x, 3, seed=0)
    assert np.array_equal(a, b)
    # the three true groups are recovered exactly
    assert sorted(len(set(a[i * 20 : (i + 1) * 20])) for i in range(3)) == [1, 1, 1]
    assert len(set(a)) == 3


def test_tag_step_on_the_sample(project):
    layout = Layout.at(project)
    params = load_params(project / "params.yaml")
    ingest.run(params, layout)
    embed.run(params, layout)
    tags.run(params, layout)
    rows = pq.read_table(layout.tags / "tags.parquet").to_pylist()
    assert len(rows) == 33
    assert {r["lighting"] for r in rows} <= set(LIGHTING_CLASSES)
    assert len({r["lighting"] for r in rows}) >= 3  # real photos span several lighting classes
    names = {r["background"] for r in rows}
    assert len(names) == tags.auto_clusters(33) == 4
    assert all(n.startswith("bg") and ": " in n for n in names)
    # every sample image is labelled: occlusion comes from the annotations
    assert all(r["occlusion"] in ("none", "partial", "heavy") and r["occlusion_source"] == "annotation" for r in rows)
    no_boxes = [r for r in rows if r["occluded_share"] == 0]
    assert no_boxes and all(r["occlusion"] == "none" for r in no_boxes)


def test_tags_table_from_columns_matches_rows_and_refuses_a_short_column():
    """The tag step's column lists make the table its rows made (types of all-null columns included)."""
    import pyarrow as pa
    import pytest

    rows = [dict(sha256="b", lighting="dark", exif_hour=None, background_scene=None, x=1.5),
            dict(sha256="a", lighting="normal", exif_hour=None, background_scene=None, x=None)]
    columns = {name: [r[name] for r in rows] for name in rows[0]}
    table = tags._columns_table(columns)
    assert table.equals(pa.Table.from_pylist(rows, schema=tags._schema(rows)))
    assert table.schema.field("exif_hour").type == pa.int32()  # null for every image, still its stable type
    assert table.column("x").to_pylist() == [1.5, None]
    assert tags._columns_table({}).num_columns == 0
    columns["x"].pop()
    with pytest.raises(ValueError, match="unequal length"):
        tags._columns_table(columns)


def test_tags_of_old_images_stay_when_new_images_arrive(project):
    from PIL import ImageOps

    layout = Layout.at(project)
    params = load_params(project / "params.yaml")

    def tag_all():
        for step in (ingest, embed, tags):
            step.run(params, layout)
        return {r["sha256"]: r for r in pq.read_table(layout.tags / "tags.parquet").to_pylist()}

    before = tag_all()
    # one new photo in the source (3% of the pool): a mirrored copy of a sample photo, with camera EXIF
    from tests.tag.test_tag_sources import write_exif_jpeg

    src = project / "examples" / "coco-sample" / "images" / "000000000089.jpg"
    write_exif_jpeg(src.with_name("new-mirrored.jpg"), image=ImageOps.mirror(Image.open(src).convert("RGB")))
    after = tag_all()
    assert len(after) == len(before) + 1
    for sha, row in before.items():
        # every column: tags, their sources and confidences, cluster margins, pixel and EXIF fields
        assert after[sha] == row, (sha, {k: (row[k], after[sha][k]) for k in row if after[sha][k] != row[k]})
    clusters = json.loads((layout.tags / "clusters.json").read_text())
    assert clusters["refit"] is False
    # the new image joined an existing, already named cluster
    new = next(r for s, r in after.items() if s not in before)
    assert new["background"] in {r["background"] for r in before.values()}
    # its EXIF (EV 2.9 at ISO 1600, 23:10, flash) was read: a dark scene whatever the pixels say
    assert new["exif_hour"] == 23 and new["time_of_day"] == "night" and new["exif_flash"] is True and new["exif_ev"] < 3
    assert (new["lighting"], new["lighting_basis"], new["lighting_source"]) == ("dark", "exif", "computed")
    assert new["occlusion"] == "unknown"  # not in the COCO file: unlabelled


def test_clusters_refit_when_many_images_are_new(project):
    layout, _ = tag_project(project)
    assert json.loads((layout.tags / "clusters.json").read_text())["refit"] is True
    write_params(project, tag={"background": {"clusters": 0, "seed": 0, "refit_share": 0.2}})
    tags.run(load_params(project / "params.yaml"), layout)
    assert json.loads((layout.tags / "clusters.json").read_text())["refit"] is False
    write_params(project, tag={"background": {"clusters": 3, "seed": 0, "refit_share": 0.2}})
    tags.run(load_params(project / "params.yaml"), layout)  # a changed parameter forces a new fit
    info = json.loads((layout.tags / "clusters.json").read_text())
    assert info["refit"] is True and info["k"] == 3


def test_pixel_statistics_are_cached(project):
    layout = Layout.at(project)
    calls = []

    def compute(sha):
        calls.append(sha)
        return luminance_stats(Image.new("RGB", (8, 8), (len(calls) % 255,) * 3))

    shas = [f"{i:064x}" for i in range(5)]
    first = tags.cached_pixel_stats(layout, shas, compute)
    assert len(calls) == 5
    again = tags.cached_pixel_stats(layout, shas + [f"{9:064x}"], compute)
    assert len(calls) == 5 + 1 + 1  # one probe for the field set, one new image
    assert again[1:5] == first[1:5]
