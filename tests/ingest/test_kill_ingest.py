"""SIGKILL during an S3 ingest: the next run downloads only what was not stored yet; nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pyarrow.parquet as pq

from tests.conftest import BIN, write_params
from tests.support.s3server import jpeg, put_many, s3_client


def test_killed_ingest_resumes_without_downloading_again(project, aws_env, moto_server, proxy):
    client = s3_client(f"http://{moto_server[0]}:{moto_server[1]}")
    bucket = f"negset-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    total = 240
    put_many(client, bucket, {f"raw/img-{i:04d}.jpg": jpeg(i, 24) for i in range(total)})
    proxy.delay_s = 0.03  # a remote store's latency: the ingest takes a few seconds
    write_params(project, ingest={"sources": [
        {"type": "local", "path": "examples/coco-sample/images"},
        {"type": "s3", "bucket": bucket, "prefixes": ["raw/"], "endpoint_url": proxy.url, "region": "us-east-1",
         "addressing_style": "path", "workers": 4},
    ]})
    # the run writes into its staging folder (negset/core/staging.py); a killed run's objects and journal are kept there
    journal = project / "data" / ".ingest.staging" / "pins-journal.jsonl"
    env = dict(os.environ, NEGSET_NO_PREFECT="1")
    proc = subprocess.Popen([str(BIN / "negset"), "ingest"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < 60):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stored_before = {json.loads(l)["uri"] for l in journal.read_text().splitlines() if l.endswith("}")}
    assert 60 <= len(stored_before) < total, "the ingest should have been killed half-way"
    assert not (project / "data" / "ingest" / "pins.parquet").exists()

    gets_before = dict(proxy.object_gets)
    done = subprocess.run([str(BIN / "negset"), "--json", "ingest"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["fetch"]["reused"] >= len(stored_before)
    assert summary["fetch"]["downloaded"] + summary["fetch"]["reused"] == total
    # the objects stored before the kill were not fetched again
    again = {k for k, n in proxy.object_gets.items() if n > gets_before.get(k, 0)}
    assert len(again) == summary["fetch"]["downloaded"] > 0
    assert not {u.split("/", 3)[3] for u in stored_before} & {k.split("/", 2)[2] for k in again}
    images = pq.read_table(project / "data" / "ingest" / "images.parquet").to_pylist()
    assert sum(r["uri"].startswith(f"s3://{bucket}/") for r in images) == total  # nothing lost
    assert not journal.exists() and not (project / "data" / "ingest" / "pins-journal.jsonl").exists()
    assert not journal.parent.exists()  # swapped in whole
