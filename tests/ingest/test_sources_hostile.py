"""Issue 18, cases 4 and 5 (sources): hidden files, symlinked files and decompression bombs are each
listed in rejected.parquet with a reason that names negset's own rule; nothing outside a source is read."""

from __future__ import annotations

import hashlib
import shutil

import pyarrow.parquet as pq

from negset.core.layout import Layout
from negset.pipeline import run_step
from tests.conftest import SAMPLE, write_params
from tests.support.badimages import png_with_declared_size

IMAGES = sorted((SAMPLE / "images").glob("*.jpg"))


def rejected(project) -> dict[str, dict]:
    return {r["uri"]: r for r in pq.read_table(project / "data" / "ingest" / "rejected.parquet").to_pylist()}


def uris(project) -> set[str]:
    return set(pq.read_table(project / "data" / "ingest" / "images.parquet").column("uri").to_pylist())


def test_hidden_files_and_folders_are_listed_as_rejected(project):
    pool = project / "pool"
    (pool / ".cache").mkdir(parents=True)
    shutil.copy(IMAGES[0], pool / "a.jpg")
    shutil.copy(IMAGES[1], pool / "..dots..jpg")
    shutil.copy(IMAGES[2], pool / ".cache" / "b.jpg")
    write_params(project, ingest={"sources": [{"type": "local", "path": "pool"}]})
    summary = run_step("ingest", project / "params.yaml")
    rows = rejected(project)
    assert rows["pool/..dots..jpg"]["rule"] == "hidden"
    assert rows["pool/..dots..jpg"]["reason"] == "hidden file (name starts with '.'): not read"
    assert rows["pool/.cache/"]["reason"] == "hidden folder (name starts with '.'): not read"
    assert "pool/.cache/b.jpg" not in rows and "pool/a.jpg" in uris(project)
    assert summary["rejected"] == 2
    stored = {p.name for p in Layout.at(project).objects.rglob("*") if p.is_file()}
    assert hashlib.sha256(IMAGES[1].read_bytes()).hexdigest() not in stored


def test_a_symlinked_file_pointing_outside_the_source_is_not_followed(project, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(IMAGES[3], outside / "private.jpg")  # a real image: before, its bytes were stored
    pool = project / "pool"
    pool.mkdir()
    shutil.copy(IMAGES[0], pool / "a.jpg")
    (pool / "link.jpg").symlink_to(outside / "private.jpg")
    write_params(project, ingest={"sources": [{"type": "local", "path": "pool"}]})
    run_step("ingest", project / "params.yaml")
    row = rejected(project)["pool/link.jpg"]
    assert row["rule"] == "symlink"
    assert row["reason"] == f"symbolic link (to {outside / 'private.jpg'}): not followed (local sources: follow_symlinks)"
    assert not any("private" in u for u in uris(project))
    stored = {p.name for p in Layout.at(project).objects.rglob("*") if p.is_file()}
    assert hashlib.sha256(IMAGES[3].read_bytes()).hexdigest() not in stored
    # the documented way to read linked files (DVC's symlink cache, a farm of links)
    write_params(project, ingest={"sources": [{"type": "local", "path": "pool", "follow_symlinks": True}]})
    run_step("ingest", project / "params.yaml")
    assert (outside / "private.jpg").resolve().as_uri() in uris(project)


def test_a_bomb_is_refused_naming_max_image_pixels(project):
    pool = project / "pool"
    pool.mkdir()
    shutil.copy(IMAGES[0], pool / "a.jpg")
    (pool / "huge.png").write_bytes(png_with_declared_size(20000, 20000))  # 400 Mpx: over PIL's own limit too
    (pool / "big.png").write_bytes(png_with_declared_size(10000, 9000))  # 90 Mpx: over negset's only
    write_params(project, ingest={"sources": [{"type": "local", "path": "pool"}]})
    run_step("ingest", project / "params.yaml")
    rows = rejected(project)
    # before: "decompression bomb: Image size (400000000 pixels) exceeds limit of 178956970 pixels ..."
    assert rows["pool/huge.png"]["reason"] == ("too large (a possible decompression bomb): 20000x20000 = 400,000,000 "
                                               "pixels is over ingest.max_image_pixels=89478485")
    assert rows["pool/big.png"]["reason"] == ("too large (a possible decompression bomb): 10000x9000 = 90,000,000 "
                                              "pixels is over ingest.max_image_pixels=89478485")
    assert "178956970" not in rows["pool/huge.png"]["reason"]
    # a limit raised above PIL's own is the one that applies
    write_params(project, ingest={"max_image_pixels": 500_000_000})
    run_step("ingest", project / "params.yaml")
    assert "pool/huge.png" in uris(project)  # (its missing pixel data is then embed's to reject)
