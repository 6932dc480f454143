"""Each kind of user mistake, made after a good build: a clear message, exit 2, no traceback, nothing lost.

The project is built once (``negset --no-prefect build``); each test copies it,
makes one mistake, re-runs the build from the command line and checks that
every file already built under ``data/`` is still there, byte for byte.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_built, run, write_params


def snapshot(root: Path) -> dict[str, str]:
    data = root / "data"
    return {
        p.relative_to(data).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data.rglob("*"))
        if p.is_file() and p.name != ".negset.lock"  # the run lock notes who held it last: not an output
    }


@pytest.fixture
def built(built_project, tmp_path):
    root = copy_built(built_project, tmp_path / "proj")
    assert (root / "data/negatives/manifest.parquet").is_file()
    return root


def rebuild_fails(root: Path, *args: str) -> str:
    """Run the build after the mistake; return stderr after checking exit code, no traceback, nothing lost."""
    before = snapshot(root)
    manifest = (root / "data/negatives/manifest.parquet").read_bytes()
    proc = run([sys.executable, "-m", "negset", "--no-prefect", *args, "build"], root, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.count("negset: error:") == 1
    assert (root / "data/negatives/manifest.parquet").read_bytes() == manifest
    assert snapshot(root) == before  # nothing under data/ lost, changed or added
    return proc.stderr


def test_missing_labels_file(built):
    (built / "examples/coco-sample/annotations/instances.json").rename(built / "moved.json")
    err = rebuild_fails(built)
    assert "annotations/instances.json: COCO annotation file not found" in err
    assert "hint: check ingest.positives.path" in err


def test_missing_params_file(built):
    err = rebuild_fails(built, "--params", str(built / "paramz.yaml"))
    assert "paramz.yaml: parameters file not found" in err and "hint:" in err


def test_unknown_key_names_the_closest(built):
    params = yaml.safe_load((built / "params.yaml").read_text())
    params["select"]["sed"] = 3
    (built / "params.yaml").write_text(yaml.safe_dump(params))
    err = rebuild_fails(built)
    assert "params.yaml: select.sed: unknown key; did you mean 'seed'?" in err


def test_wrong_type_names_key_and_value(built):
    write_params(built, embed={"image_size": "large"})
    err = rebuild_fails(built)
    assert "params.yaml: embed.image_size:" in err and "integer" in err and "'large'" in err


def test_empty_source(built):
    (built / "incoming").mkdir()
    write_params(built, ingest={"sources": [{"type": "local", "path": "incoming"}]})
    err = rebuild_fails(built)
    assert "ingest.sources: no candidate images found in incoming" in err
    assert "ingest.sources[0].path holds no files" in err and "hint:" in err


def test_missing_source_folder(built):
    write_params(built, ingest={"sources": [{"type": "local", "path": "examples/coco-sample/images"}, {"type": "local", "path": "nowhere"}]})
    err = rebuild_fails(built)
    assert "nowhere: source folder not found" in err and "ingest.sources[].path" in err


def test_target_not_in_the_labels(built):
    write_params(built, ingest={"target": ["persn"]})
    err = rebuild_fails(built)
    assert "ingest.target: 'persn' is not a class in" in err and "did you mean 'person'?" in err


def test_a_step_run_alone_before_its_input_exists(built):
    shutil.rmtree(built / "data/select")
    before = snapshot(built)
    proc = run([sys.executable, "-m", "negset", "--no-prefect", "export"], built, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "selection.parquet: missing; the 'select' step has not run" in proc.stderr and "negset select" in proc.stderr
    # the DuckDB catalog is a cache rebuilt from the step outputs; every step output is untouched
    after = snapshot(built)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed <= {"catalog.duckdb"}


@pytest.mark.slow
def test_a_mistake_inside_a_prefect_flow_shows_no_traceback(built):
    """What `dvc repro` runs: the step as a Prefect flow; the failed task logs the message, not a traceback."""
    write_params(built, ingest={"target": ["persn"]})
    before = snapshot(built)
    proc = run([sys.executable, "-m", "negset", "ingest"], built, check=False)
    assert proc.returncode == 2
    out = proc.stderr + proc.stdout
    assert "Flow run" in out and "Traceback" not in out
    assert "negset: error: ingest.target: 'persn' is not a class in" in proc.stderr
    assert snapshot(built) == before
