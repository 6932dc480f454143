"""Prefect tasks around negset.tools.release: the steps of a refresh and a release.

Retries only where a failure can pass: the rebuild (a source that does not
answer) and the push (the remote). A ``NegsetError`` (bad parameters, a dirty
work tree, no remote) fails at once, as in tasks/steps.py.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from negset.tools import release as version
from tasks.steps import transient_only


@task(name="prepare-release", retries=0)
def prepare(root: str, env: dict) -> str | None:
    """Repair what a killed refresh left, check the project; return the last release tag."""
    version.recover(Path(root), env=env)
    version.check_project(Path(root))
    return version.last_release(Path(root))


@task(name="dvc-repro", retries=1, retry_delay_seconds=10, retry_condition_fn=transient_only)
def repro(root: str, force_ingest: bool, env: dict) -> None:
    """Ingest new objects (forced: DVC cannot see new objects in a source) and rebuild what changed."""
    version.repro(Path(root), force_ingest=force_ingest, env=env)


@task(name="detect-change", retries=0)
def detect(root: str) -> dict:
    return version.detect_change(Path(root)).to_dict()


@task(name="dvc-push", retries=3, retry_delay_seconds=[5, 20, 60], retry_condition_fn=transient_only)
def push(root: str, env: dict) -> None:
    """Upload the outputs to the DVC remote before anything names them."""
    version.push(Path(root), env=env)


@task(name="commit-and-tag", retries=0)
def commit_and_tag(root: str, change: dict) -> str:
    return version.commit_and_tag(Path(root), version.Change(**change))
