"""The pipeline's steps by name, and a plain (orchestrator-free) runner."""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

from negset.core.config import Params, load_params
from negset.core.layout import Layout
from negset.core.lock import project_lock

STEPS = ("ingest", "embed", "detect", "tag", "select", "export", "report")
# each step's command module: negset/<step>/step.py, with run(params, layout) -> summary
_MODULES = {name: f"negset.{name}.step" for name in STEPS}

log = logging.getLogger("negset")


def step_function(name: str):
    if name not in _MODULES:
        raise KeyError(name)
    return importlib.import_module(_MODULES[name]).run


def run_step(name: str, params_path: str | Path, root: str | Path | None = None) -> dict:
    """Validate the parameters and run one step; return its summary."""
    params_path = Path(params_path)
    params: Params = load_params(params_path)
    layout = Layout.at(root if root is not None else params_path.resolve().parent)
    start = time.monotonic()
    with project_lock(layout.data, f"negset {name}"):
        summary = step_function(name)(params, layout)
    log.info("%s finished in %.1fs", name, time.monotonic() - start)
    return summary
