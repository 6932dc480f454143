"""Issue 18, case 3: one place (negset.core.errors.user_error, applied by run_step and the command line) turns
missing inputs, damaged Parquet/JSON under data/, a read-only data/ and an unwritable catalog into one line
naming the file; nothing under data/ changes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from negset.core.errors import NegsetError, user_error
from tests.conftest import copy_built, run, write_params
from tests.support.datatree import changes, read_only, snapshot


def negset(root, *args):
    return run([sys.executable, "-m", "negset", "--no-prefect", *args], root, check=False)


def error_lines(proc) -> list[str]:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith(("negset: error: ", "  hint: "))]
    assert len(lines) == 2 and lines[0].startswith("negset: error: "), proc.stderr[-3000:]
    return lines


@pytest.fixture
def built(built_project, tmp_path):
    return copy_built(built_project, tmp_path / "proj")


def test_embed_before_ingest_names_the_missing_input(project):
    lines = error_lines(negset(project, "embed"))
    images = (project / "data" / "ingest" / "images.parquet").resolve()
    assert lines == [f"negset: error: {images}: missing; the 'ingest' step has not run (or did not finish)",
                     "  hint: run `negset ingest` (or `dvc repro`) first"]
    assert sorted(p.name for p in (project / "data").iterdir()) == [".gitignore", ".negset.lock"]


@pytest.mark.parametrize("step, damaged, rebuild", [
    ("select", "tags/tags.parquet", "tag"),
    ("tag", "embed/embeddings.parquet", "embed"),
    ("tag", "embed/model.json", "embed"),
    ("export", "ingest/summary.json", "ingest"),
])
def test_damaged_file_under_data_is_one_line_and_nothing_changes(built, step, damaged, rebuild):
    path = built / "data" / damaged
    path.write_bytes(b"\x00garbage: a disk error, or a file copied half" * 3)
    before = snapshot(built / "data")
    lines = error_lines(negset(built, step))
    assert lines[0].startswith(f"negset: error: {path.resolve()}: damaged or not the expected format (")
    assert lines[1] == f"  hint: run `negset {rebuild}` again to rebuild it"
    assert changes(before, snapshot(built / "data")) == []


def test_read_only_data_is_one_line_for_every_step(built):
    data = built / "data"
    before = snapshot(data)
    everything = [data] + [Path(d) / n for d, dirs, files in os.walk(data) for n in dirs + files]
    with read_only(*everything):
        for step in ("ingest", "embed", "tag", "select", "export", "report"):
            lines = error_lines(negset(built, step))
            assert lines[0].startswith(f"negset: error: {data.resolve()}/"), lines
            assert lines[0].endswith((": permission denied", ": operation not permitted", ": read-only file system"))
            assert lines[1] == "  hint: make data/ (and the file) writable by this user, or run as the user that owns it"
    assert changes(before, snapshot(data)) == []


def test_unwritable_catalog_is_not_reported_as_in_use(built):
    catalog = built / "data" / "catalog.duckdb"
    before = snapshot(built / "data")
    with read_only(catalog):
        lines = error_lines(negset(built, "export"))
    assert lines[0].startswith(f"negset: error: {catalog.resolve()}: cannot open the catalog (IO Error: ")
    assert "in use" not in lines[0]
    assert lines[1] == ("  hint: make it writable, or delete it: every step rebuilds the tables it needs from data/")
    assert changes(before, snapshot(built / "data")) == []


def test_infinite_ratio_is_one_line(built):
    write_params(built, select={"count": None, "ratio": float("inf")})
    before = snapshot(built / "data")
    lines = error_lines(negset(built, "select"))
    assert lines[0] == "negset: error: params.yaml: select.ratio: Input should be a finite number, got inf"
    assert changes(before, snapshot(built / "data")) == []


def test_user_error_leaves_network_errors_to_the_retries():
    assert user_error(ConnectionResetError(104, "Connection reset by peer")) is None
    assert user_error(TimeoutError("timed out")) is None
    assert user_error(ValueError("x")) is None
    err = user_error(PermissionError(13, "Permission denied", "/p/data/select/summary.json"))
    assert isinstance(err, NegsetError) and err.message == "/p/data/select/summary.json: permission denied"
    err = user_error(FileNotFoundError(2, "No such file", "/p/data/tags/tags.parquet"))
    assert err.message == "/p/data/tags/tags.parquet: missing; the 'tag' step has not run (or did not finish)"
    full = user_error(OSError(28, "No space left on device", "/p/data/.embed.staging/x"))
    assert full.message == "/p/data/.embed.staging/x: no space left on the device"
