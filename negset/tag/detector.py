"""Occlusion from a detector, for images without box labels (``tag.occlusion.detector``).

A torchvision detection model is built without weights and loaded from a
LOCAL state_dict file: negset never downloads weights. Its boxes scoring at
least ``score`` go through the same box-geometry rule as labelled boxes.
torch/torchvision are imported only when a detector is configured.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from negset.core.config import Detector
from negset.core.errors import NegsetError

log = logging.getLogger("negset.tags")


def load_detector(cfg: Detector, root: Path):
    path = (Path(root) / cfg.weights).resolve()
    hint = (
        "tag.occlusion.detector.weights must be a local file written by torch.save(model.state_dict(), PATH) "
        f"for torchvision.models.detection.{cfg.model}; negset never downloads weights"
    )
    if not path.is_file():
        raise NegsetError(f"{path}: detector weights file not found", hint=hint)
    import torch
    from torchvision.models import detection

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise NegsetError(f"{path}: not a torch weights file ({type(exc).__name__}: {str(exc)[:200]})", hint=hint) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint
    if not isinstance(state, dict):
        raise NegsetError(f"{path}: expected a state_dict (a mapping of parameter names to tensors)", hint=hint)
    model = getattr(detection, cfg.model)(weights=None, weights_backbone=None, num_classes=cfg.num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise NegsetError(f"{path}: not weights for {cfg.model} with {cfg.num_classes} classes: {first}", hint=hint) from None
    model.eval()
    return model


def detect(model, images, cfg: Detector, batch: int = 4) -> list[tuple[list[tuple[float, float, float, float]], list[float], float]]:
    """Per image: (normalised boxes scoring >= cfg.score, their scores, the highest score of all boxes)."""
    import torch
    from torchvision.transforms.functional import pil_to_tensor

    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            chunk = []
            sizes = []
            for im in images[i : i + batch]:
                im = im.copy()
                im.thumbnail((cfg.max_side, cfg.max_side))
                sizes.append(im.size)
                chunk.append(pil_to_tensor(im).float() / 255.0)
            for (w, h), det in zip(sizes, model(chunk)):
                scores = det["scores"].numpy().astype(np.float64)
                boxes = det["boxes"].numpy().astype(np.float64)
                keep = scores >= cfg.score
                norm = boxes[keep] / np.array([w, h, w, h], dtype=np.float64)
                norm = np.clip(norm, 0.0, 1.0)
                out.append(([tuple(map(float, b)) for b in norm], scores[keep].tolist(), float(scores.max()) if len(scores) else 0.0))
    return out
