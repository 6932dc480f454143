"""Ingest: images detected by content, stored once by sha256, pinned, rejects explained."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from negset.core import atomic
from negset.core.config import load_params
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.ingest import step as ingest
from tests.conftest import SAMPLE, write_params


def build_source(root):
    src = root / "pool"
    (src / "nested" / "deeper").mkdir(parents=True)
    imgs = sorted((SAMPLE / "images").glob("*.jpg"))
    shutil.copy(imgs[0], src / "a.jpg")
    shutil.copy(imgs[1], src / "nested" / "photo.dat")  # a JPEG with a strange name
    shutil.copy(imgs[2], src / "nested" / "deeper" / "noext")
    shutil.copy(imgs[0], src / "nested" / "copy-of-a.jpeg")  # same bytes as a.jpg
    (src / "notes.jpg").write_text("this is text, not a JPEG")
    (src / "empty.png").write_bytes(b"")
    return src, imgs


def test_ingest_detects_by_content_and_stores_once(project):
    src, imgs = build_source(project)
    write_params(project, ingest={"sources": [{"type": "local", "path": "pool"}]})
    layout = Layout.at(project)
    summary = ingest.run(load_params(project / "params.yaml"), layout)

    table = pq.read_table(layout.ingest / "images.parquet").to_pylist()
    by_uri = {r["uri"]: r for r in table}
    assert "pool/nested/photo.dat" in by_uri and "pool/nested/deeper/noext" in by_uri
    assert by_uri["pool/a.jpg"]["copies"] == 2
    assert "pool/nested/copy-of-a.jpeg" not in by_uri
    for row in table:
        stored = layout.object_path(row["sha256"])
        assert atomic.sha256_file(stored) == row["sha256"]
        assert row["width"] > 0 and row["height"] > 0 and row["format"] == "JPEG"
    rejected = {r["uri"]: r for r in pq.read_table(layout.ingest / "rejected.parquet").to_pylist()}
    assert rejected["pool/notes.jpg"]["reason"].startswith("not an image")
    assert rejected["pool/empty.png"]["reason"] == "empty file"
    # the positives (outside the pool) are ingested too, as positives
    assert summary["positives"] == 16
    assert summary["candidates"] == 3
    assert sum(r["role"] == "positive" for r in table) == 16


def test_default_source_is_the_positives_folder(project):
    layout = Layout.at(project)
    summary = ingest.run(load_params(project / "params.yaml"), layout)
    assert summary["sources"] == ["examples/coco-sample/images"]
    assert (summary["positives"], summary["candidates"]) == (16, 17)
    rows = pq.read_table(layout.ingest / "images.parquet").to_pylist()
    assert not any(r["has_target"] for r in rows if r["role"] == "candidate")
    assert all(r["has_target"] for r in rows if r["role"] == "positive")


def test_too_large_images_are_refused(project):
    write_params(project, ingest={"max_image_pixels": 300_000})
    layout = Layout.at(project)
    ingest.run(load_params(project / "params.yaml"), layout)
    rejected = pq.read_table(layout.ingest / "rejected.parquet").to_pylist()
    assert rejected and all("max_image_pixels=300000" in r["reason"] for r in rejected)


def test_empty_source_is_a_clear_error(project):
    (project / "empty").mkdir()
    write_params(project, ingest={"sources": [{"type": "local", "path": "empty"}]})
    with pytest.raises(NegsetError, match="ingest.sources: no candidate images found in empty"):
        ingest.run(load_params(project / "params.yaml"), Layout.at(project))


def test_local_listing_names_files_as_resolving_each_path_would(project, tmp_path):
    """The per-folder resolve gives every file the uri and path a per-file resolve gives."""
    from negset.ingest.sources.local import LocalSource

    src, imgs = build_source(project)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(imgs[3], outside / "far.jpg")
    (src / "link-in.jpg").symlink_to(src / "nested" / "photo.dat")  # a link to a file in the source
    (src / "link-out.jpg").symlink_to(outside / "far.jpg")  # a link to a file outside the project
    (src / "broken.jpg").symlink_to(src / "gone.jpg")  # skipped
    (src / "dir-link").symlink_to(outside, target_is_directory=True)  # not followed
    via = project / "via"
    via.symlink_to(src, target_is_directory=True)  # the source named through a linked folder
    layout = Layout.at(project)
    listed = list(LocalSource(via, layout=layout, follow_symlinks=True).list())  # (links followed: not the default)
    objs = [o for o in listed if o.local_path is not None]
    refused = sorted(o.uri.rsplit("/", 2)[-2] if o.uri.endswith("/") else o.uri.rsplit("/", 1)[-1]
                     for o in listed if o.local_path is None)
    assert refused == ["broken.jpg", "dir-link"]  # listed (as rejected by ingest), never read
    names = [o.local_path.name for o in objs]
    assert "gone.jpg" not in names and "far.jpg" in names and len(objs) == 8
    for o in objs:
        assert o.local_path.resolve() == o.local_path and o.local_path.is_file()
        assert o.size == o.local_path.stat().st_size
        rel = o.local_path.relative_to(project.resolve()).as_posix() if o.local_path.is_relative_to(project.resolve()) else None
        assert o.uri == (rel if rel is not None else o.local_path.as_uri())
    by_name = {o.uri: o for o in objs}
    assert "pool/nested/photo.dat" in by_name and "pool/a.jpg" in by_name
    assert by_name["pool/nested/photo.dat"].local_path == (src / "nested" / "photo.dat").resolve()
    assert (outside / "far.jpg").resolve().as_uri() in by_name


def test_the_summary_says_where_the_pool_came_from_and_what_the_sources_leave_out(project):
    src, imgs = build_source(project)
    layout = Layout.at(project)
    own = ingest.run(load_params(project / "params.yaml"), layout)  # default: the positives' folder
    assert own["candidates_per_source"] == {"examples/coco-sample/images": 17}
    assert own["positive_folders_left_out"] == []

    write_params(project, ingest={"sources": [{"type": "local", "path": "pool"}]})
    listed = ingest.run(load_params(project / "params.yaml"), layout)
    assert listed["candidates_per_source"] == {"pool": listed["candidates"]}
    assert listed["positive_folders_left_out"] == ["examples/coco-sample/images"]
    assert atomic_json(layout.ingest / "summary.json")["positive_folders_left_out"] == ["examples/coco-sample/images"]

    write_params(project, ingest={"sources": [{"type": "local", "path": "pool"}], "include_positive_folders": True})
    both = ingest.run(load_params(project / "params.yaml"), layout)
    per_source = both["candidates_per_source"]
    assert list(per_source) == ["pool", "examples/coco-sample/images"] and both["positive_folders_left_out"] == []
    # the pool's images are copies of sample photos: each distinct image counts once, for the source listed first
    assert per_source["pool"] == listed["candidates"] and sum(per_source.values()) == both["candidates"] == 17

    # a listed source that walks the positives' folder leaves nothing out
    write_params(project, ingest={"sources": [{"type": "local", "path": "examples"}], "include_positive_folders": False})
    walked = ingest.run(load_params(project / "params.yaml"), layout)
    assert walked["positive_folders_left_out"] == [] and walked["candidates_per_source"] == {"examples": 17}


def atomic_json(path):
    import json

    return json.loads(path.read_text())
