"""Credentials never leak: not in logs, manifests, reports, parameters or any file negset writes."""

from __future__ import annotations

import os
import subprocess
import uuid

import yaml

from tests.conftest import BIN, write_params
from tests.support.s3server import default_faults, jpeg, put_many, s3_client

KEY_ID = "AKIANEGSETLEAKCHECK7"
SECRET = "negset/leak-check+secret-" + "x" * 16


def test_a_build_from_s3_leaves_no_credentials_anywhere(project, aws_env, moto_server, proxy, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    client = s3_client(f"http://{moto_server[0]}:{moto_server[1]}")
    bucket = f"negset-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    objects = {f"cam/pos-{i}.jpg": jpeg(i, 48) for i in range(6)}
    objects |= {f"cam/neg-{i}.jpg": jpeg(100 + i, 48) for i in range(12)}
    objects["cam/readme.txt"] = b"not an image"
    put_many(client, bucket, objects)
    (project / "positives.txt").write_text("".join(f"s3://{bucket}/{k}\n" for k in objects if "/pos-" in k))
    # the proxy fails a share of requests: retries get logged, with the request details they carry
    proxy.rule = default_faults
    write_params(
        project,
        ingest={"positives": {"format": "list", "path": "positives.txt"}, "sources": [],
                "s3": {"endpoint_url": proxy.url, "region": "us-east-1", "addressing_style": "path"}},
        select={"count": 4},
    )
    env = dict(os.environ, NEGSET_NO_PREFECT="0")
    proc = subprocess.run([str(BIN / "negset"), "build"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (project / "data" / "negatives" / "manifest.parquet").is_file()
    logs = proc.stdout + proc.stderr
    assert "Flow run" in logs  # the build ran through Prefect, whose logs are searched too
    assert sum(proxy.faults.values()) > 0 and "retry" in logs.lower()  # failures happened and were logged
    for secret in (KEY_ID, SECRET):
        assert secret not in logs
        for path in project.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert secret.encode() not in data, f"{secret[:6]}... found in {path}"
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert "secret" not in str(params).lower()


def test_credentials_in_params_are_refused_without_echoing_them(project):
    write_params(project, ingest={"sources": [{"type": "s3", "bucket": "b", "aws_secret_access_key": SECRET}]})
    proc = subprocess.run([str(BIN / "negset"), "check"], cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert SECRET not in proc.stderr + proc.stdout
    assert "aws_secret_access_key" in proc.stderr
