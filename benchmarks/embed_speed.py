"""Embedding throughput, end to end (decode, preprocess, model), against a naive loop.

    python -m benchmarks.embed_speed [--images N] [--threads T]

Naive baseline, measured in the same run: PIL open, timm's eval transform,
the eager model, batch 1. negset's path: threaded decode beside the model,
batches, ONNX Runtime (or torch channels_last with --runtime torch).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "coco-sample" / "images"


def naive(paths, threads, cpu: list | None = None):
    """Images/s of the naive loop; ``cpu``: gets the loop's CPU seconds per image (model build excluded)."""
    import resource

    import timm
    import torch
    from PIL import Image

    from negset.core.config import Embed
    from negset.embed.model import load_embedder

    torch.set_num_threads(threads)
    emb = load_embedder(Embed())
    model = emb.features.m.to(memory_format=torch.contiguous_format)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            x = transform(Image.open(p).convert("RGB")).unsqueeze(0)
            model.forward_head(model.forward_features(x), pre_logits=True)
    rate = len(paths) / (time.perf_counter() - start)
    if cpu is not None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append((usage.ru_utime + usage.ru_stime - cpu0) / len(paths))
    return rate


def negset_path(paths, threads, runtime, batch):
    import tempfile

    import torch

    from negset.core.config import Embed
    from negset.embed.model import choose_runtime, embed_files, load_embedder

    torch.set_num_threads(threads)
    cfg = Embed(runtime=runtime, device="cpu", threads=threads, batch_size=batch)
    emb = choose_runtime(load_embedder(cfg), cfg, Path(tempfile.mkdtemp()))
    list(embed_files(emb, paths[:batch], batch, threads))  # warm-up (and ONNX export) outside the timing
    start = time.perf_counter()
    n = sum(len(idx) for idx, *_ in embed_files(emb, paths, batch, threads))
    return n / (time.perf_counter() - start), emb.runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runtime", default="auto", choices=["auto", "onnx", "torch"])
    args = ap.parse_args()
    photos = sorted(SAMPLE.glob("*.jpg"))
    paths = list(itertools.islice(itertools.cycle(photos), args.images))
    base = naive(paths[: max(16, args.images // 4)], args.threads)
    fast, runtime = negset_path(paths, args.threads, args.runtime, args.batch)
    print(f"embed end to end, {args.images} sample photos, {args.threads} threads, 224 px")
    print(f"  naive loop (PIL + timm transform + eager, batch 1): {base:7.1f} images/s")
    print(f"  negset ({runtime}, batch {args.batch}, threaded decode): {fast:7.1f} images/s")
    print(f"  ratio: {fast / base:.2f}x")


if __name__ == "__main__":
    main()
