"""Tag sources and confidences: user tags, COCO panoptic labels, EXIF, a detector; and `negset check-tags`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from negset.cli import main
from negset.core import catalog
from negset.core.config import Lighting, Occlusion, load_params
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.tag import sources as tagsources
from negset.tag import step as tags
from negset.tag.lighting import color_temperature, exif_fields, lighting_tag, luminance_stats, pixel_lighting
from negset.tools import tagcheck
from tests.conftest import COCO128, REPO, copy_project, tag_project, write_params

SOURCES = {"computed", "annotation", "user"}
PANOPTIC = COCO128 / "annotations" / "panoptic_train2017.json"
needs_coco128 = pytest.mark.skipif(not PANOPTIC.is_file(), reason="COCO128 not present")


def tag_rows(layout: Layout) -> dict[str, dict]:
    return {r["sha256"]: r for r in pq.read_table(layout.tags / "tags.parquet").to_pylist()}


def by_file(layout: Layout) -> dict[str, str]:
    return {tagsources.file_name(r["uri"]): r["sha256"] for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The sample project through ingest, embed and tag (shared: tests change params.yaml and re-tag only)."""
    root = copy_project(tmp_path_factory.mktemp("sample") / "proj")
    layout, _ = tag_project(root)
    original = (root / "params.yaml").read_text()
    yield root, layout
    (root / "params.yaml").write_text(original)


def retag(root: Path, layout: Layout, **tag_section) -> dict[str, dict]:
    import yaml

    base = yaml.safe_load((REPO / "params.yaml").read_text())["tag"]
    base.update(tag_section)
    write_params(root, tag=base)
    tags.run(load_params(root / "params.yaml"), layout)
    return tag_rows(layout)


# ------------------------------------------------------------------ source and confidence


def test_every_tag_has_a_source_and_a_confidence_in_range(sample):
    root, layout = sample
    rows = retag(root, layout)
    for r in rows.values():
        for t in ("lighting", "background", "occlusion"):
            assert r[f"{t}_source"] in SOURCES, (t, r[f"{t}_source"])
            assert 0.0 <= r[f"{t}_confidence"] <= 1.0
        # computed confidences follow their rule: the lighting class's distance to its thresholds,
        # the cosine margin between the two nearest cluster centres
        assert r["lighting_confidence"] == pytest.approx(pixel_lighting(r, Lighting())[1])
        assert r["background_confidence"] == pytest.approx(0.5 + 0.5 * min(1.0, r["background_margin"] / 0.1))
        assert r["color_temperature"] in ("warm", "neutral", "cool")
    confs = [r["background_confidence"] for r in rows.values()]
    assert min(confs) < max(confs)  # the margin differs from image to image
    with catalog.connect(layout) as con:
        catalog.load(con, layout, "tags")
        cols = {c[0] for c in con.execute("DESCRIBE tags").fetchall()}
        n_bad = con.execute(
            "SELECT count(*) FROM tags WHERE lighting_confidence NOT BETWEEN 0 AND 1 OR background_source <> 'computed'"
        ).fetchone()[0]
    assert {f"{t}_{k}" for t in ("lighting", "background", "occlusion") for k in ("source", "confidence")} <= cols
    assert {"exif_ev", "exif_flash", "exif_hour", "contrast", "rb_ratio", "color_temperature"} <= cols
    assert n_bad == 0


# ------------------------------------------------------------------------- user tags


def test_user_tags_win_over_computed_and_annotation_tags(sample):
    root, layout = sample
    computed = retag(root, layout)
    files = by_file(layout)
    a, b = sorted(files)[:2]
    sha_b = files[b]
    flip = "bright" if computed[files[a]]["lighting"] != "bright" else "dark"
    (root / "user.csv").write_text(
        f"file,lighting,background,note\n{a},{flip},studio backdrop,checked by hand\n"
        f"missing-from-the-pool.jpg,dark,,\n"
    )
    (root / "user.json").write_text(json.dumps({sha_b: {"occlusion": "heavy" if computed[sha_b]["occlusion"] != "heavy" else "none"}}))
    rows = retag(root, layout, user_tags="user.csv")
    ra = rows[files[a]]
    assert (ra["lighting"], ra["lighting_source"], ra["lighting_confidence"]) == (flip, "user", 1.0)
    assert (ra["background"], ra["background_source"]) == ("studio backdrop", "user")
    assert ra["lighting_computed"] == computed[files[a]]["lighting"]  # the computed value is kept beside it
    assert ra["occlusion_source"] == "annotation"  # no occlusion column for it: the box labels stay
    for sha, r in rows.items():
        if sha != files[a]:
            assert {k: r[k] for k in ("lighting", "background", "occlusion")} == {
                k: computed[sha][k] for k in ("lighting", "background", "occlusion")}
    rows = retag(root, layout, user_tags="user.json")
    assert rows[sha_b]["occlusion_source"] == "user" and rows[sha_b]["occlusion"] != computed[sha_b]["occlusion"]


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("bad.csv", "file,lighting\n000000000030.jpg,darkish\n", ["bad.csv", "row 2", "'lighting'", "darkish"]),
        ("bad.csv", "file,ligthing\n000000000030.jpg,dark\n", ["bad.csv", "unknown column 'ligthing'", "did you mean 'lighting'"]),
        ("bad.csv", "name,lighting\nx.jpg,dark\n", ["bad.csv", "no key column"]),
        ("bad.csv", "file,occlusion\n000000000030.jpg,heavy,extra\n", ["bad.csv", "row 2", "3 cells"]),
        ("bad.json", "[{\"file\": \"000000000030.jpg\", \"occlusion\": \"total\"}]", ["bad.json", "entry 0", "'occlusion'", "total"]),
        ("bad.json", "{not json", ["bad.json", "not valid JSON"]),
        ("bad.txt", "file,lighting\n", ["bad.txt", ".csv or .json"]),
        ("absent.csv", None, ["absent.csv", "not found"]),
    ],
)
def test_bad_user_tag_files_name_the_file_row_and_column(sample, name, text, expected):
    root, layout = sample
    if text is not None:
        (root / name).write_text(text)
    with pytest.raises(NegsetError) as err:
        retag(root, layout, user_tags=name)
    message = str(err.value)
    for part in expected:
        assert part in message, (part, message)


def test_panoptic_and_detector_keys_are_checked():
    from negset.core.config import parse_params

    base = {"ingest": {"target": ["person"], "positives": {"format": "list", "path": "x.txt"}}, "select": {"count": 1}}
    with pytest.raises(NegsetError, match=r"tag.background.panoptic.jsn: unknown key; did you mean 'json'"):
        parse_params({**base, "tag": {"background": {"panoptic": {"jsn": "p.json"}}}})
    with pytest.raises(NegsetError, match=r"tag.occlusion.detector.weights: required key is missing"):
        parse_params({**base, "tag": {"occlusion": {"detector": {"model": "ssdlite320_mobilenet_v3_large"}}}})
    p = parse_params({**base, "tag": {"background": {"panoptic": {"json": "p.json"}}, "user_tags": "u.csv"}})
    assert p.tag.background.panoptic.json_path == "p.json" and p.tag.background.panoptic.value == "scene"


# ----------------------------------------------------------------------------- EXIF


def write_exif_jpeg(path: Path, exposure=(1, 15), fnumber=(28, 10), iso=1600, flash=1, when="2024:05:01 23:10:00", image=None):
    im = image or Image.new("RGB", (96, 64), (140, 130, 120))
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    if exposure:
        sub[0x829A] = IFDRational(*exposure)
    if fnumber:
        sub[0x829D] = IFDRational(*fnumber)
    if iso:
        sub[0x8827] = iso
    sub[0x9209] = flash
    if when:
        sub[0x9003] = when
    im.save(path, exif=exif, quality=92)


def test_exif_exposure_flash_and_hour_are_read_and_darken_the_class(tmp_path):
    path = tmp_path / "night.jpg"
    write_exif_jpeg(path)
    ex = exif_fields(path)
    assert ex["exif_exposure_time"] == pytest.approx(1 / 15)
    assert ex["exif_fnumber"] == pytest.approx(2.8)
    assert ex["exif_iso"] == 1600 and ex["exif_flash"] is True and ex["exif_hour"] == 23
    assert ex["exif_ev"] == pytest.approx(np.log2(2.8**2 * 15) - np.log2(16))
    stats = {**luminance_stats(Image.open(path).convert("RGB")), **ex}
    cfg = Lighting()
    assert pixel_lighting(stats, cfg)[0] == "normal"  # the pixels look ordinary...
    assert lighting_tag(stats, cfg)[:1] + lighting_tag(stats, cfg)[2:] == ("dark", "exif")  # ...the scene was dark
    # EV between dark_ev and dim_ev: dim; a higher dim_ev threshold moves it
    assert lighting_tag({**stats, "exif_ev": 5.0}, cfg)[0] == "dim"
    assert lighting_tag({**stats, "exif_ev": 8.0}, cfg)[0] == "normal"
    assert lighting_tag({**stats, "exif_ev": 8.0}, Lighting(exif={"dim_ev": 9})) [0] == "dim"
    # no exposure data: a night-time hour makes it dim; day-time changes nothing; EXIF can be switched off
    assert lighting_tag({**stats, "exif_ev": None}, cfg)[0] == "dim"
    assert lighting_tag({**stats, "exif_ev": None, "exif_hour": 14}, cfg)[0] == "normal"
    assert lighting_tag(stats, Lighting(exif={"use": False}))[0] == "normal"
    # a JPEG without EXIF has none of the fields
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(plain)
    assert set(exif_fields(plain).values()) == {None}


def test_colour_temperature_from_the_red_blue_balance():
    cfg = Lighting()
    warm = luminance_stats(Image.new("RGB", (8, 8), (200, 140, 90)))
    cool = luminance_stats(Image.new("RGB", (8, 8), (90, 140, 200)))
    grey = luminance_stats(Image.new("RGB", (8, 8), (128, 128, 128)))
    assert [color_temperature(s, cfg) for s in (warm, cool, grey)] == ["warm", "cool", "neutral"]
    # clipped shadows and highlights together make a frame high-contrast even under the std threshold
    half = np.zeros((40, 40), np.uint8)
    half[:, 20:] = 255
    stats = luminance_stats(Image.fromarray(half).convert("RGB"))
    assert pixel_lighting(stats, Lighting(dark_below=0, bright_above=255, high_contrast_std=255))[0] == "high-contrast"


# --------------------------------------------------------------------------- detector


def test_detector_tags_unlabelled_images_from_a_local_weights_file(tmp_path):
    torch = pytest.importorskip("torch")
    detection = pytest.importorskip("torchvision.models.detection")
    root = copy_project(tmp_path / "proj")
    images = root / "examples" / "coco-sample" / "images"
    src = sorted(images.glob("*.jpg"))[0]
    Image.open(src).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / "unlabelled.jpg", quality=90)
    layout, _ = tag_project(root)
    rows = tag_rows(layout)
    new = by_file(layout)["unlabelled.jpg"]
    assert (rows[new]["occlusion"], rows[new]["occlusion_source"], rows[new]["occlusion_confidence"]) == ("unknown", "computed", 0.0)

    # no pretrained weights offline: a randomly initialised model saved to a file tests the plumbing
    torch.manual_seed(0)
    model = detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    torch.save(model.state_dict(), tmp_path / "ssdlite.pt")
    det = {"model": "ssdlite320_mobilenet_v3_large", "weights": str(tmp_path / "ssdlite.pt"), "score": 0.0}
    rows = retag(root, layout, occlusion={**Occlusion().model_dump(exclude={"detector"}), "detector": det})
    r = rows[new]
    assert r["occlusion_source"] == "computed" and r["detected_objects"] > 0
    assert r["occlusion"] in ("none", "partial", "heavy") and 0 < r["occlusion_confidence"] <= 1
    # its boxes went through the box-geometry rule
    assert r["occlusion"] == ("none" if r["occluded_share"] == 0 else "heavy" if r["occluded_share"] >= 0.5 else "partial")
    # labelled images keep their box-label occlusion
    assert all(x["occlusion_source"] == "annotation" for s, x in rows.items() if s != new)
    # a threshold no random box reaches: no objects, so none
    rows = retag(root, layout, occlusion={"detector": {**det, "score": 1.0}})
    assert rows[new]["detected_objects"] == 0 and rows[new]["occlusion"] == "none"

    with pytest.raises(NegsetError, match="missing.pt: detector weights file not found"):
        retag(root, layout, occlusion={"detector": {**det, "weights": "missing.pt"}})
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(NegsetError, match="junk.pt: not a torch weights file"):
        retag(root, layout, occlusion={"detector": {**det, "weights": str(tmp_path / "junk.pt")}})
    with pytest.raises(NegsetError, match="ssdlite.pt: not weights for fasterrcnn_mobilenet_v3_large_fpn"):
        retag(root, layout, occlusion={"detector": {**det, "model": "fasterrcnn_mobilenet_v3_large_fpn"}})


def test_no_torchvision_import_without_a_detector(sample):
    root, _ = sample
    code = (
        "import sys; from negset.tag import step as tags; from negset.core.config import load_params; from negset.core.layout import Layout;"
        f"tags.run(load_params({str(root / 'params.yaml')!r}), Layout.at({str(root)!r}));"
        "print('torchvision' in sys.modules)"
    )
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------- metrics (units)


def test_adjusted_mutual_information_and_purity():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 300).tolist()
    assert tagcheck.adjusted_mutual_information(a, a) == pytest.approx(1.0)
    renamed = [f"c{(x + 1) % 4}" for x in a]  # the same partition under other names
    assert tagcheck.adjusted_mutual_information(a, renamed) == pytest.approx(1.0)
    noise = rng.integers(0, 5, 300).tolist()
    assert abs(tagcheck.adjusted_mutual_information(a, noise)) < 0.03  # independent: about 0
    assert tagcheck.adjusted_mutual_information(a, noise) == pytest.approx(tagcheck.adjusted_mutual_information(noise, a))
    # expected MI by its definition, checked against a Monte-Carlo mean over random permutations
    small_a, small_b = [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 0, 0, 1, 1]
    m = tagcheck.contingency(small_a, small_b)
    mc = np.mean([tagcheck.mutual_information(tagcheck.contingency(small_a, list(rng.permutation(small_b)))) for _ in range(4000)])
    assert tagcheck.expected_mutual_information(m) == pytest.approx(mc, abs=0.01)
    assert tagcheck.purity([0, 0, 1, 1], ["x", "y", "z", "z"]) == 0.75
    # cluster 0 = in, in, out -> "in" (2 of 3 right), cluster 1 = out (right): 3/4 in sample;
    # leave-one-out: the two "in" images still see an "in" (tie broken by name), the "out" of cluster 0 sees
    # only "in"s, and the lone image of cluster 1 falls back to the overall majority ("in", tie): 2/4
    assert tagcheck.majority_accuracy([0, 0, 0, 1], ["in", "in", "out", "out"]) == (0.75, 0.5)


# ------------------------------------------------------------------- COCO128: panoptic + check-tags


@pytest.fixture(scope="module")
def coco128(tmp_path_factory):
    root = tmp_path_factory.mktemp("c128")
    layout, params = tag_project(
        root,
        f"""ingest:
  target: person
  positives: {{format: coco, path: {COCO128 / 'annotations' / 'instances_train2017.json'}, images: {COCO128 / 'images'}}}
tag:
  background:
    panoptic: {{json: {PANOPTIC}, masks: {COCO128 / 'panoptic'}}}
select:
  count: 20
""",
    )
    return root, layout


@needs_coco128
def test_panoptic_stuff_labels_give_the_background_of_coco128(coco128):
    root, layout = coco128
    rows = tag_rows(layout)
    files = by_file(layout)
    pan = json.loads(PANOPTIC.read_text())
    cats = {c["id"]: c for c in pan["categories"]}
    names = {im["id"]: im["file_name"] for im in pan["images"]}
    checked = 0
    for ann in pan["annotations"]:
        area = Counter()
        for seg in ann["segments_info"]:
            cat = cats[seg["category_id"]]
            if not cat["isthing"]:
                sup = cat["supercategory"]
                side = "outdoor" if sup in tagsources.OUTDOOR_SUPERCATEGORIES else "indoor" if sup in tagsources.INDOOR_SUPERCATEGORIES else None
                if side:
                    area[side] += seg["area"]
        r = rows[files[names[ann["image_id"]]]]
        if area:
            scene = max(area, key=area.get)
            assert (r["background"], r["background_source"]) == (scene, "annotation")
            assert r["background_confidence"] == pytest.approx(area[scene] / sum(area.values()))
            checked += 1
        else:
            assert r["background_source"] == "computed"
    assert checked >= 90
    # images without panoptic labels keep their cluster; every image keeps its cluster id for select
    without = set(files) - set(names.values())
    assert without and all(rows[files[f]]["background_source"] == "computed" for f in without)
    assert all(r["background_computed"].startswith("bg") for r in rows.values())


@needs_coco128
def test_check_tags_prints_figures_consistent_with_the_data(coco128, capsys):
    root, layout = coco128
    assert main(["--params", str(root / "params.yaml"), "check-tags"]) == 0
    printed = capsys.readouterr().out
    assert "indoor/outdoor" in printed and "adjusted mutual information" in printed and "Cohen's kappa" in printed
    result = json.loads((layout.tags / "agreement.json").read_text())
    rows = tag_rows(layout)
    files = by_file(layout)
    bg = result["background"]
    # recompute indoor/outdoor accuracy from the clusters and the panoptic scenes
    entries, _ = tagsources.load_panoptic(PANOPTIC)
    pairs = [(rows[files[n]]["background_cluster"], e.scene) for n, e in entries.items() if e.scene != "unknown"]
    assert bg["images"] == len(pairs)
    majority = {c: Counter(s for cc, s in pairs if cc == c).most_common(1)[0][1] for c, _ in pairs}
    assert bg["indoor_outdoor_accuracy"] == pytest.approx(sum(majority.values()) / len(pairs))
    assert bg["majority_baseline"] == pytest.approx(Counter(s for _, s in pairs).most_common(1)[0][1] / len(pairs))
    assert 0 <= bg["indoor_outdoor_accuracy_loo"] <= bg["indoor_outdoor_accuracy"]
    assert bg["stuff_purity_baseline"] <= bg["stuff_purity"] <= 1 and -1 <= bg["stuff_ami"] <= 1
    # lighting: 20 hand labels, accuracy = the confusion table's diagonal
    li = result["lighting"]
    assert li["images"] == 20 and not li["missing"]
    conf = li["confusion"]
    assert sum(map(sum, (v.values() for v in conf.values()))) == 20
    assert li["accuracy"] == pytest.approx(sum(conf[c][c] for c in conf) / 20)
    labels = {r["file"]: r["lighting"] for r in __import__("csv").DictReader(open(tagcheck.DEFAULT_LIGHTING_LABELS))}
    for d in li["disagreements"]:
        assert labels[d["file"]] == d["label"] and rows[files[d["file"]]]["lighting_computed"] == d["tag"]
    # occlusion: boxes vs masks on the panoptic images, agreement = diagonal share
    oc = result["occlusion"]
    assert oc["images"] == len(entries)
    assert oc["agreement"] == pytest.approx(sum(oc["confusion"][c][c] for c in oc["confusion"]) / oc["images"])
    for d in oc["disagreements"][:5]:
        assert rows[files[d["file"]]]["occlusion"] == d["boxes"] != d["masks"]


def test_mask_occlusion_rule():
    cats = {1: {"isthing": 1}, 2: {"isthing": 1}, 3: {"isthing": 0}}
    ids = np.full((100, 100), 9, np.int64)  # stuff
    ids[40:60, 40:60] = 1  # an object in the middle
    segs = [{"id": 1, "category_id": 1}, {"id": 9, "category_id": 3}]
    assert tagcheck.mask_occlusion(ids, segs, cats, Occlusion())[:2] == ("none", 0.0)
    ids[0:10, 0:30] = 2  # a second object, touching the frame
    segs.append({"id": 2, "category_id": 2})
    assert tagcheck.mask_occlusion(ids, segs, cats, Occlusion())[:2] == ("heavy", 0.5)
    ids[45:55, 45:55] = 2  # ...and covering the middle of the first (25% of its box)
    cls, share, cut, covered = tagcheck.mask_occlusion(ids, segs, cats, Occlusion())
    assert (cls, share, cut) == ("heavy", 1.0, 1) and covered >= 1
