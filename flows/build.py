"""Flows that build a negative set: one step, or all of them in order.

``dvc repro`` runs each stage as ``negset STEP``, which runs ``stage`` below;
``negset build`` runs ``build`` (all steps in one flow run).
"""

from __future__ import annotations

import logging

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from negset.core.errors import hide_user_error_tracebacks
from negset.pipeline import STEPS
from tasks.steps import BY_NAME

# A user's mistake (NegsetError) shows as its message and hint on the console, not a traceback.
hide_user_error_tracebacks(logging.getLogger().handlers)


def _summary_markdown(step: str, summary: dict) -> str:
    lines = [f"## negset {step}", "", "| key | value |", "|---|---|"]
    for k, v in sorted(summary.items()):
        if isinstance(v, dict):  # e.g. ingest's download counters
            lines += [f"| {k}.{kk} | {vv} |" for kk, vv in sorted(v.items()) if not isinstance(vv, (dict, list))]
        elif not isinstance(v, list):
            lines.append(f"| {k} | {v} |")
    return "\n".join(lines)


@flow(name="negset-stage", log_prints=True)
def stage(step: str, params_path: str = "params.yaml", root: str = ".") -> dict:
    """Run one pipeline step as a flow (what each dvc.yaml stage calls)."""
    summary = BY_NAME[step](params_path, root)
    create_markdown_artifact(_summary_markdown(step, summary), key=f"negset-{step}", description=f"negset {step}")
    return summary


@flow(name="negset-build", log_prints=True)
def build(params_path: str = "params.yaml", root: str = ".") -> dict:
    """Run every step in order: ingest -> embed -> detect -> tag -> select -> export -> report."""
    results = {}
    for step in STEPS:
        results[step] = BY_NAME[step](params_path, root)
    create_markdown_artifact(_summary_markdown("build", results["export"]), key="negset-build", description="negset build")
    return results
