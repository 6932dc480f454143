"""The DuckDB catalog: a missing table names the step command that writes it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from negset.core import atomic, catalog
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.pipeline import STEPS
from tests.conftest import REPO


def _outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]


def test_every_table_maps_to_the_stage_that_writes_its_file(tmp_path):
    """The table -> step map agrees with dvc.yaml: the file is an output of that step's stage."""
    layout = Layout.at(tmp_path)
    files = catalog.table_files(layout)
    assert set(catalog.TABLE_STEP) == set(files)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, path in files.items():
        step = catalog.TABLE_STEP[name]
        assert step in STEPS
        rel = path.relative_to(tmp_path).as_posix()
        assert any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in _outs(stages[step])), (name, step)


@pytest.mark.parametrize("table, command", [("tags", "negset tag"), ("strata", "negset select"),
                                            ("rejected_ingest", "negset ingest"), ("embeddings", "negset embed")])
def test_a_missing_table_names_its_step_command(tmp_path, table, command):
    layout = Layout.at(tmp_path)
    with catalog.connect(layout) as con, pytest.raises(NegsetError) as err:
        catalog.load(con, layout, table)
    path = catalog.table_files(layout)[table]
    step = command.split()[1]
    assert err.value.message == f"{path}: missing; the '{step}' step has not run"
    assert err.value.hint == f"run `{command}` first"


def test_a_present_table_is_loaded(tmp_path):
    layout = Layout.at(tmp_path)
    path: Path = catalog.table_files(layout)["tags"]
    atomic.write_parquet(pa.table({"sha256": ["a", "b"], "lighting": ["dark", "normal"]}), path)
    with catalog.connect(layout) as con:
        catalog.load(con, layout, "tags")
        assert con.sql("SELECT lighting FROM tags ORDER BY sha256").fetchall() == [("dark",), ("normal",)]
