"""Each step's output folder is replaced whole: built aside, swapped in on success.

``negset.pipeline.run_step`` runs a step against a staging folder
``data/.<folder>.staging`` that stands in for its output folder
(``Layout.staging``). The staging folder starts as the previous outputs
(hard links, so it costs no copy: negset never changes a file in place), which
is what a step that builds on its previous outputs needs: ``data/ingest``
(its stored objects and pins, a DVC ``persist`` output) and
``data/tags/centroids.parquet`` (also ``persist``). When the step succeeds
the staging folder is swapped in with one atomic rename exchange; when it
fails or is killed the output folder is the previous one, untouched (or
absent, when there was none), so no later step can read half of a run.

What a killed run leaves is cleared by the next run of the same step, except
what is safe to reuse (``salvage``): ingest's stored objects (named by their
sha256, each written atomically) and its journal of them, so a killed
ingest still resumes without downloading again.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from negset.core import atomic
from negset.core.layout import Layout

log = logging.getLogger("negset")


@dataclass(frozen=True)
class Output:
    folder: str  # the step's folder under data/
    salvage: tuple[str, ...] = ()  # names in a killed run's staging folder that are safe to reuse
    progress: str | None = None  # a file a run writes only when it did work worth salvaging


OUTPUTS = {
    "ingest": Output("ingest", salvage=("objects", "pins-journal.jsonl"), progress="pins-journal.jsonl"),
    "embed": Output("embed"),
    "detect": Output("detect"),
    "tag": Output("tags"),
    "select": Output("select"),
    "export": Output("negatives"),
    "report": Output("negatives"),  # adds report.html and plots/ to export's folder
}


def staging_path(layout: Layout, step: str) -> Path:
    return layout.data / f".{OUTPUTS[step].folder}.staging"


def prepare(layout: Layout, step: str) -> Path:
    """A staging folder holding the step's previous outputs (and what a killed run left that is safe to reuse)."""
    out = OUTPUTS[step]
    real = layout.data / out.folder
    atomic.recover_dir(real)  # a crash between the two renames of a fallback swap
    stage = staging_path(layout, step)
    if stage.exists():
        kept = [name for name in out.salvage if (stage / name).exists()]
        for child in list(stage.iterdir()):
            if child.name not in out.salvage:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        log.info("%s: cleared what an interrupted run left%s", stage,
                 f" (kept {', '.join(kept)}: safe to reuse)" if kept else "")
    stage.mkdir(parents=True, exist_ok=True)
    if real.is_dir():
        atomic.link_tree(real, stage)
    return stage


def commit(layout: Layout, step: str, stage: Path) -> None:
    """Swap the finished staging folder in as the step's output folder."""
    atomic.swap_in(stage, layout.data / OUTPUTS[step].folder)


def discard(layout: Layout, step: str, stage: Path) -> None:
    """After a failed run: the previous outputs stay; the staging folder goes unless it holds work to salvage
    (ingest: remote objects it stored, listed in its journal, which a retry then need not download again)."""
    progress = OUTPUTS[step].progress
    if stage.exists() and not (progress and (stage / progress).exists()):
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def staged(layout: Layout, step: str) -> Iterator[Layout]:
    """The layout a step runs with: its own folder staged; swapped in when the block ends without an error."""
    stage = prepare(layout, step)
    try:
        yield layout.staging(OUTPUTS[step].folder, stage)
    except BaseException:
        discard(layout, step, stage)
        raise
    commit(layout, step, stage)
