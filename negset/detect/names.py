"""Class names of a detector or a predictions source, and how they are compared with the target."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from negset.core.errors import NegsetError


def normalise(name: str) -> str:
    """Names compare without case or extra spaces ('Traffic  Light' = 'traffic light')."""
    return " ".join(str(name).lower().split())


def read_class_names(path: Path) -> list[str]:
    """Names one a line, or a YOLO data.yaml (``names`` as a list or an id -> name mapping)."""
    if not path.is_file():
        raise NegsetError(f"{path}: class names file not found", hint="detect.sources[].classes: names one a line, or a YOLO data.yaml")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            names = (yaml.safe_load(text) or {}).get("names")
        except (yaml.YAMLError, AttributeError) as exc:
            raise NegsetError(f"{path}: not a YOLO data.yaml with 'names' ({exc})".splitlines()[0]) from None
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not isinstance(names, list) or not names:
            raise NegsetError(f"{path}: no 'names' list or mapping", hint="a YOLO data.yaml lists its class names under names:")
        return [str(n) for n in names]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise NegsetError(f"{path}: no class names in it", hint="one class name a line, in the model's output order")
    return names


def metadata_names(meta: dict[str, str]) -> list[str] | None:
    """Class names from ONNX metadata: Ultralytics' ``names`` (a dict or list literal, or JSON)."""
    raw = meta.get("names")
    if not raw:
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        try:
            value = json.loads(raw)
        except ValueError:
            return None
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value, key=lambda k: int(k))]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return None
