"""One Prefect task per pipeline step.

Retries only for failures that can pass (I/O, network); a ``NegsetError``
(bad parameters or input) fails at once.
"""

from __future__ import annotations

from prefect import task

from negset.core import progress
from negset.core.errors import NegsetError
from negset.pipeline import run_step


class _ProgressArtifact:
    """Mirror the step's progress bars into a Prefect progress artifact (when the total is known)."""

    def __init__(self, step: str):
        self.step = step
        self.artifact_id = None

    def __call__(self, what: str, done: int, total: int | None) -> None:
        if not total:
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        pct = 100.0 * min(done, total) / total
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(
                pct, key=f"negset-{self.step}-progress", description=f"negset {self.step}: {what}"
            )
        else:
            update_progress_artifact(self.artifact_id, pct, description=f"negset {self.step}: {what} {done}/{total}")


def transient_only(task, task_run, state) -> bool:
    """retry_condition_fn: retry unless the failure is the user's input."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, NegsetError)


def _make(name: str, retries: int):
    @task(
        name=name,
        retries=retries,
        retry_delay_seconds=[2, 8, 30][:retries] or 0,
        retry_condition_fn=transient_only,
        log_prints=True,
    )
    def step(params_path: str, root: str) -> dict:
        with progress.reporting(_ProgressArtifact(name)):
            return run_step(name, params_path, root)

    step.__doc__ = f"Run the negset '{name}' step."
    return step


ingest = _make("ingest", retries=2)
embed = _make("embed", retries=1)
detect = _make("detect", retries=0)
tag = _make("tag", retries=0)
select = _make("select", retries=0)
export = _make("export", retries=1)
report = _make("report", retries=0)

BY_NAME = {"ingest": ingest, "embed": embed, "detect": detect, "tag": tag, "select": select, "export": export, "report": report}
