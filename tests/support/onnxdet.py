"""Tiny ONNX detectors built in tests with the ``onnx`` package (no weights, no download).

The output is a fixed tensor plus 0 x the mean of the input, so the graph really
reads the input but answers the same boxes for any image: what a layout test needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def constant_detector(path: Path, output: np.ndarray, size: int = 64, names: str | None = None,
                      fixed_shape: bool = False) -> Path:
    """An ONNX model with input ``images`` [1, 3, size, size] and output ``output`` = ``output`` (any shape).

    ``fixed_shape``: the graph reshapes the input to [1, 3 x size x size] first, so it takes no other input shape.
    """
    output = np.asarray(output, np.float32)
    first = "images"
    nodes = []
    if fixed_shape:
        nodes.append(helper.make_node("Reshape", ["images", "flat"], ["flattened"]))
        first = "flattened"
    nodes += [
        helper.make_node("ReduceMean", [first], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["preds", "nothing"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "constant_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(output, "preds"), numpy_helper.from_array(np.zeros((), np.float32), "zero")]
        + ([numpy_helper.from_array(np.asarray([1, 3 * size * size], np.int64), "flat")] if fixed_shape else []),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if names is not None:
        model.metadata_props.append(onnx.StringStringEntryProto(key="names", value=names))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def ultralytics_output(boxes: list[tuple[float, float, float, float, int, float]], n_classes: int, anchors: int = 8) -> np.ndarray:
    """``[1, 4 + C, N]``: each (cx, cy, w, h, class, score) in input pixels on one anchor, the rest empty."""
    out = np.zeros((1, 4 + n_classes, anchors), np.float32)
    for a, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[0, :4, a] = (cx, cy, w, h)
        out[0, 4 + cls, a] = score
    return out
