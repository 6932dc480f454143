"""Projects for the detect tests: the sample ingested, with detect sources written into params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from negset.core.config import load_params
from negset.core.layout import Layout
from negset.ingest import step as ingest


def set_detect(root: Path, **detect) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["detect"] = detect
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    # the stage depends on the predictions and model files the sources name (as `negset init` writes it)
    from negset.core.errors import NegsetError
    from negset.tools.project import render_dvc_yaml

    try:
        (root / "dvc.yaml").write_text(render_dvc_yaml(load_params(path), root, dev=True))
    except NegsetError:  # a test of a mistake in these parameters: the step itself must say it
        pass


def run_detect(root: Path) -> dict:
    from negset.detect import step as detect

    return detect.run(load_params(root / "params.yaml"), Layout.at(root))


@pytest.fixture
def ingested(project) -> Path:
    """The sample project after ingest (16 person positives, 17 labelled candidates without a person)."""
    ingest.run(load_params(project / "params.yaml"), Layout.at(project))
    return project


def images(root: Path) -> list[dict]:
    from negset.core import parquet as pq

    return pq.read_table(Layout.at(root).ingest / "images.parquet").to_pylist()
