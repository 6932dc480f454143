"""The scheduled refresh: ingest new objects -> dvc repro -> a release when the set changed.

A release is ``dvc push`` + a git commit of ``dvc.lock`` + a tag
``negatives-YYYYMMDD-N`` (negset/tools/release.py). One refresh at a time: the
deployment's concurrency limit (prefect.yaml) and the project lock
(data/.negset.lock), which the `dvc repro` it starts inherits. A failure
leaves the last release in place and the git work tree clean.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from negset.core.lock import child_env, project_lock
from negset.tools import release as version
from tasks import release


@flow(name="negset-refresh", log_prints=True)
def refresh(root: str = ".", force_ingest: bool = True) -> dict:
    """Refresh the negative set from its sources and release it when it changed."""
    logger = get_run_logger()
    root_path = Path(root).resolve()
    with project_lock(root_path / "data", "negset refresh (Prefect)"):
        env = child_env(root_path / "data")
        previous = release.prepare(str(root_path), env)
        tag = None
        try:
            release.repro(str(root_path), force_ingest, env)
            change = release.detect(str(root_path))
            if change["changed"]:
                release.push(str(root_path), env)
                tag = release.commit_and_tag(str(root_path), change)
            else:
                version.finish_unchanged(root_path)
        except BaseException:
            logger.warning("refresh failed: restoring the last release (%s)", previous or "none")
            version.restore(root_path, env=env)
            raise
        ch = version.Change(**change)
        markdown = version.summary_markdown(root_path, ch, tag)
        create_markdown_artifact(markdown, key="negset-refresh", description=f"negset refresh: {tag or 'no change'}")
        create_table_artifact(version.summary_table(root_path, ch), key="negset-refresh-images",
                              description="negatives in the set, and those removed since the last release")
        logger.info("%s", markdown)
        return dict(tag=tag, previous=previous, added=len(ch.added), removed=len(ch.removed),
                    negatives=ch.negatives, summary=markdown)
