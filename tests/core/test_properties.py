"""Property-based tests (hypothesis): validation and the manifest reader never fail unclearly."""

from __future__ import annotations

import copy
import json

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negset.core.config import Params, parse_params
from negset.core.errors import NegsetError
from negset.export.manifest import read_manifest
from tests.conftest import REPO

BASE = yaml.safe_load((REPO / "params.yaml").read_text())

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


def key_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from key_paths(v, prefix + (k,))


PATHS = sorted(key_paths(BASE))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=4), extra=st.one_of(st.none(), st.text(min_size=1, max_size=10)))
def test_any_edit_gives_params_or_a_clear_error(edits, extra):
    raw = copy.deepcopy(BASE)
    for path, value in edits:
        node = raw
        for key in path[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(key), dict):
                break
            node = node[key]
        else:
            node[path[-1]] = value
    if extra is not None:
        raw["select"] = dict(raw["select"]) if isinstance(raw.get("select"), dict) else raw.get("select")
        if isinstance(raw["select"], dict):
            raw["select"][extra] = 1
    try:
        params = parse_params(raw)
    except NegsetError as exc:
        text = str(exc)
        assert text.startswith("params.yaml: ") and "Traceback" not in text
        for line in text.splitlines():
            if not line.startswith("  hint:"):
                assert line.startswith("params.yaml: ")
    else:
        assert isinstance(params, Params)
        assert params.select.size_for(10) >= 1


def test_unknown_keys_are_named_one_line_each():
    raw = copy.deepcopy(BASE)
    raw["select"]["sed"] = 1
    raw["embed"]["modle"] = "x"
    try:
        parse_params(raw)
    except NegsetError as exc:
        lines = [l for l in str(exc).splitlines() if not l.startswith("  hint")]
        assert len(lines) == 2
        assert any("select.sed" in l and "'seed'" in l for l in lines)
        assert any("embed.modle" in l and "'model'" in l for l in lines)
    else:
        raise AssertionError("unknown keys were accepted")


hexsha = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
rows = st.lists(
    st.fixed_dictionaries({"uri": st.text(min_size=1, max_size=20), "sha256": hexsha, "stratum": st.text(max_size=10), "reason": st.text(max_size=20)}),
    max_size=8,
    unique_by=lambda r: r["sha256"],
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows)
def test_manifest_round_trip(tmp_path, rows):
    path = tmp_path / "manifest.parquet"
    schema = pa.schema([(k, pa.string()) for k in ("uri", "sha256", "stratum", "reason")])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    assert read_manifest(path).to_pylist() == rows


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), drop=st.sampled_from(["", "uri", "sha256", "stratum", "reason"]), badsha=st.text(max_size=70))
def test_damaged_manifests_give_a_clear_error(tmp_path, data, drop, badsha):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(data)
    try:
        read_manifest(junk)
    except NegsetError as exc:
        assert "junk.parquet" in str(exc)
    cols = {"uri": ["a.jpg"], "sha256": [badsha], "stratum": ["s"], "reason": ["r"]}
    cols.pop(drop, None)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table(cols), bad)
    valid = drop == "" and len(badsha) == 64 and all(c in "0123456789abcdef" for c in badsha)
    if valid:
        assert read_manifest(bad).num_rows == 1
    else:
        try:
            read_manifest(bad)
        except NegsetError as exc:
            assert "bad.parquet" in str(exc)
        else:
            raise AssertionError("a damaged manifest was accepted")


def test_the_demo_manifest_reads(project):
    from negset.pipeline import STEPS, run_step

    for step in STEPS:
        run_step(step, project / "params.yaml")
    for name in ("manifest.parquet", "manifest.csv"):
        table = read_manifest(project / "data" / "negatives" / name)
        assert table.num_rows == 8


# --- label readers (issue 18): random damage to a COCO file or a YOLO label file never gives a traceback

from negset.ingest.labels import load_coco, load_yolo  # noqa: E402
from tests.conftest import SAMPLE  # noqa: E402

COCO_SAMPLE = json.loads((SAMPLE / "annotations" / "instances.json").read_text())
SMALL_COCO = dict(COCO_SAMPLE, images=COCO_SAMPLE["images"][:4],
                  annotations=[a for a in COCO_SAMPLE["annotations"]
                               if a["image_id"] in {im["id"] for im in COCO_SAMPLE["images"][:4]}][:12])
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)
COCO_KEYS = ["id", "file_name", "width", "height", "image_id", "category_id", "bbox", "iscrowd", "name"]
coco_edits = st.lists(st.tuples(
    st.sampled_from(["images", "annotations", "categories"]), st.integers(0, 11),
    st.sampled_from(COCO_KEYS), st.one_of(st.just("<delete>"), st.just("<copy id>"), json_values)), min_size=1, max_size=5)


def _one_line_about(exc: NegsetError, name: str) -> None:
    text = str(exc)
    lines = [l for l in text.splitlines() if not l.startswith("  hint:")]
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in text, text


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=coco_edits, top=st.one_of(st.none(), st.sampled_from(["images", "annotations", "categories"])),
       junk=st.one_of(st.none(), st.binary(max_size=40)))
def test_damaged_coco_files_give_labels_or_one_line(tmp_path, edits, top, junk):
    data = copy.deepcopy(SMALL_COCO)
    for section, index, key, value in edits:
        entries = data[section]
        if not entries:
            continue
        entry = entries[index % len(entries)]
        if value == "<delete>":
            entry.pop(key, None)
        elif value == "<copy id>":  # duplicate ids and dangling references
            entry[key] = entries[(index + 1) % len(entries)].get("id", 0)
        else:
            entry[key] = value
    if top is not None:
        data[top] = {"not": "a list"}
    path = tmp_path / "instances.json"
    path.write_bytes(junk if junk is not None and len(junk) % 3 == 0 else json.dumps(data).encode())
    try:
        labels = load_coco(path, SAMPLE / "images")
    except NegsetError as exc:
        _one_line_about(exc, "instances.json")
    else:
        for boxes in labels.boxes.values():
            for b in boxes:  # what is accepted is a box in the image
                assert 0 <= b.x0 < b.x1 <= 1 and 0 <= b.y0 < b.y1 <= 1


yolo_lines = st.lists(st.one_of(
    st.text(alphabet="0123456789.-+eE naif \t", max_size=40),
    st.tuples(st.integers(-2, 90), st.lists(st.one_of(st.floats(-2, 2), st.just(float("nan"))), min_size=0, max_size=7)).map(
        lambda t: " ".join([str(t[0])] + [repr(v) for v in t[1]])),
), max_size=6)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=yolo_lines, binary=st.one_of(st.none(), st.binary(min_size=1, max_size=60)))
def test_damaged_yolo_label_files_give_labels_or_one_line(tmp_path, lines, binary):
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir(exist_ok=True)
    txt = labels_dir / "000000000030.txt"
    if binary is not None:
        txt.write_bytes(binary)
    else:
        txt.write_text("\n".join(lines) + "\n")
    try:
        labels = load_yolo(labels_dir, SAMPLE / "classes.txt", SAMPLE / "images")
    except NegsetError as exc:
        _one_line_about(exc, "000000000030.txt")
    else:
        for b in labels.boxes[(SAMPLE / "images" / "000000000030.jpg").resolve()]:
            assert 0 <= b.x0 < b.x1 <= 1 and 0 <= b.y0 < b.y1 <= 1
