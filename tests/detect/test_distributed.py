"""The detect step on a local two-worker Dask cluster gives the same detections and evidence as the local path."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from negset.core import parquet as pq
from negset.core.layout import Layout
from tests.conftest import BIN, copy_project, run, write_params

pytestmark = pytest.mark.slow


def outputs(root) -> dict[str, list[dict]]:
    det = Layout.at(root).detect
    return {name: pq.read_table(det / f"{name}.parquet").to_pylist() for name in ("detections", "evidence", "rejected")}


def calibration(root) -> dict:
    """Per source its calibration record, without the speed (where and how fast it ran)."""
    sources = json.loads((Layout.at(root).detect / "calibration.json").read_text())["sources"]
    return {name: {k: v for k, v in record.items() if k != "speed"} for name, record in sources.items()}


def test_dask_detection_equals_local(tmp_path):
    local = copy_project(tmp_path / "local")
    dist = copy_project(tmp_path / "dist")
    write_params(dist, embed={"dask_workers": 2})  # detect reuses embed's cluster settings
    for root in (local, dist):
        run([str(BIN / "negset"), "--no-prefect", "ingest"], root)
    run([str(BIN / "negset"), "--no-prefect", "detect"], local)
    proc = subprocess.run([str(BIN / "negset"), "--json", "detect"], cwd=dist, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    speed = summary["sources"]["yolox_nano"]["speed"]
    assert summary["images"] == 33 and speed["distributed"] == 33 and speed["ran"] == 33  # every image on a worker
    workers = summary["workers"]
    assert workers and all(not w.endswith(f":{os.getpid()}") for w in workers)  # computed in worker processes
    got, want = outputs(dist), outputs(local)
    assert len(want["detections"]) > 33 and any(r["tile"] > 0 for r in want["detections"])  # tiles ran somewhere
    assert got == want
    assert calibration(dist) == calibration(local)
    print(f"dask workers used: {workers}; {len(got['detections'])} detections")
