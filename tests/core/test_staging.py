"""Issue 18, case 2: each step's output folder is replaced whole, so a killed step leaves the previous
outputs or none, and a later step never reads half of a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from negset.core import atomic, staging
from negset.core.layout import Layout
from negset.pipeline import run_step
from tests.conftest import BIN, write_params
from tests.support.datatree import changes, snapshot

ENV = dict(os.environ, NEGSET_NO_PREFECT="1")


def kill_embed_in_regions_phase(project):
    """Start `negset embed`, SIGKILL it once it logs that the region crops are being embedded."""
    proc = subprocess.Popen([str(BIN / "negset"), "embed"], cwd=project, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 240
    try:
        for line in proc.stderr:
            seen.append(line)
            if "negset INFO regions" in line and "to embed" in line:
                proc.send_signal(signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    assert "to embed" in seen[-1] and " 0 to embed" not in seen[-1], "the regions phase had work left"


def model_size(project) -> int:
    return json.loads((project / "data" / "embed" / "model.json").read_text())["image_size"]


def test_killed_embed_leaves_the_previous_outputs_whole(project):
    write_params(project, embed={"threads": 1, "batch_size": 4, "regions": 3})
    run_step("ingest", project / "params.yaml")
    run_step("embed", project / "params.yaml")
    before = snapshot(project / "data" / "embed")
    assert model_size(project) == 224
    write_params(project, embed={"image_size": 192})
    kill_embed_in_regions_phase(project)
    # before the fix: embeddings.parquet held 192 px vectors while model.json still said 224
    assert changes(before, snapshot(project / "data" / "embed")) == []
    assert model_size(project) == 224
    # the later steps run on the previous outputs, which agree with each other
    assert run_step("tag", project / "params.yaml")["images"] == 33
    # the next embed clears what the killed one left, then swaps its own outputs in whole
    summary = run_step("embed", project / "params.yaml")
    assert summary["embedded_now"] == 0  # the killed run's whole-image vectors were cached
    assert model_size(project) == 192
    assert not staging.staging_path(Layout.at(project), "embed").exists()
    rows = pq.read_metadata(project / "data" / "embed" / "embeddings.parquet").num_rows
    assert rows == 33


def test_killed_first_embed_leaves_none_and_tag_says_so_in_one_line(project):
    write_params(project, embed={"threads": 1, "batch_size": 4, "regions": 3})
    run_step("ingest", project / "params.yaml")
    kill_embed_in_regions_phase(project)
    assert not (project / "data" / "embed").exists()  # no half-written folder for the next step to read
    proc = subprocess.run([str(BIN / "negset"), "tag"], cwd=project, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    embeddings = (project / "data" / "embed" / "embeddings.parquet").resolve()
    assert proc.stderr.splitlines()[-2:] == [
        f"negset: error: {embeddings}: missing; the 'embed' step has not run (or did not finish)",
        "  hint: run `negset embed` (or `dvc repro`) first",
    ]
    assert not (project / "data" / "tags").exists()


def test_a_failed_step_keeps_the_previous_folder_and_drops_its_staging(project):
    run_step("ingest", project / "params.yaml")
    before = snapshot(project / "data")
    write_params(project, ingest={"sources": [{"type": "local", "path": "examples/coco-sample/images"},
                                              {"type": "local", "path": "no-such-folder"}]})
    with pytest.raises(Exception, match="no-such-folder: source folder not found"):
        run_step("ingest", project / "params.yaml")
    assert changes(before, snapshot(project / "data")) == []
    assert not staging.staging_path(Layout.at(project), "ingest").exists()


def test_staging_starts_from_the_previous_outputs_as_links(tmp_path):
    """Persistent outputs (data/ingest, data/tags/centroids.parquet) are there for the step to build on."""
    layout = Layout.at(tmp_path)
    (layout.tags).mkdir(parents=True)
    atomic.write_text(layout.tags / "centroids.parquet", "previous fit")
    stage = staging.prepare(layout, "tag")
    assert (stage / "centroids.parquet").read_text() == "previous fit"
    assert (stage / "centroids.parquet").stat().st_ino == (layout.tags / "centroids.parquet").stat().st_ino
    staged = layout.staging("tags", stage)
    assert staged.tags == stage and staged.embed == layout.embed
    atomic.write_text(staged.tags / "centroids.parquet", "new fit")  # a new file renamed over the link
    assert (layout.tags / "centroids.parquet").read_text() == "previous fit"
    staging.commit(layout, "tag", stage)
    assert (layout.tags / "centroids.parquet").read_text() == "new fit" and not stage.exists()


def test_a_killed_ingest_staging_keeps_only_what_is_safe_to_reuse(tmp_path):
    layout = Layout.at(tmp_path)
    left = staging.staging_path(layout, "ingest")
    (left / "objects" / "ab").mkdir(parents=True)
    (left / "objects" / "ab" / "ab12").write_bytes(b"stored bytes")
    (left / "pins-journal.jsonl").write_text('{"uri": "s3://b/k"}\n')
    (left / "images.parquet").write_text("half written")
    stage = staging.prepare(layout, "ingest")
    assert sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()) == [
        "objects/ab/ab12", "pins-journal.jsonl"]


def test_swap_in_replaces_a_folder_whole_or_not_at_all(tmp_path):
    target, new = tmp_path / "out", tmp_path / "new"
    target.mkdir()
    (target / "a").write_text("old")
    new.mkdir()
    (new / "b").write_text("new")
    atomic.swap_in(new, target)
    assert [p.name for p in target.iterdir()] == ["b"] and not new.exists()
    # the two-rename fallback, interrupted between its renames, is put back by recover_dir
    os.replace(target, atomic.old_name(target))
    atomic.recover_dir(target)
    assert (target / "b").read_text() == "new" and not atomic.old_name(target).exists()


def test_the_step_summary_names_the_real_folder(built_project, tmp_path):
    from tests.conftest import copy_built

    root = copy_built(built_project, tmp_path / "proj")
    summary = run_step("report", root / "params.yaml")
    assert summary["report"] == "data/negatives/report.html"
    assert not any(".staging" in p for p in summary["plots"])
    assert (root / "data" / "negatives" / "manifest.parquet").is_file()  # export's files kept
