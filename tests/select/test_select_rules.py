"""The selection rules on real photos: leaks, quarantine, quality, bands, diversity, evaluate."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

from negset import cli
from negset.core.config import Select, load_params
from negset.core.layout import Layout
from negset.embed import step as embed
from negset.ingest import step as ingest
from negset.core.similarity import near_duplicate_groups
from negset.select import step as select
from negset.select.picks import kcenter_greedy
from negset.select.quotas import allocate
from negset.tag import quality
from negset.tag import step as tags
from tests.conftest import COCO128, SAMPLE, copy_project, tag_project, write_params

# ---------------------------------------------------------------- units


def test_kcenter_greedy_picks_the_farthest_and_is_deterministic():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:4]
    x = np.concatenate([c + 0.01 * rng.standard_normal((10, 8)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows, dist = kcenter_greedy(x, 4)
    assert rows[0] == 0  # no earlier picks: the first row (callers order rows by a seeded key)
    assert sorted(r // 10 for r in rows) == [0, 1, 2, 3]  # one per group: diverse, not random
    assert np.array_equal(rows, kcenter_greedy(x, 4)[0])
    # with earlier picks in groups 0 and 1, the next two come from groups 2 and 3
    rows2, _ = kcenter_greedy(x, 2, centers=x[[0, 10]])
    assert sorted(r // 10 for r in rows2) == [2, 3]
    # everything left is within 0.5 of the picks: stop instead of picking near-duplicates
    rows3, _ = kcenter_greedy(x, 10, stop_below=0.5)
    assert len(rows3) == 4


def test_large_cells_pick_on_the_seeded_projection_in_torch_as_numpy_would():
    """A cell over KCENTER_TORCH_ABOVE values is gathered and projected in torch: the same picks as the numpy
    projection (the same float32 products), the same on a second call, and other picks for another seed."""
    from types import SimpleNamespace

    from negset.select import picks as pk

    rng = np.random.default_rng(3)
    n, d = 3000, 1024  # 3.1M values: over KCENTER_TORCH_ABOVE
    centres = rng.standard_normal((40, d))
    V = (centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32)
    V = (V / np.linalg.norm(V, axis=1, keepdims=True)).astype(np.float16)
    rows = rng.permutation(np.arange(0, n, 1))[:2500]  # a seeded order, not file order
    assert len(rows) * d > pk.KCENTER_TORCH_ABOVE
    ev = SimpleNamespace(cfg=SimpleNamespace(diversity="kcenter", seed=7), pool=SimpleNamespace(vectors=V),
                         projected_rows=lambda rows: None)  # no projection from a similarity pass (small pool)
    chosen = [int(r) for r in rng.choice(np.setdiff1d(np.arange(n), rows), 5, replace=False)]
    got, dist = pk.pick_cell(ev, rows, 30, chosen, 0.0)
    R = pk.projection(7, d)
    assert R.shape == (d, pk.KCENTER_DIMS) and R.dtype == np.float32
    X = pk._unit_rows(np.asarray(V[rows], np.float32) @ R)
    centers = pk._unit_rows(np.asarray(V[np.sort(chosen)], np.float32) @ R)
    want, want_dist = pk.kcenter_greedy(X, 30, centers, 0.0)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(dist, want_dist, atol=1e-5)
    assert len(set(got.tolist())) == 30
    np.testing.assert_array_equal(pk.pick_cell(ev, rows, 30, chosen, 0.0)[0], got)
    other = SimpleNamespace(cfg=SimpleNamespace(diversity="kcenter", seed=8), pool=ev.pool, projected_rows=ev.projected_rows)
    assert not np.array_equal(pk.pick_cell(other, rows, 30, chosen, 0.0)[0], got)
    # a large pool's similarity pass made the projections already (Evidence.projected_rows): they are used, not
    # made again, and give the same picks; a wrong projection there would give other picks
    made = np.asarray(V, np.float32) @ R
    seen = []
    ev.projected_rows = lambda r: seen.append(len(r)) or made[r]
    np.testing.assert_array_equal(pk.pick_cell(ev, rows, 30, chosen, 0.0)[0], got)
    assert seen == [len(rows)]
    ev.projected_rows = lambda r: made[::-1][r]
    assert not np.array_equal(pk.pick_cell(ev, rows, 30, chosen, 0.0)[0], got)


def test_near_duplicate_groups_keep_the_first_of_each_group():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((3, 32))
    v = np.concatenate([base, base[:1] + 0.01 * rng.standard_normal((2, 32))])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    keep_of = near_duplicate_groups(v, np.arange(5), threshold=0.05)
    assert keep_of.tolist() == [-1, -1, -1, 0, 0]
    # preference order decides who is kept
    keep_of = near_duplicate_groups(v, np.array([3, 0, 1, 2, 4]), threshold=0.05)
    assert keep_of.tolist() == [-1, 0, -1, -1, 0]


def test_allocate_minimum_per_stratum():
    q = allocate(10, {"a": 97, "b": 2, "c": 1}, {"a": 99, "b": 99, "c": 99}, minimum=2)
    assert q["b"] >= 2 and q["c"] >= 2 and sum(q.values()) == 10
    q = allocate(10, {"a": 97, "b": 2, "c": 1}, {"a": 99, "b": 99, "c": 1}, minimum=2)
    assert q["c"] == 1 and sum(q.values()) == 10


def test_quality_scores_flag_simple_images():
    photo = Image.open(sorted((SAMPLE / "images").glob("*.jpg"))[0]).convert("RGB")
    cfg = Select(count=1).quality
    s = quality.pixel_scores(photo)
    assert all(s[f"q_{c}"] >= getattr(cfg, c) for c in quality.PIXEL_CHECKS)  # a normal photo passes
    black = quality.pixel_scores(Image.new("RGB", (64, 64), (3, 3, 3)))
    assert black["q_dark"] < cfg.dark and black["q_near_uniform"] < cfg.near_uniform
    assert black["q_low_information"] < cfg.low_information
    white = quality.pixel_scores(Image.new("RGB", (64, 64), (254, 254, 254)))
    assert white["q_light"] < cfg.light
    blurred = quality.pixel_scores(photo.filter(ImageFilter.GaussianBlur(4)))
    assert blurred["q_blurry"] < cfg.blurry < s["q_blurry"]
    g = quality.geometry_scores(np.array([640, 900, 40]), np.array([480, 200, 30]))
    assert g["q_odd_aspect_ratio"][0] > cfg.odd_aspect_ratio > g["q_odd_aspect_ratio"][1]
    assert g["q_tiny"][2] < cfg.tiny < g["q_tiny"][0]
    # the difference hash survives a quarter-size JPEG copy, and tells different photos apart
    small = Image.open(io.BytesIO(_jpeg(photo.resize((photo.size[0] // 4, photo.size[1] // 4)), 50)))
    other = Image.open(sorted((SAMPLE / "images").glob("*.jpg"))[1]).convert("RGB")
    h = np.array([quality.dhash(photo), quality.dhash(small), quality.dhash(other)], np.int64)
    bits = quality.hamming(h[:1], h)[0]
    assert bits[0] == 0
    assert bits[1] <= Select(count=1).leaks.hash_bits < bits[2]


# ---------------------------------------------------------------- the sample with planted copies


def _jpeg(im: Image.Image, quality_: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality_)
    return buf.getvalue()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The sample plus resized / recompressed copies of 4 positives and 3 overly simple images."""
    root = copy_project(tmp_path_factory.mktemp("planted") / "proj")
    folder = root / "examples" / "coco-sample" / "images"
    coco = json.loads((root / "examples/coco-sample/annotations/instances.json").read_text())
    person = {c["id"] for c in coco["categories"] if c["name"] == "person"}
    pos_ids = sorted({a["image_id"] for a in coco["annotations"] if a["category_id"] in person})
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    copies = []
    for i, image_id in enumerate(pos_ids[:4]):
        im = Image.open(folder / names[image_id]).convert("RGB")
        w, h = im.size
        small = im.resize((int(w * 0.6), int(h * 0.6)), Image.BICUBIC)
        data = _jpeg(small, 70) if i % 2 == 0 else _jpeg(im, 40)
        name = f"copy_{i}_{names[image_id]}"
        (folder / name).write_bytes(data)
        copies.append(name)
    # a strong copy: a quarter of the size, JPEG 50 (the embedding moves ~0.3; the difference hash does not)
    im = Image.open(folder / names[pos_ids[4]]).convert("RGB")
    (folder / "strong_copy.jpg").write_bytes(_jpeg(im.resize((im.size[0] // 4, im.size[1] // 4)), 50))
    Image.new("RGB", (320, 240), (4, 4, 4)).save(folder / "simple_dark.png")
    Image.new("RGB", (320, 240), (128, 128, 128)).save(folder / "simple_gray.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / "simple_tiny.png")
    write_params(root, select={"count": 40})
    layout = Layout.at(root)
    params = load_params(root / "params.yaml")
    for step in (ingest, embed, tags):
        step.run(params, layout)
    return root, layout, copies


def _read(layout, name):
    return pq.read_table(layout.select / name).to_pylist()


def test_copies_of_positives_and_simple_images_are_never_chosen(planted):
    root, layout, copies = planted
    summary = select.run(load_params(root / "params.yaml"), layout)
    chosen = _read(layout, "selection.parquet")
    rejected = {r["uri"].rsplit("/", 1)[-1]: r for r in _read(layout, "rejected.parquet")}
    images = {r["sha256"]: r for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}
    names = {r["uri"].rsplit("/", 1)[-1] for r in chosen}
    assert not names & set(copies)
    for c in copies:  # each copy is caught as a leak, with its distance as the score
        assert rejected[c]["rule"] == "near_duplicate", rejected[c]
        assert rejected[c]["score"] < 0.2 and "positive" in rejected[c]["reason"]
    assert "strong_copy.jpg" not in names
    assert rejected["strong_copy.jpg"]["rule"] == "near_duplicate", rejected["strong_copy.jpg"]
    assert rejected["simple_dark.png"]["rule"] == "quality:dark"
    assert rejected["simple_gray.png"]["rule"].startswith("quality:")
    assert rejected["simple_tiny.png"]["rule"] == "quality:tiny"
    # zero leaks: nothing chosen is labelled with the target, a positive, or a copy of one
    assert not any(images[r["sha256"]]["has_target"] or images[r["sha256"]]["role"] == "positive" for r in chosen)
    assert all(r["reason"] and r["rule"] in ("quota", "fill") for r in chosen)
    assert all(r["reason"] and r["rule"] and r["score"] is not None for r in rejected.values())
    assert summary["chosen"] == summary["eligible"] == len(chosen)  # count 40 > pool: every eligible image


def test_strata_meet_quotas_bands_follow_the_mix_and_seed_repeats(planted):
    root, layout, _ = planted
    write_params(root, select={"count": 8, "context": {"irrelevant_below_percentile": 0}})
    params = load_params(root / "params.yaml")
    summary = select.run(params, layout)
    rows = _read(layout, "selection.parquet")
    strata = _read(layout, "strata.parquet")
    assert len(rows) == 8
    for s in strata:
        quota_rows = [r for r in rows if r["rule"] == "quota" and r["stratum"] == s["stratum"]]
        assert len(quota_rows) == s["quota"] <= s["available"]
        assert s["chosen"] == sum(r["stratum"] == s["stratum"] for r in rows)
    assert sum(s["quota"] for s in strata) + summary["filled_outside_strata"] == 8
    # bands: hard edge above medium edge; each row's band matches its hardness
    hard, medium = summary["band_edges"]["hard"], summary["band_edges"]["medium"]
    for r in rows:
        if r["rule"] == "quota":
            expect = "hard" if r["hardness"] >= hard - 1e-4 else "medium" if r["hardness"] >= medium - 1e-4 else "context"
            assert r["band"] == expect and r["band"] in r["reason"]
    first = [r["sha256"] for r in rows]
    select.run(params, layout)
    assert [r["sha256"] for r in _read(layout, "selection.parquet")] == first
    assert (layout.select / "quarantine.csv").is_file()


def test_hard_only_mix_and_diversity_modes(planted):
    root, layout, _ = planted
    write_params(root, select={"count": 4, "strata": ["lighting"], "bands": {"mix": {"hard": 1.0, "medium": 0.0, "context": 0.0}}})
    summary = select.run(load_params(root / "params.yaml"), layout)
    rows = _read(layout, "selection.parquet")
    quota_rows = [r for r in rows if r["rule"] == "quota"]
    # hard-only: every pick is hard unless its stratum had no hard candidate left
    strata = {s["stratum"]: s for s in _read(layout, "strata.parquet")}
    for r in quota_rows:
        assert r["band"] == "hard" or strata[r["stratum"]]["available_hard"] < strata[r["stratum"]]["quota"]
    assert summary["chosen"] == 4
    write_params(root, select={"diversity": "random"})
    select.run(load_params(root / "params.yaml"), layout)
    assert all("seeded random" in r["reason"] for r in _read(layout, "selection.parquet") if r["rule"] == "quota")


# ---------------------------------------------------------------- COCO128: quarantine and evaluate

needs_coco128 = pytest.mark.skipif(not COCO128.is_dir(), reason="COCO128 not present")


@pytest.fixture(scope="module")
def coco128(tmp_path_factory):
    """COCO128 as a project, target dog, with the labels of 5 dog images removed."""
    root = tmp_path_factory.mktemp("coco128")
    labels = root / "labels"
    shutil.copytree(COCO128 / "labels", labels)
    names = (COCO128 / "classes.txt").read_text().splitlines()
    dog = names.index("dog")
    dogs = sorted(p for p in labels.glob("*.txt") if any(l.split() and int(l.split()[0]) == dog for l in p.read_text().splitlines()))
    hidden = dogs[::2]  # every other dog image loses its labels: an unlabelled target image
    for p in hidden:
        p.unlink()
    layout, params = tag_project(
        root,
        f"""ingest:
  target: dog
  positives: {{format: yolo, path: labels, images: {COCO128 / 'images'}, classes: {COCO128 / 'classes.txt'}}}
select:
  count: 20
""",
    )
    return root, layout, {p.stem for p in hidden}


@needs_coco128
def test_quarantine_catches_dog_images_whose_labels_were_removed(coco128, capsys):
    root, layout, hidden = coco128
    summary = select.run(load_params(root / "params.yaml"), layout)
    quarantined = (layout.select / "quarantine.csv").read_text().splitlines()[1:]
    stems = {line.split(",")[0].strip('"').rsplit("/", 1)[-1].rsplit(".", 1)[0] for line in quarantined}
    caught = hidden & stems
    recall = len(caught) / len(hidden)
    with capsys.disabled():
        print(f"\nquarantine recall on {len(hidden)} dog images with labels removed: {recall:.2f} "
              f"({len(stems)} quarantined, threshold {summary['quarantine_threshold']})")
    assert recall >= 0.5
    chosen = {r["uri"].rsplit("/", 1)[-1].rsplit(".", 1)[0] for r in _read(layout, "selection.parquet")}
    assert not chosen & stems  # quarantined images never go into the set
    images = {r["sha256"]: r for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}
    assert not any("dog" in images[r["sha256"]]["classes"] for r in _read(layout, "selection.parquet"))


@needs_coco128
def test_evaluate_prints_both_rates_and_the_set_metrics(coco128, capsys):
    root, layout, _ = coco128
    code = cli.main(["--params", str(root / "params.yaml"), "evaluate", "--target", "car", "--seeds", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "false-positive rate on the held-out confusers at 95% recall" in out
    result = json.loads((layout.data / "evaluate" / "car.json").read_text())
    m = result["mean"]
    for proxy, summary in result["proxy"].items():
        for name in ("chosen", "random", "oracle", "reference"):
            assert 0 <= summary["sets"][name]["fpr"] <= 1, (proxy, name)
            assert f"{proxy:<10}{name:<11}{summary['sets'][name]['fpr']:>7.3f}" in out
    assert m["chosen_leaks"] == 0 and m["chosen_duplicate_rate"] == 0
    # the chosen set follows the positives' strata; random draws do not
    assert m["chosen_strata_tv"] < m["random_strata_tv"]
    assert len(result["per_seed"]) == 3 and all(s["negatives"] == 20 for s in result["per_seed"])
    assert cli.main(["--params", str(root / "params.yaml"), "evaluate", "--target", "unicorn"]) == 2
