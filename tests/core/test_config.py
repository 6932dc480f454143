"""params.yaml validation: one clear line per mistake, naming the key."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from negset.core.config import load_params, parse_params
from negset.core.errors import NegsetError
from tests.conftest import REPO


@pytest.fixture
def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def errors_for(raw) -> str:
    with pytest.raises(NegsetError) as info:
        parse_params(raw)
    return str(info.value)


def test_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.ingest.target == ["person"]
    assert params.select.size_for(16) == params.select.count


def test_unknown_key_names_closest_valid_key(raw):
    raw["select"]["cuont"] = 3
    msg = errors_for(raw)
    assert "select.cuont: unknown key; did you mean 'count'?" in msg


def test_unknown_nested_key(raw):
    raw["tag"]["lighting"]["dark_bellow"] = 10
    assert "tag.lighting.dark_bellow: unknown key; did you mean 'dark_below'?" in errors_for(raw)


def test_wrong_type_names_key_and_value(raw):
    raw["select"]["count"] = "many"
    msg = errors_for(raw)
    assert "select.count" in msg and "integer" in msg and "'many'" in msg


def test_missing_required_key(raw):
    del raw["ingest"]["target"]
    assert "ingest.target: required key is missing" in errors_for(raw)


def test_cross_field_rule(raw):
    raw["select"]["count"] = None
    raw["select"]["ratio"] = None
    assert "set 'count'" in errors_for(raw)
    bad = copy.deepcopy(raw)
    bad["ingest"]["positives"] = {"format": "yolo", "path": "labels", "images": "images"}
    assert "needs 'classes'" in errors_for(bad)


def test_ratio_sizes_the_set(raw):
    raw["select"]["count"] = None
    raw["select"]["ratio"] = 0.25
    assert parse_params(raw).select.size_for(40) == 10


def test_target_accepts_a_single_name(raw):
    raw["ingest"]["target"] = "dog"
    assert parse_params(raw).ingest.target == ["dog"]


def test_cli_reports_bad_parameter_without_traceback(tmp_path, raw):
    raw["embed"]["batch_size"] = -4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "negset", "--params", str(tmp_path / "params.yaml"), "check"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "embed.batch_size" in proc.stderr and "greater than or equal to 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_params_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "negset", "--params", str(tmp_path / "nope.yaml"), "select"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "nope.yaml: parameters file not found" in proc.stderr
    assert "Traceback" not in proc.stderr
