"""End to end in a real git + dvc repository: dvc repro runs each stage as a Prefect flow."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from tests.conftest import BIN, copy_project, run, write_params

pytestmark = pytest.mark.slow


def find_key(obj, key):
    """The first value stored under ``key`` anywhere in nested dicts."""
    if isinstance(obj, dict):
        if key in obj and not isinstance(obj[key], dict):
            return obj[key]
        for value in obj.values():
            found = find_key(value, key)
            if found is not None:
                return found
    return None


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def test_dvc_repro_builds_then_reruns_only_what_changed(dvc_project):
    root = dvc_project
    first = run([str(BIN / "dvc"), "repro"], root)
    assert ran_stages(first.stdout) == ["ingest", "embed", "detect", "tag", "select", "export", "report"]
    assert "Flow run" in first.stdout + first.stderr  # each stage ran as a Prefect flow

    out = root / "data" / "negatives"
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    images = {r["sha256"]: r for r in pq.read_table(root / "data" / "ingest" / "images.parquet").to_pylist()}
    assert len(manifest) == 8
    assert not any("person" in images[r["sha256"]]["classes"] for r in manifest)
    assert all((out / r["image"]).is_file() and r["reason"] for r in manifest)
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], root).stdout)
    assert find_key(shown, "negatives") == 8 and find_key(shown, "positives") == 16
    assert (out / "report.html").is_file()
    plots = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], root).stdout)["data"]
    strata = plots["data/negatives/plots/strata.csv"][0]["content"]
    assert strata["encoding"]["y"]["field"] == "stratum" and strata["encoding"]["color"]["field"] == "set"
    values = strata["data"]["values"]
    assert sum(int(v["count"]) for v in values if v["set"] == "negatives") == 8
    hardness = plots["data/negatives/plots/hardness.csv"][0]["content"]["data"]["values"]
    assert sum(int(v["count"]) for v in hardness if v["set"] == "negatives") == 8
    run([str(BIN / "dvc"), "plots", "show", "-o", str(root / "dvc_plots")], root)
    assert "strata.csv" in (root / "dvc_plots" / "index.html").read_text()

    # nothing changed: no stage runs
    second = run([str(BIN / "dvc"), "repro"], root)
    assert ran_stages(second.stdout) == []

    # a selection parameter changed: only select and export run
    write_params(root, select={"count": 6})
    third = run([str(BIN / "dvc"), "repro"], root)
    assert ran_stages(third.stdout) == ["select", "export", "report"]
    assert len(pq.read_table(out / "manifest.parquet")) == 6
    status = run([str(BIN / "dvc"), "status", "--json"], root)
    assert json.loads(status.stdout) == {}


def test_two_builds_with_the_same_seed_are_identical(tmp_path):
    a = copy_project(tmp_path / "a")
    b = copy_project(tmp_path / "b")
    run([str(BIN / "negset"), "build"], a)  # one Prefect flow for all steps
    run([str(BIN / "negset"), "--no-prefect", "build"], b)
    for name in ("manifest.csv", "manifest.parquet", "metrics.json"):
        assert (a / "data/negatives" / name).read_bytes() == (b / "data/negatives" / name).read_bytes(), name
    images_a = sorted(p.name for p in (a / "data/negatives/images").iterdir())
    assert images_a == sorted(p.name for p in (b / "data/negatives/images").iterdir())
    assert len(images_a) == 8


def test_bad_parameter_stops_repro_with_a_clear_message(dvc_project):
    write_params(dvc_project, select={"count": "eight"})
    proc = run([str(BIN / "dvc"), "repro"], dvc_project, check=False)
    assert proc.returncode != 0
    assert "select.count" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (dvc_project / "data" / "negatives").exists()
