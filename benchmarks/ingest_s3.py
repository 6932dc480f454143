"""Benchmark: negset's S3 ingest against a plain sequential boto3 loop, same bucket, same run.

    python benchmarks/ingest_s3.py [--objects 2500] [--workers 16] [--latency-ms 0 10]

Starts a moto server (a separate process, on 127.0.0.1) and fills a bucket
with small distinct JPEGs, then for each latency (0 = raw loopback; >0 = a
loopback proxy that delays every request, like a remote region) measures:

- baseline: list_objects_v2 pages + get_object + read, one object at a time;
- negset fetch: the S3 source alone (list + concurrent downloads);
- negset ingest: the whole step (download, sha256, probe, store, manifests).

and prints objects/s, MB/s and the ratio to the baseline. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto server did not start")


def baseline(endpoint: str, bucket: str) -> tuple[int, int]:
    from tests.support.s3server import s3_client

    client = s3_client(endpoint)
    n = total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="raw/"):
        for item in page.get("Contents", ()):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
            total += len(body.read())
            n += 1
    return n, total


def spec_for(endpoint: str, bucket: str, workers: int) -> dict:
    return {"type": "s3", "bucket": bucket, "prefixes": ["raw/"], "endpoint_url": endpoint,
            "region": "us-east-1", "addressing_style": "path", "workers": workers}


def negset_fetch(endpoint: str, bucket: str, workers: int) -> tuple[int, int]:
    from negset.core.config import S3Source as Spec
    from negset.ingest.sources import fetch
    from negset.ingest.sources.s3 import S3Source

    src = S3Source(Spec(**spec_for(endpoint, bucket, workers)))
    n = total = 0
    for _obj, data, error in fetch(src.list(), src.workers):
        assert error is None, error
        n += 1
        total += len(data)
    return n, total


def negset_ingest(endpoint: str, bucket: str, workers: int) -> tuple[int, int]:
    import yaml

    from negset.core.config import load_params
    from negset.core.layout import Layout
    from negset.ingest import step as ingest

    with tempfile.TemporaryDirectory(prefix="negset-bench-") as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        sample = REPO / "examples" / "coco-sample"
        params["ingest"]["positives"].update(path=str(sample / "annotations" / "instances.json"),
                                             images=str(sample / "images"))
        params["ingest"]["sources"] = [spec_for(endpoint, bucket, workers)]
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        start = time.perf_counter()
        summary = ingest.run(load_params(root / "params.yaml"), Layout.at(root))
        secs = time.perf_counter() - start  # without the clean-up of the temporary folder
        return summary["candidates"], summary["fetch"]["bytes"], secs


def timed(fn, *args) -> tuple[int, int, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out if len(out) == 3 else (*out, time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=2500)
    ap.add_argument("--size", type=int, default=64, help="JPEG side in pixels")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 10.0])
    args = ap.parse_args()

    for name, value in dict(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                            AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true").items():
        os.environ[name] = value
    os.environ.pop("AWS_PROFILE", None)

    from tests.support.s3server import FaultProxy, jpeg, put_many, s3_client

    proc, port = start_moto()
    try:
        direct = f"http://127.0.0.1:{port}"
        client = s3_client(direct)
        bucket = "negset-bench"
        client.create_bucket(Bucket=bucket)
        objects = {f"raw/{i % 7}/{i % 13}/img-{i:05d}.jpg": jpeg(i, args.size) for i in range(args.objects)}
        put_many(client, bucket, objects, workers=16)
        mb = sum(map(len, objects.values())) / 1e6
        print(f"{len(objects)} objects, {mb:.1f} MB ({args.size}x{args.size} JPEGs), moto server on 127.0.0.1, "
              f"{os.cpu_count()} CPUs, negset workers={args.workers}")
        for latency in args.latency_ms:
            proxy = FaultProxy(("127.0.0.1", port), delay_s=latency / 1000).start() if latency else None
            endpoint = proxy.url if proxy else direct
            try:
                print(f"\nlatency {latency:g} ms per request" + (" (loopback proxy)" if latency else " (direct)"))
                results = {}
                for label, fn in (("sequential boto3 loop", baseline), ("negset S3 fetch", negset_fetch),
                                  ("negset ingest step", negset_ingest)):
                    args_ = (endpoint, bucket) if fn is baseline else (endpoint, bucket, args.workers)
                    n, nbytes, secs = timed(fn, *args_)
                    assert n == len(objects), (label, n)
                    results[label] = secs
                    ratio = results["sequential boto3 loop"] / secs
                    print(f"  {label:24s} {n / secs:8.1f} objects/s {nbytes / 1e6 / secs:7.2f} MB/s "
                          f"{secs:7.2f} s   x{ratio:.2f} vs sequential")
            finally:
                if proxy:
                    proxy.stop()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
