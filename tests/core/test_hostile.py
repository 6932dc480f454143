"""Hostile input and faults: broken images, killed runs, concurrent runs, escapes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from negset.core import atomic
from negset.core.config import Embed
from negset.core.imageio import probe
from negset.core.layout import Layout
from negset.embed.model import load_embedder
from negset.embed.store import read_embeddings
from negset.pipeline import STEPS, run_step
from tests.support.badimages import PHOTO, exif_rotated_jpeg, make_corpus, upright_photo
from tests.conftest import BIN, SAMPLE, write_params


def test_every_bad_image_is_embedded_or_rejected_and_the_build_completes(project):
    expected = make_corpus(project / "bad")
    write_params(
        project,
        ingest={"sources": [{"type": "local", "path": "examples/coco-sample/images"}, {"type": "local", "path": "bad"}]},
        select={"count": 30},
    )
    for step in STEPS:
        run_step(step, project / "params.yaml")
    layout = Layout.at(project)
    images = {r["uri"]: r for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}
    embedded = set(pq.read_table(layout.embed / "embeddings.parquet").column("sha256").to_pylist())
    rejected = {}
    for step in ("ingest", "embed"):
        for r in pq.read_table(getattr(layout, step) / "rejected.parquet").to_pylist():
            rejected[r["uri"]] = (step, r["reason"])
    for name, outcome in expected.items():
        uri = f"bad/{name}"
        if outcome == "embedded":
            assert images[uri]["sha256"] in embedded, name
            assert uri not in rejected
        else:
            step = outcome.split(":")[1]
            assert rejected[uri][0] == step, (name, rejected.get(uri))
            assert rejected[uri][1], name  # a reason is given
    # its header declares 60000 x 60000: refused from the header by ingest.max_image_pixels, its pixels
    # never decoded (the message names negset's limit, not Pillow's)
    assert rejected["bad/bomb.png"][1] == (
        "too large (a possible decompression bomb): 60000x60000 = 3,600,000,000 pixels "
        "is over ingest.max_image_pixels=89478485")
    assert rejected["bad/zero-bytes.jpg"][1] == "empty file"
    # the build finished: the manifest lists only decodable images
    manifest = pq.read_table(layout.negatives / "manifest.parquet").to_pylist()
    assert manifest and all(r["sha256"] in embedded for r in manifest)


def test_exif_rotated_photo_is_embedded_and_tagged_upright(tmp_path):
    info = probe(exif_rotated_jpeg(), 10**9)
    upright = upright_photo()
    assert (info.width, info.height) == upright.size  # reported upright, not as stored
    path = tmp_path / "rotated.jpg"
    path.write_bytes(exif_rotated_jpeg())
    emb = load_embedder(Embed())
    feats, _ = emb(np.stack([emb.load(path), emb.load(PHOTO)]))
    assert float(feats[0] @ feats[1]) > 0.97
    upright.rotate(90, expand=True).save(tmp_path / "sideways.jpg")
    feats2, _ = emb(np.stack([emb.load(tmp_path / "sideways.jpg"), emb.load(PHOTO)]))
    assert float(feats2[0] @ feats2[1]) < float(feats[0] @ feats[1])  # without EXIF it would differ


def test_killed_embed_resumes_without_re_embedding(project):
    write_params(project, embed={"batch_size": 2, "checkpoint_every": 2, "threads": 1})
    run_step("ingest", project / "params.yaml")
    cache = project / "data" / "cache" / "embed"
    env = dict(os.environ, NEGSET_NO_PREFECT="1")
    proc = subprocess.Popen([str(BIN / "negset"), "embed"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(cache.glob("*/part-*.npz"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    parts = list(cache.glob("*/part-*.npz"))
    assert len(parts) >= 3, "the embed step should have checkpointed before it was killed"
    done_before = sum(len(np.load(p)["keys"]) for p in parts)
    assert 0 < done_before < 33
    assert not (project / "data" / "embed" / "embeddings.parquet").exists()  # never half-written
    summary = run_step("embed", project / "params.yaml")
    assert summary["images"] == 33
    assert summary["embedded_now"] == 33 - done_before
    # the resumed vectors equal a clean run's
    shas, vectors = read_embeddings(Layout.at(project))
    emb = load_embedder(Embed())
    layout = Layout.at(project)
    fresh, _ = emb(np.stack([emb.load(layout.object_path(s)) for s in shas[:4]]))
    assert np.allclose(fresh, vectors[:4], atol=1e-4)


def test_second_run_on_the_same_project_refuses_clearly(project):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from negset.core.lock import project_lock\n"
         "with project_lock(sys.argv[1], 'negset build'):\n    print('held', flush=True); time.sleep(60)",
         str(project / "data")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([str(BIN / "negset"), "--no-prefect", "ingest"], cwd=project, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert "another negset run is working on this project" in proc.stderr
        assert f"pid {holder.pid}" in proc.stderr and "Traceback" not in proc.stderr
        assert not (project / "data" / "ingest").exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its holder: the next run goes through
    proc = subprocess.run([str(BIN / "negset"), "--no-prefect", "ingest"], cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_failed_export_leaves_the_previous_output_intact(tmp_path):
    target = tmp_path / "negatives"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "manifest.csv").write_text("v1\n")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "manifest.csv").write_text("half")
            raise RuntimeError("killed mid-export")
    assert (target / "manifest.csv").read_text() == "v1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["negatives"]  # no temporary folder left behind


def test_symlinks_in_a_source_cannot_escape(project, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not an image")
    pool = project / "pool"
    pool.mkdir()
    (pool / "a.jpg").write_bytes((SAMPLE / "images" / "000000000030.jpg").read_bytes())  # no person in it
    (pool / "link-to-dir").symlink_to(outside, target_is_directory=True)
    (pool / "link-to-file.jpg").symlink_to(outside / "secret.txt")
    (pool / "loop").symlink_to(pool, target_is_directory=True)
    write_params(project, ingest={"sources": [{"type": "local", "path": "pool"}]})
    before = sorted(p.name for p in outside.iterdir())
    run_step("ingest", project / "params.yaml")
    layout = Layout.at(project)
    uris = set(pq.read_table(layout.ingest / "images.parquet").column("uri").to_pylist())
    assert "pool/a.jpg" in uris and not any("link-to-dir" in u or "loop" in u for u in uris)
    assert sorted(p.name for p in outside.iterdir()) == before  # nothing written outside data/
    stored = [p for p in layout.objects.rglob("*") if p.is_file()]
    assert stored and all(p.resolve().is_relative_to(layout.data) for p in stored)


def test_yaml_is_loaded_safely(project):
    (project / "params.yaml").write_text("ingest: !!python/object/apply:os.system ['touch pwned']\n")
    proc = subprocess.run([str(BIN / "negset"), "check"], cwd=project, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
    assert not (project / "pwned").exists()
