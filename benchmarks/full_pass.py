"""The full shipped per-image pass (embed with object hardness, detect), timed as the steps run, against a naive loop.

    python -m benchmarks.full_pass [--threads 2] [--regions-from map|crops] [--with-tag] [--copies 3]

A temporary project over COCO128 (``$NEGSET_SHARED/datasets/coco128-train``,
default ../shared; else the examples' sample) with the SHIPPED params.yaml,
only its paths changed, and cold caches. The ingest runs untimed, and so does
the one-time ONNX export of the embedder (a user pays it once per project; its
seconds are printed). Then ``embed`` (decode, whole-image vector, 3 x 3 region
vectors and the positives' target objects) and ``detect`` (YOLOX-Nano, tiles
where unsure) run as ``negset --no-prefect STEP`` runs them (negset.pipeline),
each timed by wall clock and by CPU seconds of the process and its children.
``--with-tag`` times the tag step too (the quality and lighting statistics).
``--copies N`` adds N mirrored, re-encoded versions of every photo to the pool,
so each step's fixed cost (process, model and session loading, outputs) is
spread over more images, as in a real pool (128 photos: about 0.3 s a step).

Baseline in the same run: benchmarks.embed_speed's naive whole-image loop (PIL
open, timm transform, eager model, batch 1) on the same photos. Targets: the
full pass faster than that loop, and >= 30 images/s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NEGSET_SHARED") or REPO.parent / "shared")
COCO128 = SHARED / "datasets" / "coco128-train"
SAMPLE = REPO / "examples" / "coco-sample"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def mirrored_copies(images: Path, folder: Path, copies: int) -> int:
    """``copies`` distinct versions of every photo (mirrored, re-encoded at a seeded quality) in ``folder``: more
    images for the steps' fixed costs (model loading, process) to spread over, as in a real pool."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for i in range(copies):
        for p in sorted(images.glob("*.jpg")):
            im = Image.open(p).convert("RGB")
            (ImageOps.mirror(im) if i % 2 == 0 else im).save(folder / f"{p.stem}-copy{i}.jpg", quality=85 + i % 10)
            n += 1
    return n


def project(root: Path, regions_from: str | None, threads: int, regions: int | None = None,
            copies: int = 0) -> tuple[Path, Path]:
    """A project in ``root`` with the shipped params.yaml on COCO128 (or the sample); (params path, images folder).
    ``copies``: that many more versions of every photo as candidates (``mirrored_copies``)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if (COCO128 / "images").is_dir():
        images, labels = COCO128 / "images", COCO128 / "annotations" / "instances_train2017.json"
    else:
        images, labels = SAMPLE / "images", SAMPLE / "annotations" / "instances.json"
    params["ingest"]["positives"].update(path=str(labels), images=str(images))
    if copies:
        mirrored_copies(images, root / "copies", copies)
        params["ingest"]["sources"] = [{"type": "local", "path": str(images)}, {"type": "local", "path": str(root / "copies")}]
    if regions_from:
        params["embed"]["regions_from"] = regions_from
    if regions is not None:
        params["embed"]["regions"] = regions
    if threads != (os.cpu_count() or 1):  # fewer cores than the machine has: say so; else the shipped 0 (all)
        params["embed"]["threads"] = threads
    shutil.copy(REPO / "negset.lock", root / "negset.lock") if (REPO / "negset.lock").exists() else None
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root / "params.yaml", images


def timed(name: str, params_path: Path) -> tuple[float, float]:
    from negset.pipeline import run_step

    wall, cpu = time.perf_counter(), cpu_seconds()
    run_step(name, params_path)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="cores to use (torch, ONNX Runtime, decode threads)")
    ap.add_argument("--regions-from", choices=["map", "crops"], help="override embed.regions_from (default: shipped)")
    ap.add_argument("--regions", type=int, help="override embed.regions (default: shipped)")
    ap.add_argument("--with-tag", action="store_true", help="time the tag step (pixel statistics) too")
    ap.add_argument("--naive-images", type=int, default=64, help="photos the naive loop embeds")
    ap.add_argument("--copies", type=int, default=0,
                    help="add this many mirrored, re-encoded versions of every photo (more images per step start)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import logging

    logging.basicConfig(level=logging.WARNING)
    import pyarrow.parquet as pq

    from negset.core.config import load_params
    from negset.core.layout import Layout
    from negset.pipeline import run_step

    root = Path(tempfile.mkdtemp(prefix="negset-full-pass-"))
    try:
        params_path, images = project(root, args.regions_from, args.threads, args.regions, args.copies)
        params = load_params(params_path)
        run_step("ingest", params_path)  # untimed
        layout = Layout.at(root)
        n = pq.read_metadata(layout.ingest / "images.parquet").num_rows

        from negset.embed.model import ready_embedder
        from negset.embed.step import _identity

        t0 = time.perf_counter()
        _, key, emb = _identity(params.embed, layout)
        ready_embedder(params.embed, layout, key, emb)  # the one-time ONNX export (cached per project), untimed
        setup = time.perf_counter() - t0

        phases = {"embed": timed("embed", params_path), "detect": timed("detect", params_path)}
        if args.with_tag:
            phases["tag"] = timed("tag", params_path)
        model = json.loads((layout.embed / "model.json").read_text())

        sys.path.insert(0, str(REPO))
        from benchmarks.embed_speed import naive

        photos = sorted(images.glob("*.jpg"))[: args.naive_images]
        got: list = []
        base = naive(photos, args.threads, got)
        base_cpu = got[0]

        cfg = params.embed
        copies = f" + {args.copies} mirrored copies of each" if args.copies else ""
        print(f"full shipped pass on {n} photos ({images}{copies}), {args.threads} threads, cold caches; "
              f"embed.regions {cfg.regions} from {cfg.regions_from}, "
              f"detect {', '.join(str(s.model) for s in params.detect.sources)}")
        print(f"  one-time model setup (ONNX export, untimed): {setup:.1f} s")
        print(f"  regions: {model['regions']}")
        total_wall = sum(w for w, _ in phases.values())
        for name, (wall, cpu) in phases.items():
            print(f"  {name:<7} {wall:6.2f} s wall  {n / wall:7.1f} images/s  {cpu / n:.4f} CPU s/image")
        pass_wall = phases["embed"][0] + phases["detect"][0]
        pass_cpu = phases["embed"][1] + phases["detect"][1]
        print(f"  full pass (embed + detect): {pass_wall:6.2f} s wall  {n / pass_wall:7.1f} images/s  "
              f"{pass_cpu / n:.4f} CPU s/image")
        if args.with_tag:  # the target counts the tag step's quality and lighting statistics too
            print(f"  with tag: {n / total_wall:7.1f} images/s   target >= 30 images/s with the statistics: "
                  f"{'met' if n / total_wall >= 30 else 'NOT met'}")
        print(f"  naive whole-image loop (PIL + timm transform + eager, batch 1, {len(photos)} photos): "
              f"{base:7.1f} images/s  {base_cpu:.4f} CPU s/image")
        print(f"  ratio full pass / naive loop: {n / pass_wall / base:.2f}x   target >= 30 images/s: "
              f"{'met' if n / pass_wall >= 30 else 'NOT met'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
