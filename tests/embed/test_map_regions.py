"""Region vectors pooled from the whole-image pass's last feature map (``embed.regions_from: map``)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from negset.core.config import Embed, load_params
from negset.core.layout import Layout
from negset.embed import regions
from negset.embed import step as embed
from negset.embed.model import embed_files, load_embedder, model_hash
from negset.embed.store import read_embeddings, read_regions
from negset.ingest import step as ingest
from tests.conftest import SAMPLE, copy_project, write_params


@pytest.fixture(scope="module")
def photos():
    return sorted((SAMPLE / "images").glob("*.jpg"))[:6]


def test_whole_image_vector_is_the_pool_of_the_map_on_torch_and_onnx(photos, tmp_path):
    emb = load_embedder(Embed())
    batch = np.stack([emb.load(p) for p in photos])
    feats, probs, fmap = emb.run(batch, with_map=True)
    plain, plain_probs = emb(batch)  # the path of before: the model's own pooled features
    assert fmap.shape == (len(photos), 1280, 7, 7)
    pooled = regions._unit(fmap.mean(axis=(2, 3)))
    np.testing.assert_allclose(pooled, plain, atol=1e-5)
    np.testing.assert_allclose(feats, plain, atol=1e-6)
    np.testing.assert_allclose(probs, plain_probs, atol=1e-6)

    emb.use_onnx(tmp_path, threads=1)
    assert emb.has_map and (tmp_path / f"{model_hash(emb)}-map.onnx").is_file()
    o_feats, o_probs, o_map = emb.run(batch, with_map=True)
    np.testing.assert_allclose(o_feats, plain, atol=1e-4)  # ONNX Runtime within float tolerance of torch
    np.testing.assert_allclose(regions._unit(o_map.mean(axis=(2, 3))), o_feats, atol=1e-5)
    # embed_files with and without the map gives the same vectors
    a = list(embed_files(emb, photos, 4, 1))
    b = list(embed_files(emb, photos, 4, 1, with_map=True))
    np.testing.assert_array_equal(np.concatenate([x[1] for x in a]), np.concatenate([x[1] for x in b]))
    assert b[0][4].shape[1:] == (1280, 7, 7)


def test_map_grid_windows_follow_the_crop_grid():
    fmap = np.random.default_rng(0).random((8, 7, 7)).astype(np.float32)
    cells, vecs = regions.map_grid(fmap, 3)
    assert cells == [(c, r, c + 3, r + 3) for r in (0, 2, 4) for c in (0, 2, 4)]
    np.testing.assert_allclose(vecs[4], regions._unit(fmap[:, 2:5, 2:5].mean(axis=(1, 2))), rtol=1e-6)
    assert regions.map_grid(fmap, 1)[0] == [(0, 0, 7, 7)]
    # an object box over the right half of a square image pools the right cells only
    win = regions.crop_window(700, 700, 224, 0.875)
    roi = regions.map_roi(fmap, (350, 0, 700, 700), 700, 700, win)
    np.testing.assert_allclose(roi, regions._unit(fmap[:, :, 3:].mean(axis=(1, 2))), rtol=1e-6)


def test_region_cache_key_differs_by_method():
    assert regions._key("abc", 3, "map") != regions._key("abc", 3, "crops")
    assert regions._key("abc", 3) == regions._key("abc", 3, "crops")  # the caches of before keep their key
    assert regions.method_for(Embed(regions=3)) == "crops"  # the default: it keeps the quality gate
    assert regions.method_for(Embed(regions=3, regions_from="map")) == "map+objects"  # grid pooled, objects cropped
    assert regions.method_for(Embed(regions=3, regions_from="map", objects_from="map")) == "map"
    assert regions._key("abc", 3, "map") != regions._key("abc", 3, "map+objects")
    assert regions.method_for(Embed(regions=3, regions_from="crops")) == "crops"
    assert regions.method_for(Embed(regions=3, regions_from="map", model="timm:resnet18")) == "crops"  # no map for other models


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The sample as a project with regions (map), ingested and embedded."""
    root = copy_project(tmp_path_factory.mktemp("maps") / "proj")
    write_params(root, embed={"regions": 3, "threads": 2, "regions_from": "map", "objects_from": "map"})
    layout, params = Layout.at(root), load_params(root / "params.yaml")
    ingest.run(params, layout)
    embed.run(params, layout)
    return root, layout, params


def test_every_image_has_its_grid_with_boxes_and_positives_their_objects(sample):
    root, layout, params = sample
    images = {r["sha256"]: r for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}
    shas, vectors = read_embeddings(layout)
    t = pq.read_table(layout.embed / "regions.parquet").to_pylist()
    grid = [r for r in t if r["kind"] == "grid"]
    counts: dict[str, int] = {}
    for r in grid:
        counts[r["sha256"]] = counts.get(r["sha256"], 0) + 1
    assert set(counts) == set(shas) and set(counts.values()) == {9}
    for r in t:  # pixel boxes inside the upright image
        x0, y0, x1, y1 = r["box"]
        im = images[r["sha256"]]
        assert 0 <= x0 < x1 <= im["width"] and 0 <= y0 < y1 <= im["height"], r
    objects = [r for r in t if r["kind"] == "object"]
    assert objects and all(images[r["sha256"]]["role"] == "positive" for r in objects)
    # the region vectors are unit vectors, and the grid's mean direction is near the whole-image vector
    got = read_regions(layout)
    vec = np.asarray(got[2], np.float32)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1, atol=2e-3)
    row = {s: i for i, s in enumerate(shas)}
    first = [i for i, r in enumerate(t) if r["sha256"] == shas[0] and r["kind"] == "grid"]
    assert float(regions._unit(vec[first].mean(axis=0)) @ vectors[row[shas[0]]]) > 0.9


def test_regions_of_cached_images_are_pooled_alike_and_crops_use_their_own_cache(sample, tmp_path):
    root, layout, params = sample
    before = np.asarray(read_regions(layout)[2], np.float32)
    # regions only (the whole-image vectors cached): the map comes from a pass of the region step
    shutil.rmtree(layout.data / "cache" / "regions")
    embed.run(params, layout)
    np.testing.assert_allclose(np.asarray(read_regions(layout)[2], np.float32), before, atol=2e-3)
    write_params(root, embed={"regions": 3, "threads": 2, "regions_from": "crops"})
    crops = load_params(root / "params.yaml")
    embed.run(crops, layout)
    assert len(list((layout.data / "cache" / "regions").iterdir())) == 2  # no map vector read as a crop vector
    after = np.asarray(read_regions(layout)[2], np.float32)
    assert after.shape == before.shape and not np.allclose(after, before, atol=1e-2)
