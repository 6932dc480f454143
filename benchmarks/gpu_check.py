"""GPU check of the embedder: CUDA vectors equal the CPU reference, and throughput.

    python -m benchmarks.gpu_check

Run on a machine with CUDA. Prints the max cosine distance between CUDA and
CPU (eager) vectors of the sample photos, and images/s end to end and model-only.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch

from negset.core.config import Embed
from negset.embed.model import choose_runtime, embed_files, load_embedder

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "coco-sample" / "images"


def main() -> None:
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


if __name__ == "__main__":
    main()
