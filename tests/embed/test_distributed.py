"""The embed step on a local two-worker Dask cluster gives the same vectors as the local path."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from negset.core.layout import Layout
from negset.embed.store import read_embeddings
from tests.conftest import BIN, copy_project, run, write_params

pytestmark = pytest.mark.slow


def test_dask_embedding_equals_local(tmp_path):
    local = copy_project(tmp_path / "local")
    dist = copy_project(tmp_path / "dist")
    write_params(dist, embed={"dask_workers": 2})
    for root in (local, dist):
        run([str(BIN / "negset"), "--no-prefect", "ingest"], root)
    run([str(BIN / "negset"), "--no-prefect", "embed"], local)
    proc = subprocess.run([str(BIN / "negset"), "--json", "embed"], cwd=dist, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["images"] == 33 and summary["embedded_now"] == 33
    workers = summary["workers"]
    assert workers and all(not w.endswith(f":{os.getpid()}") for w in workers)  # computed in worker processes
    shas_l, vec_l = read_embeddings(Layout.at(local))
    shas_d, vec_d = read_embeddings(Layout.at(dist))
    assert shas_l == shas_d
    assert (1.0 - (vec_l * vec_d).sum(axis=1)).max() < 1e-4
    assert json.loads((dist / "data/embed/model.json").read_text()) == json.loads((local / "data/embed/model.json").read_text())
    print(f"dask workers used: {workers}")
