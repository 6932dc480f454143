"""GPU check: the embedder on CUDA, then the full shipped per-image pass and the selection at scale.

    python -m benchmarks.gpu_check [--quick] [--skip-pass] [--skip-select]

Run on a machine with CUDA, as one prepared script (about 5 minutes on a
16-core machine with one GPU; ``--quick`` about 2). It prints

1. the max cosine distance between CUDA and CPU (eager) vectors of the
   sample photos, top-1 agreement, images/s model-only and end to end;
2. ``benchmarks.full_pass`` (embed on CUDA as the shipped ``embed.device:
   auto`` picks it, detect on ONNX Runtime's CPU provider over all cores)
   against the naive whole-image loop, on COCO128 when ``$NEGSET_SHARED`` has
   it, else the examples' sample, with the tag step, and (without ``--quick``)
   three mirrored copies of every photo (512 photos);
3. ``benchmarks/select_scale.py`` (1,000,000 x 10,000 x 1,280; ``--quick``:
   200,000 x 2,000) with its approximate-index figures, planted copies and the
   naive top-k measured in the same run.

Each part runs in its own process with a time limit, so one failing part
still leaves the others' figures.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from negset.core.config import Embed
from negset.embed.model import choose_runtime, embed_files, load_embedder

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "coco-sample" / "images"


REPO = Path(__file__).resolve().parents[1]


def part(title: str, cmd: list[str], limit: int) -> None:
    """Run one benchmark in its own process (bounded), printing its output as it comes."""
    print(f"\n== {title}: {' '.join(cmd)}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run(cmd, check=False, cwd=REPO, env=env, timeout=limit)
        if done.returncode:
            print(f"== {title} failed with exit status {done.returncode}")
    except subprocess.TimeoutExpired:
        print(f"== {title} stopped after {limit} s")


def embedder_check() -> None:
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    photos = sorted(SAMPLE.glob("*.jpg"))
    cpu = load_embedder(Embed(runtime="torch", device="cpu"))
    batch = np.stack([cpu.load(p) for p in photos])
    f_cpu, p_cpu = cpu(batch)
    gpu = choose_runtime(load_embedder(Embed()), Embed(), Path("/tmp/onnx-cache"))
    print("runtime", gpu.runtime, "device", gpu.device)
    f_gpu, p_gpu = gpu(batch)
    dist = 1.0 - (f_cpu * f_gpu).sum(axis=1)
    print(f"max cosine distance cuda vs cpu: {dist.max():.2e}; top-1 agreement {np.mean(p_cpu.argmax(1) == p_gpu.argmax(1)):.3f}")
    threads = os.cpu_count() or 1
    for bs in (32, 128, 256):
        x = np.concatenate([batch] * (bs // len(batch) + 1))[:bs]
        gpu(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            gpu(x)
        torch.cuda.synchronize()
        print(f"model only, batch {bs}: {10 * bs / (time.perf_counter() - t):8.1f} images/s")
    paths = list(itertools.islice(itertools.cycle(photos), 1024))
    list(embed_files(gpu, paths[:128], 128, threads))
    t = time.perf_counter()
    n = sum(len(idx) for idx, *_ in embed_files(gpu, paths, 128, threads))
    print(f"end to end (decode {threads} threads + cuda), {n} photos: {n / (time.perf_counter() - t):8.1f} images/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller selection (200,000 x 2,000)")
    ap.add_argument("--skip-pass", action="store_true")
    ap.add_argument("--skip-select", action="store_true")
    args = ap.parse_args()
    embedder_check()
    threads = str(os.cpu_count() or 1)
    if not args.skip_pass:
        more = [] if args.quick else ["--copies", "3"]  # 512 photos: the steps' start spread as in a real pool
        part("full shipped per-image pass", [sys.executable, "-m", "benchmarks.full_pass", "--threads", threads,
                                              "--with-tag", *more], 300)
    if not args.skip_select:
        size = ["--candidates", "200000", "--positives", "2000", "--count", "2000"] if args.quick else []
        part("selection at scale", [sys.executable, str(REPO / "benchmarks" / "select_scale.py"), *size], 420)


if __name__ == "__main__":
    main()
