"""ONNX detectors on ONNX Runtime (no torch): YOLOX and Ultralytics YOLOv8/11 exports.

The layout is recognised from the output shape once the model is loaded:

- YOLOX, ``[1, N, 5 + C]``: cx, cy, w, h, objectness, C class probabilities
  per anchor; the official export leaves out the grid decoding (centre =
  (offset + cell) * stride, size = exp(log size) * stride over strides 8, 16,
  32), which ``grid_decode`` does; score = objectness * class. Input: resized
  into the top-left of a canvas filled with 114, BGR, 0-255.
- Ultralytics, ``[1, 4 + C, N]``: cx, cy, w, h in input pixels, then C class
  scores (no objectness). Input: letterboxed in the centre (114), RGB, / 255.

Every preprocessing choice can be set per source (``letterbox``, ``color``,
``scale``, ``mean``, ``std``, ``pad_value``, ``input_size``). Class names come
from ``classes``, else the ONNX metadata ``names`` (Ultralytics writes a dict
such as ``{0: 'person', ...}``), else the builtin model's list.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from pathlib import Path

import numpy as np

from negset.core.config import DetectSource
from negset.core.errors import NegsetError
from negset.detect.boxes import cut_by_tile, letterbox, nms_per_class, tile_windows
from negset.detect.names import metadata_names, read_class_names

MODELS = Path(__file__).with_name("models")
# builtin:NAME -> (ONNX file, class names file), shipped in negset/detect/models (see NOTICE there)
BUILTIN = {"yolox_nano": ("yolox_nano.onnx", "coco80_classes.txt")}
YOLOX_STRIDES = (8, 16, 32)
_MAX_CANDIDATES = 4000  # (anchor, class) pairs kept before NMS: the highest scores
CANVAS_STRIDE = 32  # canvas fit: input sides are multiples of this (the largest stride of YOLOX and Ultralytics)
log = logging.getLogger("negset.detect")


def model_path(spec: str, root: Path) -> Path:
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN:
            raise NegsetError(f"detect.sources: model {spec!r}: unknown builtin model",
                              hint=f"builtin models: {', '.join('builtin:' + n for n in BUILTIN)}")
        return MODELS / BUILTIN[name][0]
    path = (Path(root) / spec).resolve()
    if not path.is_file():
        raise NegsetError(f"{path}: detector model file not found", hint="detect.sources[].model: an ONNX file or builtin:yolox_nano")
    return path


def recognise_layout(shape: tuple[int, ...], n_classes: int | None, wanted: str, path: Path) -> tuple[str, int]:
    """(layout, number of classes) from a concrete output shape."""
    expected = "YOLOX [1, N, 5 + classes] or Ultralytics [1, 4 + classes, N]"
    if len(shape) != 3 or shape[0] != 1:
        raise NegsetError(f"{path}: output shape {list(shape)} is no detector layout negset reads ({expected})",
                          hint="export YOLOX with its tools/export_onnx.py, Ultralytics with model.export(format='onnx')")
    _, a, b = shape
    fits = {}
    if b > 5 and a > b and (n_classes is None or b == 5 + n_classes):
        fits["yolox"] = b - 5
    if a > 4 and b > a and (n_classes is None or a == 4 + n_classes):
        fits["ultralytics"] = a - 4
    if wanted != "auto":
        if wanted not in fits:
            raise NegsetError(f"{path}: output shape {list(shape)} does not fit layout {wanted!r}"
                              + (f" with {n_classes} class names" if n_classes else ""), hint=f"expected {expected}")
        return wanted, fits[wanted]
    if len(fits) != 1:
        what = f" with {n_classes} class names" if n_classes else ""
        raise NegsetError(f"{path}: output shape {list(shape)}{what} is no detector layout negset reads ({expected})",
                          hint="check the classes file (one name per model class) or set the source's layout")
    return next(iter(fits.items()))


class OnnxDetector:
    """One ONNX detector with its preprocessing, decoding, per-class NMS and tiles."""

    def __init__(self, src: DetectSource, root: Path):
        import onnxruntime as ort

        self.src = src
        self.path = model_path(src.model, root)
        data = self.path.read_bytes()
        self.file_sha256 = hashlib.sha256(data).hexdigest()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # threads 0 (all cores): one image per core, each session run on one thread (a small detector spends much of
        # a multi-threaded run synchronising); threads N: N threads inside each run, one image at a time
        self.workers = 1 if src.threads else max(1, os.cpu_count() or 1)
        options.intra_op_num_threads = src.threads or 1
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise NegsetError(f"{self.path}: not an ONNX model ONNX Runtime can load ({str(exc).splitlines()[0][:200]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        dims = list(inp.shape)
        if len(dims) != 4:
            raise NegsetError(f"{self.path}: input {inp.name} has shape {dims}; expected [1, 3, H, W]")
        fixed = [d for d in dims[2:] if isinstance(d, int)]
        self.size = src.input_size or (fixed[0] if fixed else 640)
        self.names = self._names(self.session.get_modelmeta().custom_metadata_map or {}, root)
        probe = self.session.run(None, {self.input_name: np.zeros((1, 3, self.size, self.size), np.float32)})[0]
        self.layout, n_classes = recognise_layout(tuple(probe.shape), len(self.names) if self.names else None, src.layout, self.path)
        if self.names is None:
            raise NegsetError(f"{self.path}: no class names (no 'names' in the ONNX metadata)",
                              hint=f"set the source's classes: a file with the {n_classes} class names, one a line")
        yolox = self.layout == "yolox"
        self.where = src.letterbox if src.letterbox != "auto" else ("topleft" if yolox else "center")
        self.bgr = (src.color if src.color != "auto" else ("bgr" if yolox else "rgb")) == "bgr"
        self.scale = src.scale if src.scale is not None else (1.0 if yolox else 1.0 / 255.0)
        self.mean = np.asarray(src.mean, np.float32) if src.mean else None
        self.std = np.asarray(src.std, np.float32) if src.std else None
        self.grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (height, width) -> YOLOX grid
        if yolox and src.grid_decode:
            self.grids[(self.size, self.size)] = self._grid(probe.shape[1], self.size, self.size)
        self.tile_size = src.tile_size or self.size
        self.tile_session = self.session
        if src.tiles > 0 and self.tile_size != self.size:
            self.tile_session = self._tile_session(data, options, dims)
        # canvas fit: rectangular inputs (sides multiples of CANVAS_STRIDE) on a session whose input sides are free
        self.stride = 0
        if src.canvas == "fit":
            free = self._free_session(data, options, dims)
            if free is not None:
                self.tile_session = free if self.tile_session is self.session else self.tile_session
                self.session, self.stride = free, CANVAS_STRIDE
        self.windows_per_image = len(tile_windows(100, 100, src.tiles, src.tile_overlap))
        self.conclusive: tuple[tuple[int, ...], float] | None = None  # (target class ids, score): tiles_when unsure
        self.weak: tuple[tuple[int, ...], float] | None = None  # (target class ids, probe): tiles_when weak
        self.tiled = 0  # images the tiles ran on (this session)
        self.tile_passes = 0  # tiles run (this session)
        self._count = threading.Lock()  # detect() runs in several threads at once

    def _tile_session(self, data: bytes, options, dims: list):
        """A session that takes the tiles' input side: the model's fixed input (and output) sides made free."""
        try:
            return self._free_dims(data, options, dims, (self.tile_size, self.tile_size))
        except Exception as exc:
            raise NegsetError(f"{self.path}: takes no tile_size {self.tile_size} input ({str(exc).splitlines()[0][:200]})",
                              hint="leave tile_size unset (tiles at the model's input size)") from None

    def _free_session(self, data: bytes, options, dims: list):
        """For ``canvas: fit``: a session that takes rectangular inputs, or None (with a warning) for a model that
        takes none (its graph fixes the shape): then the square canvas."""
        short = max(CANVAS_STRIDE, self.size - 3 * CANVAS_STRIDE) // CANVAS_STRIDE * CANVAS_STRIDE
        try:
            return self._free_dims(data, options, dims, (short, self.size))
        except Exception as exc:
            log.warning("%s: takes no rectangular input (%s); detect runs on the square %d x %d canvas (canvas: square)",
                        self.path, str(exc).splitlines()[0][:160], self.size, self.size)
            return None

    def _free_dims(self, data: bytes, options, dims: list, check: tuple[int, int]):
        """The model with its fixed input (and output) sides made free, checked on one ``check`` (height, width)
        input (YOLOX: its grid there too): the session, or an exception when the graph takes no such input."""
        import onnx
        import onnxruntime as ort

        session = self.session
        if any(isinstance(d, int) for d in dims[2:]):
            model = onnx.load_from_string(data)
            free = [d for d in model.graph.input[0].type.tensor_type.shape.dim][2:]  # height, width
            free += [d for out in model.graph.output for d in out.type.tensor_type.shape.dim]  # anchors follow the side
            for i, dim in enumerate(free):
                dim.ClearField("dim_value")
                dim.dim_param = f"free{i}"
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        out = session.run(None, {self.input_name: np.zeros((1, 3, *check), np.float32)})[0]
        if self.layout == "yolox" and self.src.grid_decode:
            self.grids[check] = self._grid(out.shape[1], *check)
        else:
            recognise_layout(tuple(out.shape), len(self.names), self.layout, self.path)
        return session

    def plan_tiles(self, target_names: set[str], score: float, normalise) -> None:
        """``tiles_when: unsure`` (and ``weak``): skip the tiles of an image whose whole-image pass shows one of
        these classes at or above ``score`` (no threshold can be higher, so the target decision cannot change).
        ``weak``: besides, tile only where the whole image's raw target score reaches ``tile_probe``, and only the
        tiles holding such an anchor's centre; a model without a target class gets no tiles (they cannot
        change the target decision)."""
        if self.src.tiles_when == "always" or self.src.tiles == 0:
            return
        ids = tuple(i for i, n in enumerate(self.names) if normalise(n) in target_names)
        self.conclusive = (ids, float(score)) if ids else None
        if self.src.tiles_when == "weak":
            self.weak = (ids, float(self.src.tile_probe))

    def _names(self, meta: dict, root: Path) -> list[str] | None:
        if self.src.classes:
            return read_class_names((Path(root) / self.src.classes).resolve())
        names = metadata_names(meta)
        if names is None and self.src.model.startswith("builtin:"):
            names = read_class_names(MODELS / BUILTIN[self.src.model.removeprefix("builtin:")][1])
        return names

    def _grid(self, n: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """YOLOX's (cell x, y; stride) per anchor of a ``height`` x ``width`` input: strides 8, 16, 32, rows first."""
        cells, strides = [], []
        for s in YOLOX_STRIDES:
            gh, gw = height // s, width // s
            ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
            cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
            strides.append(np.full(gh * gw, s))
        cell, stride = np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)
        if len(cell) != n:
            raise NegsetError(f"{self.path}: {n} YOLOX anchors, but strides 8/16/32 at {height} x {width} px give {len(cell)}",
                              hint="set grid_decode: false when the export decodes boxes itself, or the right input_size")
        return cell, stride[:, None]

    def _grid_for(self, height: int, width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The grid of one input shape, made once (several threads may ask at once: the same values)."""
        grid = self.grids.get((height, width))
        if grid is None:
            grid = self.grids[(height, width)] = self._grid(n, height, width)
        return grid

    def identity(self) -> dict:
        """What decides the detections: the model bytes and every setting (the cache key)."""
        s = self.src
        return dict(model=s.model, model_sha256=self.file_sha256, layout=self.layout, size=self.size, where=self.where,
                    bgr=self.bgr, scale=self.scale, mean=s.mean, std=s.std, pad=s.pad_value, grid_decode=s.grid_decode,
                    tiles=s.tiles, tile_overlap=s.tile_overlap, min_score=s.min_score, iou=s.iou,
                    max_detections=s.max_detections, names=self.names, version=1,
                    **({"tiles_unless": [list(self.conclusive[0]), self.conclusive[1]]} if self.conclusive else {}),
                    **({"tiles_weak": [list(self.weak[0]), self.weak[1]]} if self.weak else {}),
                    **({"tile_size": self.tile_size} if s.tiles and self.tile_size != self.size else {}),
                    **({"canvas": f"fit{self.stride}"} if self.stride else {}))

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:24]

    def decode_side(self) -> int:
        """The shorter side an image needs when decoded (tiles need more pixels than the whole image)."""
        s = self.src
        if s.tiles <= 1:
            return self.size
        share = 1.0 / (s.tiles - (s.tiles - 1) * s.tile_overlap)
        return max(self.size, math.ceil(self.tile_size / share))

    def _input(self, image, size: int) -> tuple[np.ndarray, float, float, float]:
        canvas, r, dx, dy = letterbox(image, size, self.where, self.src.pad_value, self.stride)
        if self.mean is not None or self.std is not None:
            x = canvas.astype(np.float32) * self.scale
            x = x - (self.mean if self.mean is not None else 0.0)
            x = x / (self.std if self.std is not None else 1.0)
        else:
            x = canvas
        out = np.empty((1, 3, *canvas.shape[:2]), np.float32)
        for k, c in enumerate((2, 1, 0) if self.bgr else (0, 1, 2)):
            out[0, k] = x[:, :, c]  # one plane at a time: channel order, layout and type together (4x faster than
            # a transposed astype of the whole canvas; the same values)
        if self.scale != 1.0 and self.mean is None and self.std is None:
            out *= np.float32(self.scale)
        return out, r, dx, dy

    def _raw(self, out: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(xyxy boxes on the canvas, class scores) per anchor; ``shape``: the input's (height, width)."""
        if self.layout == "yolox":
            rows = out[0]
            xy, wh = rows[:, :2], rows[:, 2:4]
            if self.src.grid_decode:
                cell, stride = self._grid_for(*shape, len(rows))
                xy = (xy + cell) * stride
                wh = np.exp(np.clip(wh, -20, 20)) * stride
            scores = rows[:, 4:5] * rows[:, 5:]
        else:
            rows = out[0].T
            xy, wh, scores = rows[:, :2], rows[:, 2:4], rows[:, 4:]
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
        return boxes, scores

    def _window(self, image, window, tile: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(boxes in image pixels, scores, classes) found in ``window``, and on the whole image with ``tiles_when:
        weak`` the centres (image pixels) of the anchors whose raw target score reaches ``tile_probe``."""
        crop = image if window[:2] == (0, 0) and window[2:] == image.size else image.crop(window)
        size, session = (self.tile_size, self.tile_session) if tile else (self.size, self.session)
        x, r, dx, dy = self._input(crop, size)
        boxes, scores = self._raw(session.run(None, {self.input_name: x})[0], x.shape[2:])
        hot = None
        if self.weak and not tile:
            ids, probe = self.weak
            signal = scores[:, list(ids)].max(axis=1) >= probe if ids else np.zeros(len(scores), bool)
            hot = ((boxes[signal, :2] + boxes[signal, 2:]) / 2 - (dx, dy)) / r + window[:2]
        anchor, cls = np.nonzero(scores >= self.src.min_score)
        s = scores[anchor, cls]
        if len(s) > _MAX_CANDIDATES:
            top = np.argpartition(-s, _MAX_CANDIDATES)[:_MAX_CANDIDATES]
            anchor, cls, s = anchor[top], cls[top], s[top]
        b = boxes[anchor].astype(np.float64)
        b[:, [0, 2]] = (b[:, [0, 2]] - dx) / r + window[0]
        b[:, [1, 3]] = (b[:, [1, 3]] - dy) / r + window[1]
        keep = nms_per_class(b, s, cls, self.src.iou, self.src.max_detections)
        return b[keep], s[keep].astype(np.float64), cls[keep], hot

    def _tiles_to_run(self, windows: list, found, hot: np.ndarray | None) -> list[int]:
        """Which tiles (indices into ``windows``) this image gets after its whole-image pass."""
        _, s, c = found
        if self.conclusive and np.any(np.isin(c, self.conclusive[0]) & (s >= self.conclusive[1])):
            return []  # the whole image already shows the target beyond any threshold: its tiles cannot change that
        if hot is None:
            return list(range(1, len(windows)))
        return deepest_tiles(windows, hot)

    def detect(self, image, original: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """Detections on the whole image and its tiles, merged by per-class NMS, in ``original`` pixels.

        A tile's box touching an inner edge of the tile is dropped (the object
        goes on beyond it; the whole image or a neighbouring tile holds it).
        """
        w, h = image.size
        windows = tile_windows(w, h, self.src.tiles, self.src.tile_overlap)
        b, s, c, hot = self._window(image, windows[0])
        found = [(b, s, c, np.zeros(len(s), np.int16))]
        tiles = self._tiles_to_run(windows, (b, s, c), hot) if len(windows) > 1 else []
        for t in tiles:
            b, s, c, _ = self._window(image, windows[t], tile=True)
            keep = ~cut_by_tile(b, windows[t], w, h)
            found.append((b[keep], s[keep], c[keep], np.full(int(keep.sum()), t, np.int16)))
        with self._count:
            self.tiled += bool(tiles)
            self.tile_passes += len(tiles)
        b = np.concatenate([f[0] for f in found]) if found else np.zeros((0, 4))
        s, c, t = (np.concatenate([f[i] for f in found]) for i in (1, 2, 3))
        keep = nms_per_class(b, s, c, self.src.iou, self.src.max_detections)
        b, s, c, t = b[keep], s[keep], c[keep], t[keep]
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
        if original is not None and original != (w, h):
            b = b * np.array([original[0] / w, original[1] / h] * 2)
        return dict(box=b, score=s, cls=c.astype(np.int32), tile=t)


def deepest_tiles(windows: list[tuple[int, int, int, int]], points: np.ndarray) -> list[int]:
    """The tiles (indices into ``windows``; 0 is the whole image) that hold each point deepest: per point, the tile
    whose nearest edge is farthest from it, so a small object there lies inside the tile rather than cut by it."""
    if not len(points):
        return []
    tiles = np.asarray(windows[1:], np.float64)
    x, y = points[:, :1], points[:, 1:2]
    depth = np.minimum.reduce([x - tiles[:, 0], tiles[:, 2] - x, y - tiles[:, 1], tiles[:, 3] - y])
    return sorted({int(t) + 1 for t in np.argmax(depth, axis=1)})
