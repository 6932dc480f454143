"""S3 source against a real moto server on 127.0.0.1 (through a loopback proxy that can fail requests)."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from negset.core.config import load_params
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.export.step import image_name
from negset.ingest import step as ingest
from tests.conftest import write_params
from tests.support.s3server import default_faults, jpeg, md5, put_many, s3_client


def new_bucket(client, versioned: bool = False) -> str:
    name = f"negset-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    if versioned:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def s3_params(project: Path, bucket: str, endpoint: str, **extra) -> None:
    spec = {"type": "s3", "bucket": bucket, "prefixes": ["raw/"], "endpoint_url": endpoint,
            "region": "us-east-1", "addressing_style": "path", "workers": 8}
    spec.update(extra)
    write_params(project, ingest={"sources": [spec]})


def run_ingest(project: Path) -> tuple[dict, Layout]:
    layout = Layout.at(project)
    return ingest.run(load_params(project / "params.yaml"), layout), layout


def table(layout: Layout, name: str) -> list[dict]:
    return pq.read_table(layout.ingest / f"{name}.parquet").to_pylist()


def test_bucket_over_several_pages_only_images_land_each_pinned(project, aws_env, moto_server, proxy):
    client = s3_client(f"http://{moto_server[0]}:{moto_server[1]}")
    bucket = new_bucket(client)
    images = {}
    for i in range(1100):
        folder = ["raw/a", "raw/b/c", "raw/b/d/e", "raw/f"][i % 4]
        images[f"{folder}/img-{i:05d}.jpg"] = jpeg(i)
    others = {f"raw/meta/notes-{i}.txt": b"not an image" for i in range(20)}
    others.update({f"raw/b/labels-{i}.json": b"{}" for i in range(10)})
    fakes = {f"raw/a/fake-{i}.jpg": b"text pretending to be a JPEG" for i in range(3)}
    outside = {f"other/img-{i}.jpg": jpeg(5000 + i) for i in range(5)}  # not under the prefix
    put_many(client, bucket, {**images, **others, **fakes, **outside})
    s3_params(project, bucket, proxy.url)

    summary, layout = run_ingest(project)

    assert proxy.list_pages >= 2  # more than 1,000 keys: several pages
    assert summary["candidates"] == len(images)
    rows = {r["uri"]: r for r in table(layout, "images") if r["role"] == "candidate"}
    assert set(rows) == {f"s3://{bucket}/{k}" for k in images}
    pins = {r["uri"]: r for r in table(layout, "pins")}
    for key, data in images.items():
        uri = f"s3://{bucket}/{key}"
        pin, row = pins[uri], rows[uri]
        assert pin["status"] == "image" and pin["key"] == key
        assert pin["sha256"] == row["sha256"] == hashlib.sha256(data).hexdigest()
        assert pin["etag"] == row["version"] == md5(data)  # single-part upload: ETag is the MD5
        assert pin["size"] == len(data) and pin["last_modified"]
        assert layout.object_path(row["sha256"]).read_bytes() == data
    # filtered by suffix before any download; fakes downloaded and rejected by content
    gets = set(proxy.object_gets)
    assert not any(k.endswith((".txt", ".json")) or "/other/" in k for k in gets)
    assert len(gets) == len(images) + len(fakes)
    rejected = {r["uri"]: r for r in table(layout, "rejected")}
    assert set(rejected) == {f"s3://{bucket}/{k}" for k in fakes}
    assert all(r["rule"] == "not_image" for r in rejected.values())
    assert summary["fetch"]["downloaded"] == len(images) + len(fakes)


def test_refresh_downloads_only_new_objects_and_keeps_history(project, aws_env, moto_server, proxy):
    client = s3_client(f"http://{moto_server[0]}:{moto_server[1]}")
    bucket = new_bucket(client, versioned=True)
    first = {f"raw/{i % 3}/img-{i:04d}.jpg": jpeg(i) for i in range(40)}
    put = put_many(client, bucket, first)
    put_many(client, bucket, {"raw/readme.jpg": b"text named like an image"})  # rejected once, not refetched
    s3_params(project, bucket, proxy.url)
    summary, layout = run_ingest(project)
    assert proxy.gets_total() == 41 and summary["fetch"]["downloaded"] == 41
    pins = {r["key"]: r for r in table(layout, "pins")}
    for key in first:  # versioned bucket: the VersionId is pinned
        assert pins[key]["version_id"] == put[key]["VersionId"] != ""

    added = {f"raw/new/img-{i:04d}.jpg": jpeg(1000 + i) for i in range(10)}
    put_many(client, bucket, added)
    deleted = sorted(first)[:5]
    for key in deleted:
        client.delete_object(Bucket=bucket, Key=key)
    proxy.reset_counts()

    summary, layout = run_ingest(project)
    assert proxy.gets_total() == 10
    assert set(proxy.object_gets) == {f"/{bucket}/{k}" for k in added}
    assert summary["fetch"]["downloaded"] == 10 and summary["fetch"]["reused"] == 36
    assert [(r["uri"], r["rule"]) for r in table(layout, "rejected")] == [(f"s3://{bucket}/raw/readme.jpg", "not_image")]
    current = set(first) - set(deleted) | set(added)
    rows = table(layout, "images")
    assert {r["uri"] for r in rows if r["role"] == "candidate"} == {f"s3://{bucket}/{k}" for k in current}
    history = table(layout, "history")
    assert sorted((h["event"], h["key"]) for h in history) == [("deleted", k) for k in deleted]
    # the deleted objects' bytes left the store; the others are all there
    stored = {p.name for p in layout.objects.rglob("*") if p.is_file()}
    assert stored == {r["sha256"] for r in rows}
    assert not any(hashlib.sha256(first[k]).hexdigest() in stored for k in deleted)

    # a changed object (same key, new bytes) is downloaded again and its old version goes to history
    changed = sorted(current)[0]
    client.put_object(Bucket=bucket, Key=changed, Body=jpeg(9999))
    proxy.reset_counts()
    summary, layout = run_ingest(project)
    assert proxy.gets_total() == 1 and set(proxy.object_gets) == {f"/{bucket}/{changed}"}
    history = table(layout, "history")
    assert [(h["event"], h["key"]) for h in history[5:]] == [("replaced", changed)]
    assert history[5]["sha256"] == hashlib.sha256((first | added)[changed]).hexdigest()


def test_faults_are_retried_and_a_forbidden_key_is_reported(project, aws_env, moto_server, proxy, caplog):
    client = s3_client(f"http://{moto_server[0]}:{moto_server[1]}")
    bucket = new_bucket(client)
    images = {f"raw/{i % 5}/img-{i:04d}.jpg": jpeg(i) for i in range(300)}
    put_many(client, bucket, images)
    forbidden = "raw/2/img-0007.jpg"

    def rule(method, path, attempt):
        if path == f"/{bucket}/{forbidden}":
            return "403"
        return default_faults(method, path, attempt)

    proxy.rule = rule
    s3_params(project, bucket, proxy.url, max_attempts=6)
    with caplog.at_level(logging.INFO, logger="negset"):
        summary, layout = run_ingest(project)

    # every kind of fault happened and was retried
    assert {"503", "500", "reset", "truncate", "403"} <= set(proxy.faults)
    rows = {r["uri"] for r in table(layout, "images") if r["role"] == "candidate"}
    assert rows == {f"s3://{bucket}/{k}" for k in images if k != forbidden}
    rejected = table(layout, "rejected")
    assert [(r["uri"], r["rule"]) for r in rejected] == [(f"s3://{bucket}/{forbidden}", "access_denied")]
    assert "AccessDenied" in rejected[0]["reason"]
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    assert summary["fetch"]["retries"] == len(retries) > 0
    joined = "\n".join(retries)
    assert "SlowDown (HTTP 503)" in joined and "InternalError (HTTP 500)" in joined
    assert any(w in joined for w in ("Connection", "Reset", "reset"))  # the resets
    # the forbidden key was asked once (403 is not retried); credentials never reach the log
    assert proxy.attempts[("GET", f"/{bucket}/{forbidden}")] == 1
    assert "testing-secret-never-logged" not in caplog.text


def test_keys_with_dot_segments_cannot_write_outside_data(project, aws_env, moto_server, proxy):
    client = s3_client(f"http://{moto_server[0]}:{moto_server[1]}")
    bucket = new_bucket(client)
    evil = ["raw/../../../escape.jpg", "raw/../../../../tmp/negset-evil.jpg", "raw//abs/evil.jpg",
            "raw/a/../../x.jpg", "raw/..", "raw/../..\\..\\win.jpg", "/abs/evil.jpg", "/../../abs2.jpg"]
    put_many(client, bucket, {k: jpeg(100 + i) for i, k in enumerate(evil)})
    listed = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert listed == sorted(evil)  # the store kept the keys as they are
    s3_params(project, bucket, proxy.url, suffixes=[], prefixes=["raw/", "/"])
    outside = project.parent
    before = {p for p in outside.rglob("*") if "data" not in p.relative_to(project.parent).parts[1:2]}

    summary, layout = run_ingest(project)

    after = {p for p in outside.rglob("*") if "data" not in p.relative_to(project.parent).parts[1:2]}
    assert after == before  # nothing new outside <project>/data
    assert not Path("/tmp/negset-evil.jpg").exists() and not Path("/abs/evil.jpg").exists()
    rows = [r for r in table(layout, "images") if r["role"] == "candidate"]
    assert sorted(r["uri"] for r in rows) == sorted(f"s3://{bucket}/{k}" for k in evil)
    data = layout.data.resolve()
    for r in rows:
        assert layout.object_path(r["sha256"]).resolve().is_relative_to(data)
        name = image_name(r["uri"], r["sha256"])  # the exported file name
        assert "/" not in name and name not in (".", "..")
        assert (layout.negatives / "images" / name).resolve().is_relative_to(data)


def test_missing_credentials_and_bucket_are_clear_errors(project, aws_env, moto_server, proxy, monkeypatch):
    client = s3_client(f"http://{moto_server[0]}:{moto_server[1]}")
    s3_params(project, "negset-no-such-bucket", proxy.url)
    with pytest.raises(NegsetError, match="negset-no-such-bucket/raw/: listing failed: NoSuchBucket"):
        run_ingest(project)
    bucket = new_bucket(client)
    s3_params(project, bucket, proxy.url)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(NegsetError, match="no AWS credentials found"):
        run_ingest(project)


def test_s3_positives_default_to_their_prefixes(project, aws_env, moto_server, proxy):
    client = s3_client(f"http://{moto_server[0]}:{moto_server[1]}")
    bucket = new_bucket(client)
    objects = {f"site-a/cam1/pos-{i}.jpg": jpeg(i) for i in range(5)}
    objects |= {f"site-a/cam1/neg-{i}.jpg": jpeg(100 + i) for i in range(10)}
    objects |= {f"site-a/cam2/x-{i}.jpg": jpeg(200 + i) for i in range(8)}
    objects |= {f"site-b/y-{i}.jpg": jpeg(300 + i) for i in range(6)}
    put_many(client, bucket, objects)
    positives = sorted(k for k in objects if "/pos-" in k)
    (project / "positives.txt").write_text("".join(f"s3://{bucket}/{k}\n" for k in positives))
    connection = {"endpoint_url": proxy.url, "region": "us-east-1", "addressing_style": "path"}
    write_params(project, ingest={"positives": {"format": "list", "path": "positives.txt"}, "sources": [],
                                  "s3": connection})

    def roles(layout):
        rows = table(layout, "images")
        return ({r["uri"].split("/", 3)[3] for r in rows if r["role"] == "positive"},
                {r["uri"].split("/", 3)[3] for r in rows if r["role"] == "candidate"})

    summary, layout = run_ingest(project)
    assert summary["sources"] == [f"s3://{bucket}/site-a/cam1/"]
    assert roles(layout) == (set(positives), {k for k in objects if "/neg-" in k})
    assert not any("/cam2/" in k for k in proxy.object_gets)  # depth 0: not the neighbouring prefix

    write_params(project, ingest={"source_depth": 1})
    summary, layout = run_ingest(project)
    assert summary["sources"] == [f"s3://{bucket}/site-a/"]
    assert roles(layout)[1] == {k for k in objects if k.startswith("site-a/") and "/pos-" not in k}

    # explicit sources that do not hold the positives: the positives are still read (by key), as positives
    write_params(project, ingest={"sources": [dict(connection, type="s3", bucket=bucket, prefixes=["site-b/"])]})
    summary, layout = run_ingest(project)
    assert roles(layout) == (set(positives), {k for k in objects if k.startswith("site-b/")})


@pytest.mark.slow
def test_dvc_refresh_of_an_s3_source_downloads_only_the_new_objects(dvc_project, aws_env, moto_server, proxy,
                                                                    monkeypatch):
    """data/ingest is a persistent DVC output: `dvc repro -f -s ingest` keeps the stored objects."""
    from tests.conftest import BIN, run

    monkeypatch.setenv("NEGSET_NO_PREFECT", "1")
    root = dvc_project
    client = s3_client(f"http://{moto_server[0]}:{moto_server[1]}")
    bucket = new_bucket(client)
    put_many(client, bucket, {f"raw/img-{i:03d}.jpg": jpeg(i) for i in range(30)})
    s3_params(root, bucket, proxy.url)
    run([str(BIN / "dvc"), "repro", "-s", "ingest"], root)
    assert proxy.gets_total() == 30
    run([str(BIN / "dvc"), "status", "ingest"], root)

    put_many(client, bucket, {f"raw/new-{i:03d}.jpg": jpeg(500 + i) for i in range(10)})
    client.delete_object(Bucket=bucket, Key="raw/img-000.jpg")
    proxy.reset_counts()
    run([str(BIN / "dvc"), "repro", "-f", "-s", "ingest"], root)
    assert proxy.gets_total() == 10
    rows = pq.read_table(root / "data" / "ingest" / "images.parquet").to_pylist()
    assert sum(r["role"] == "candidate" for r in rows) == 39
    history = pq.read_table(root / "data" / "ingest" / "history.parquet").to_pylist()
    assert [(h["event"], h["key"]) for h in history] == [("deleted", "raw/img-000.jpg")]
    # the lock pins the refreshed output; nothing is left to reproduce for ingest
    assert "data/ingest" in (root / "dvc.lock").read_text()
    assert json.loads(run([str(BIN / "dvc"), "status", "ingest", "--json"], root).stdout) == {}
