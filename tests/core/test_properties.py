"""Property-based tests (hypothesis): validation and the manifest reader never fail unclearly."""

from __future__ import annotations

import copy

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
