"""The pipeline's steps by name, and a plain (orchestrator-free) runner."""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

from negset.core import staging
from negset.core.config import Params, load_params
from negset.core.errors import NegsetError, user_error
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
    """Validate the parameters and run one step; return its summary.

    The step writes into a staging folder that replaces its output folder whole
    on success (negset/core/staging.py); an OS error about a file (missing,
    unreadable, read-only, disk full) becomes one line naming it
    (``negset.core.errors.user_error``).
    """
    try:
        params_path = Path(params_path)
        params: Params = load_params(params_path)
        layout = Layout.at(root if root is not None else params_path.resolve().parent)
        start = time.monotonic()
        with project_lock(layout.data, f"negset {name}"):
            run = step_function(name)
            try:
                with staging.staged(layout, name) as staged:
                    summary = run(params, staged)
            except (NegsetError, OSError) as exc:  # one line, naming the output folder, not its stand-in
                error = user_error(exc)
                if error is None:
                    raise
                fixed = unstaged([error.message, error.hint], staging.staging_path(layout, name), layout, name)
                raise NegsetError(*fixed) from None
            summary = unstaged(summary, staging.staging_path(layout, name), layout, name)
        log.info("%s finished in %.1fs", name, time.monotonic() - start)
        return summary
    except OSError as exc:
        error = user_error(exc)
        if error is None:
            raise
        raise error from None


def unstaged(summary, stage: Path, layout: Layout, name: str):
    """The summary with the staging folder's name (in paths it reports) replaced by the output folder's."""
    real = layout.data / staging.OUTPUTS[name].folder
    pairs = [(str(stage), str(real)), (layout.uri(stage, resolved=True), layout.uri(real, resolved=True))]

    def fix(value):
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(fix(v) for v in value)
        if isinstance(value, str):
            for old, new in pairs:
                value = value.replace(old, new)
        return value

    return fix(summary)
