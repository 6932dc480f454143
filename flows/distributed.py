"""The embed and detect steps on a Dask cluster (prefect-dask's DaskTaskRunner), for pools that outgrow one machine.

The images still to embed (or to detect on, per ONNX detector source) are
split into shards; each shard is a Prefect task that a Dask worker runs,
writing its results into the shared cache (``data/cache/embed/<model hash>/``,
``data/cache/detect/<model hash>/``, parts named by content). The driver then
assembles ``data/embed/`` (``data/detect/``) exactly as the local path does,
so the outputs are the same. Workers must see the project folder (a shared
filesystem).

Set ``embed.dask_workers: N`` for a local cluster of N processes, or
``embed.dask_address: tcp://HOST:8786`` for an existing one; `negset embed`
and `negset detect` (and so `dvc repro`) then run these flows. Detect reuses
embed's cluster settings: the cluster is the project's (the machines that see
its folder), not a step's, and detect's outputs do not depend on it, so the
detect stage need not track it.
"""

from __future__ import annotations

import os
import socket

from prefect import flow, task, unmapped
from prefect_dask import DaskTaskRunner

from negset.core import staging
from negset.core.config import load_params
from negset.core.layout import Layout
from negset.detect import step as detect
from negset.embed import step as embed
from negset.pipeline import unstaged


@task(name="embed-shard", retries=1, retry_delay_seconds=5)
def embed_shard(params_path: str, root: str, shas: list[str], threads: int) -> dict:
    params = load_params(params_path)
    params = params.model_copy(update={"embed": params.embed.model_copy(update={"threads": threads})})
    rejected = embed.embed_shard(params, Layout.at(root), shas)
    return dict(worker=f"{socket.gethostname()}:{os.getpid()}", images=len(shas), rejected=rejected)


@task(name="detect-shard", retries=1, retry_delay_seconds=5)
def detect_shard(params_path: str, root: str, label: str, shas: list[str], threads: int) -> dict:
    params = load_params(params_path)
    sources = [s.model_copy(update={"threads": threads}) if s.model else s for s in params.detect.sources]
    params = params.model_copy(update={"detect": params.detect.model_copy(update={"sources": sources})})
    rejected = detect.detect_shard(params, Layout.at(root), label, shas)
    return dict(worker=f"{socket.gethostname()}:{os.getpid()}", images=len(shas), rejected=rejected)


def _runner(workers: int, address: str | None) -> DaskTaskRunner:
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs=dict(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    )


def _cluster(params) -> tuple[int, int]:
    """(workers, ONNX Runtime / torch threads per worker) from embed.dask_workers / dask_address."""
    workers = params.embed.dask_workers or 2
    threads = max(1, (os.cpu_count() or 1) // workers) if not params.embed.dask_address else params.embed.threads
    return workers, threads


def _share_out(name: str, params_path: str, root: str, step_run, submit) -> dict:
    """Run step ``name`` (``step_run(params, layout, compute=...)``) with its new work shared out to Dask workers.

    ``submit(*lead, shards, threads)`` maps the step's shard task over the shards; the step calls
    ``compute(*lead, sha256s)`` and gets back the rows the workers rejected. ``data/NAME/`` is replaced whole,
    as by run_step."""
    params = load_params(params_path)
    workers, threads = _cluster(params)

    @flow(name=f"negset-{name}-distributed", task_runner=_runner(workers, params.embed.dask_address), log_prints=True)
    def run() -> dict:
        used: set[str] = set()

        def compute(*lead_and_shas) -> list[dict]:
            *lead, shas = lead_and_shas
            n = min(len(shas), workers * 4)
            shards = [shas[i::n] for i in range(n)]
            results = [f.result() for f in submit(*lead, shards, threads)]
            used.update(r["worker"] for r in results)
            return [row for r in results for row in r["rejected"]]

        layout = Layout.at(root)
        with staging.staged(layout, name) as staged:
            summary = step_run(params, staged, compute=compute)
        summary = unstaged(summary, staging.staging_path(layout, name), layout, name)
        return dict(summary, workers=sorted(used))

    return run()


def embed_distributed(params_path: str, root: str) -> dict:
    """Run the embed step with its new work shared out to Dask workers; return its summary."""
    return _share_out("embed", params_path, root, embed.run, lambda shards, threads: embed_shard.map(
        unmapped(params_path), unmapped(root), shards, unmapped(threads)))


def detect_distributed(params_path: str, root: str) -> dict:
    """Run the detect step with each ONNX detector's new images shared out to Dask workers; return its summary.

    Threads per worker: embed's rule (the cores shared out on a local cluster), set on each detector source,
    which leaves the detections unchanged (the cache key does not hold ``threads``)."""
    return _share_out("detect", params_path, root, detect.run, lambda label, shards, threads: detect_shard.map(
        unmapped(params_path), unmapped(root), unmapped(label), shards, unmapped(threads)))
