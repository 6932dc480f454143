"""Selection: quotas follow the positives, shortfalls move, no leaks, seeded."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from negset.core.config import load_params
from negset.core.layout import Layout
from negset.embed import step as embed
from negset.export import step as export
from negset.ingest import step as ingest
from negset.select import step as select
from negset.select.quotas import allocate
from negset.tag import step as tags
from tests.conftest import write_params


def test_allocate_proportional_with_largest_remainder():
    q = allocate(10, {"a": 5, "b": 3, "c": 2}, {"a": 99, "b": 99, "c": 99})
    assert q == {"a": 5, "b": 3, "c": 2}
    q = allocate(4, {"a": 1, "b": 1, "c": 1}, {"a": 9, "b": 9, "c": 9})
    assert sum(q.values()) == 4 and max(q.values()) - min(q.values()) == 1


def test_allocate_redistributes_shortfall():
    q = allocate(10, {"a": 8, "b": 1, "c": 1}, {"a": 2, "b": 9, "c": 9})
    assert q["a"] == 2 and q["b"] + q["c"] == 8 and abs(q["b"] - q["c"]) <= 1


def test_allocate_never_exceeds_capacity_or_uses_unweighted_strata():
    q = allocate(10, {"a": 1, "b": 1, "z": 0}, {"a": 2, "b": 3, "z": 50})
    assert q == {"a": 2, "b": 3, "z": 0}


@pytest.fixture
def built(project):
    layout = Layout.at(project)
    params = load_params(project / "params.yaml")
    for step in (ingest, embed, tags):
        step.run(params, layout)
    return project, layout


def selection(layout):
    return pq.read_table(layout.select / "selection.parquet").to_pylist()


def test_select_on_sample_has_no_leak_and_meets_quotas(built):
    project, layout = built
    summary = select.run(load_params(project / "params.yaml"), layout)
    rows = selection(layout)
    assert len(rows) == summary["requested"] == 8
    images = {r["sha256"]: r for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}
    assert not any(images[r["sha256"]]["has_target"] for r in rows)
    assert all(images[r["sha256"]]["role"] == "candidate" for r in rows)
    assert all(r["reason"] for r in rows)
    strata = pq.read_table(layout.select / "strata.parquet").to_pylist()
    for s in strata:
        assert s["chosen"] <= s["available"]
        if s["positives"] == 0:
            assert s["quota"] == 0
    quota_rows = [r for r in rows if r["rule"] == "quota"]
    for s in strata:
        assert sum(r["stratum"] == s["stratum"] for r in quota_rows) == s["quota"]


def test_same_seed_same_set_other_seed_recorded(built):
    project, layout = built
    params = load_params(project / "params.yaml")
    select.run(params, layout)
    first = [r["sha256"] for r in selection(layout)]
    select.run(params, layout)
    assert [r["sha256"] for r in selection(layout)] == first
    write_params(project, select={"seed": 7, "count": 12})
    select.run(load_params(project / "params.yaml"), layout)
    rows = selection(layout)
    assert len(rows) == 12 and all("seed 7" in r["reason"] for r in rows if r["rule"] == "quota")


def test_asking_for_more_than_the_pool(built):
    project, layout = built
    write_params(project, select={"count": 40})
    summary = select.run(load_params(project / "params.yaml"), layout)
    # the whole eligible pool: the 17 candidates without the target, less the rules' rejections
    assert summary["chosen"] == summary["eligible"] == 17 - summary["rejected"]
    assert summary["requested"] == 40
    write_params(project, select={"count": 40, "context": {"irrelevant_below_percentile": 0}})
    summary = select.run(load_params(project / "params.yaml"), layout)
    assert summary["chosen"] == 17  # with the context rule off, every candidate without the target


def test_export_writes_manifest_metrics_and_run_record(built):
    project, layout = built
    params = load_params(project / "params.yaml")
    select.run(params, layout)
    metrics = export.run(params, layout)
    out = layout.negatives
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(manifest) == metrics["negatives"] == 8
    for row in manifest:
        assert (out / row["image"]).is_file()
        assert row["reason"] and row["stratum"] == f"{row['lighting']} | {row['background']} | {row['occlusion']}"
    assert (out / "manifest.csv").read_text().count("\n") == 9
    m = json.loads((out / "metrics.json").read_text())
    assert sum(v["negatives"] for v in m["per_stratum"].values()) == 8
    assert sum(v["positives"] for v in m["per_stratum"].values()) == 16
    assert 0 <= m["strata_tv_distance"] <= 1
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0 and run["model"]["weights_sha256"] and run["params"]["select"]["count"] == 8
