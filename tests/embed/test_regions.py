"""Region embeddings: crops of every image and the positives' target objects, and object-level hardness."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from negset import cli
from negset.core import catalog
from negset.core.errors import NegsetError
from negset.embed import regions
from negset.embed import step as embed
from negset.embed.store import read_regions
from negset.select import step as select
from negset.select.evidence import region_hardness
from negset.select.pool import Pool, load_pool
from negset.tools.confusers import default_confusers
from tests.conftest import COCO128, tag_project

needs_coco128 = pytest.mark.skipif(not COCO128.is_dir(), reason="COCO128 not present")


def test_grid_boxes_cover_the_image_with_overlapping_crops():
    boxes = regions.grid_boxes(640, 480, 3)
    assert len(boxes) == 9
    b = np.asarray(boxes)
    assert b[:, 0].min() == 0 and b[:, 1].min() == 0 and b[:, 2].max() == 640 and b[:, 3].max() == 480
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert (w == round(640 * 1.25 / 3)).all() and (h == round(480 * 1.25 / 3)).all()
    assert b[1, 0] < b[0, 2]  # neighbours overlap
    assert regions.grid_boxes(640, 480, 1) == [(0, 0, 640, 480)]
    assert regions.grid_boxes(640, 480, 0) == []


def test_grid_crops_of_a_reduced_decode_record_their_boxes_in_the_upright_image(tmp_path):
    """A large JPEG is decoded reduced for its grid crops (draft mode); the boxes in regions.parquet are read
    against the ingest's upright size (review, report), so they are recorded in its pixels."""
    from types import SimpleNamespace

    from PIL import Image

    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(path, quality=80)
    emb = SimpleNamespace(image_size=224, crop_pct=0.875, preprocess=lambda im: im.size)
    item = regions.Item("k", "s", "grid", [], size=(2000, 1500))
    boxes, decoded = regions._crops(emb, path, item, 3)
    assert max(w for w, _ in decoded) < 2000 * 0.4  # crops of a reduced decode (each about a third of its side)
    assert boxes == regions.grid_boxes(2000, 1500, 3) or (
        max(b[2] for b in boxes) == 2000 and max(b[3] for b in boxes) == 1500 and min(b[0] for b in boxes) == 0)
    reduced = regions.grid_boxes(1000, 750, 3)
    assert regions.upright_boxes(reduced, (1000, 750), (2000, 1500)) == [tuple(2 * v for v in b) for b in reduced]
    assert regions.upright_boxes(reduced, (1000, 750), (0, 0)) == reduced  # size unknown: as decoded


def test_object_box_is_square_inside_the_image_and_skips_tiny_objects():
    # a box at the right edge: the square crop is shifted inside the frame
    x0, y0, x1, y1 = regions.object_box((0.8, 0.4, 1.0, 0.6), 640, 480)
    assert x1 - x0 == y1 - y0 and 0 <= x0 and x1 <= 640 and 0 <= y0 and y1 <= 480
    assert x1 - x0 == round(0.2 * 640 * (1 + 2 * regions.OBJECT_MARGIN))
    # a box as large as the image: the crop is the image's shorter side
    x0, y0, x1, y1 = regions.object_box((0.0, 0.0, 1.0, 1.0), 640, 480)
    assert (x1 - x0, y1 - y0) == (480, 480)
    assert regions.object_box((0.5, 0.5, 0.52, 0.52), 640, 480) is None  # 13 x 10 pixels


@pytest.fixture(scope="module")
def dogs(tmp_path_factory):
    """COCO128 as a project, target dog, with region embeddings (3 x 3 grid)."""
    root = tmp_path_factory.mktemp("regions")
    layout, params = tag_project(
        root,
        f"""ingest:
  target: dog
  positives: {{format: yolo, path: {COCO128 / 'labels'}, images: {COCO128 / 'images'}, classes: {COCO128 / 'classes.txt'}}}
embed:
  regions: 3
select:
  count: 20
""",
    )
    return root, layout, params


@needs_coco128
def test_regions_parquet_holds_the_grid_of_every_image_and_the_positives_dogs(dogs):
    root, layout, params = dogs
    t = pq.read_table(layout.embed / "regions.parquet").to_pylist()
    images = {r["sha256"]: r for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}
    embedded = set(pq.read_table(layout.embed / "embeddings.parquet").column("sha256").to_pylist())
    grid = [r for r in t if r["kind"] == "grid"]
    objects = [r for r in t if r["kind"] == "object"]
    counts: dict[str, int] = {}
    for r in grid:
        counts[r["sha256"]] = counts.get(r["sha256"], 0) + 1
    assert set(counts) == embedded and set(counts.values()) == {9}
    assert objects and all(images[r["sha256"]]["role"] == "positive" for r in objects)
    assert all("dog" in images[r["sha256"]]["classes"] for r in objects)
    assert [r["row"] for r in t] == list(range(len(t)))
    shas, kinds, vec = read_regions(layout)
    assert shas == [r["sha256"] for r in t] and kinds.tolist() == [r["kind"] for r in t]
    assert vec.dtype == np.float16 and vec.shape[0] == len(t)
    v = np.asarray(vec[:50], np.float32)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=2e-3)  # float16 unit rows
    # the model info records what was embedded
    info = json.loads((layout.embed / "model.json").read_text())["regions"]
    assert info == dict(grid=3, regions=len(grid), objects=len(objects))
    # a second run embeds nothing: no new cache part, the same output bytes
    cache = layout.data / "cache" / "regions"
    parts = sorted(cache.rglob("part-*.npz"))
    assert parts
    before = [(layout.embed / n).read_bytes() for n in ("regions.parquet", "regions.npy")]
    embed.run(params, layout)
    assert sorted(cache.rglob("part-*.npz")) == parts
    assert [(layout.embed / n).read_bytes() for n in ("regions.parquet", "regions.npy")] == before


@needs_coco128
def test_region_hardness_ranks_the_dogs_confusers_higher_than_whole_image_similarity(dogs):
    root, layout, params = dogs
    with catalog.connect(layout) as con:
        pool = load_pool(con, layout, list(params.select.strata))
        rows = con.sql("SELECT sha256, classes FROM images ORDER BY sha256").fetchall()
    assert [r[0] for r in rows] == pool.sha256.tolist()
    dog_confusers = set(default_confusers("dog"))
    confuser = np.array([bool(set(c or ()) & dog_confusers) and "dog" not in (c or ()) for _, c in rows])
    cand = np.flatnonzero(~pool.positive & ~pool.has_target)
    share = {}
    for how in ("image", "regions"):
        choice = select.choose(pool, params.select.model_copy(update={"hardness": how}), 20)
        assert choice.evidence.hardness_by == how
        h = choice.evidence.hardness[cand]
        percentile = (h[:, None] > h[None, :]).mean(axis=1)
        share[how] = float(percentile[confuser[cand]].mean())
    print(f"\nmean hardness percentile of the {int(confuser[cand].sum())} confuser images (cat, horse, ...): "
          f"whole image {share['image']:.2f}, regions {share['regions']:.2f}")
    assert share["regions"] > share["image"] + 0.1
    # without region vectors, hardness: regions is a clear error
    bare = pool.subset(np.arange(len(pool.sha256)))
    bare.object_vectors = bare.object_owner = None
    with pytest.raises(NegsetError, match="select.hardness"):
        select.choose(bare, params.select.model_copy(update={"hardness": "regions"}), 20)
    assert select.choose(bare, params.select, 20).evidence.hardness_by == "image"  # auto falls back


@needs_coco128
def test_selection_records_object_hardness_and_evaluate_reports_a_paired_difference(dogs, capsys):
    root, layout, params = dogs
    summary = select.run(params, layout)
    assert summary["hardness"] == "regions"
    rows = pq.read_table(layout.select / "selection.parquet").to_pylist()
    assert len(rows) == 20 and all("object similarity" in r["reason"] for r in rows)
    assert all(-1 <= r["hardness"] <= 1 for r in rows)
    assert cli.main(["--params", str(root / "params.yaml"), "evaluate", "--target", "car", "--seeds", "4"]) == 0
    out = capsys.readouterr().out
    assert "hardness: regions" in out and ("sees the benefit" in out or "CANNOT see the benefit" in out)
    result = json.loads((layout.data / "evaluate" / "car.json").read_text())
    for proxy, summary in result["proxy"].items():
        diffs = [s[f"{proxy}:chosen_fpr"] - s[f"{proxy}:random_fpr"] for s in result["per_seed"]]
        p = summary["sets"]["chosen"]["paired"]
        assert p["mean"] == pytest.approx(np.mean(diffs))
        assert p["ci95"][0] <= p["mean"] <= p["ci95"][1]
        assert p["better"] + p["same"] + p["worse"] == 4 == sum(d < 0 for d in diffs) + p["same"] + sum(d > 0 for d in diffs)
    assert result["mean"]["chosen_leaks"] == 0


@needs_coco128
def test_evaluate_marks_leaks_by_the_evaluated_target_not_by_ingests(dogs, monkeypatch):
    from negset.tools import evaluate as ev

    root, layout, params = dogs
    seen = []
    real_choose = ev.choose

    def spy(pool, cfg, want, **kwargs):
        seen.append(pool)
        return real_choose(pool, cfg, want, **kwargs)

    monkeypatch.setattr(ev, "choose", spy)
    ev.evaluate(params, layout, "car", seeds=2)
    rows = pq.read_table(layout.ingest / "images.parquet", columns=["sha256", "classes"]).to_pylist()
    classes = {r["sha256"]: set(r["classes"] or ()) for r in rows}
    assert len(seen) == 2
    for pool in seen:
        expect = np.array(["car" in classes[s] for s in pool.sha256])
        assert np.array_equal(pool.has_target, expect)  # the dogs (ingest's target) are ordinary candidates here
        assert any("dog" in classes[s] for s in pool.sha256[~pool.has_target])


def test_region_hardness_skips_rows_without_an_owner_and_follows_a_subset():
    """Region rows owned by no pool image (-1: objects, images left out) never count, also after subset."""
    rng = np.random.default_rng(3)

    def unit(n):
        v = rng.normal(size=(n, 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    n = 5
    obj = unit(1)
    pool = Pool(
        sha256=np.asarray([f"s{i}" for i in range(n)]), vectors=-np.repeat(obj, n, axis=0),  # images far from the object
        positive=np.zeros(n, bool), has_target=np.zeros(n, bool), stratum=np.zeros(n, np.int64), stratum_names=["all"],
    )
    crops = unit(7)
    crops[6] = obj[0]  # a perfect match, but owned by no pool row
    crops[2] = 0.8 * obj[0] + 0.6 * unit(1)[0]
    crops[2] /= np.linalg.norm(crops[2])
    pool.region_vectors = crops.astype(np.float16)
    pool.region_owner = np.asarray([0, 0, 3, 1, 4, 2, -1])
    rows = np.arange(n)
    h = region_hardness(pool, rows, obj)
    expect = (crops @ obj[0]).astype(np.float32)
    assert h.max() < 0.99  # the unowned perfect match is not anybody's
    assert h[3] == pytest.approx(expect[2], abs=2e-3) and h[3] == h.max()
    sub = pool.subset(np.asarray([3, 1]))
    assert sub.region_owner.tolist() == [0, 1]  # the crops of rows 3 and 1 only, renumbered (3 -> 0, 1 -> 1)
    assert region_hardness(sub, np.arange(2), obj) == pytest.approx(h[[3, 1]], abs=1e-6)
