"""Issue 18, case 4 (parameters): no quiet surprises in params.yaml."""

from __future__ import annotations

import copy
import sys

import pytest
import yaml

from negset.core.config import load_params, parse_params
from negset.core.errors import NegsetError
from tests.conftest import REPO, run

BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def parse_error(raw) -> str:
    with pytest.raises(NegsetError) as info:
        parse_params(raw)
    return str(info.value).splitlines()[0]


@pytest.mark.parametrize("key, value", [("count", True), ("count", False), ("top_k", True), ("ratio", True)])
def test_a_boolean_is_not_a_number(key, value):
    raw = copy.deepcopy(BASE)
    raw["select"][key] = value
    assert parse_error(raw) == f"params.yaml: select.{key}: expected a number, got a boolean ({str(value).lower()})"


def test_booleans_still_work_where_they_belong():
    raw = copy.deepcopy(BASE)
    raw["select"]["quarantine"]["enabled"] = False
    raw["export"]["copy_images"] = False
    params = parse_params(raw)
    assert params.select.quarantine.enabled is False and params.export.copy_images is False


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_no_infinite_or_nan_numbers(value):
    raw = copy.deepcopy(BASE)
    raw["select"]["count"], raw["select"]["ratio"] = None, value
    got = "inf" if value == float("inf") else "-inf" if value == float("-inf") else "nan"
    assert parse_error(raw) == f"params.yaml: select.ratio: Input should be a finite number, got {got}"


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    text = (REPO / "params.yaml").read_text()
    text = text.replace("  count: 8 ", "  count: 8\n  seed: 3\n  count: 20 ", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    first = text.splitlines().index("  count: 8") + 1
    with pytest.raises(NegsetError) as info:
        load_params(path)
    assert str(info.value).splitlines() == [
        f"params.yaml:{first + 2}: key 'count' is given twice (lines {first} and {first + 2}); YAML would keep only the last",
        "  hint: remove one of them",
    ]
    proc = run([sys.executable, "-m", "negset", "--params", str(path), "check"], REPO, check=False)
    assert proc.returncode == 2 and "key 'count' is given twice" in proc.stderr and "Traceback" not in proc.stderr


def test_the_same_key_in_two_sections_is_fine(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    params = load_params(path)  # seed is in tag.background and in select
    assert params.select.seed == 0 and params.tag.background.seed == 0


def test_a_syntax_error_shows_the_offending_line(tmp_path):
    """params.yaml is parsed with libyaml when PyYAML has it; its error is shown as the pure-Python parser words it."""
    path = tmp_path / "params.yaml"
    path.write_text("select:\n  count: [1, 2\n  seed: 3\n")
    with pytest.raises(NegsetError) as info:
        load_params(path)
    text = str(info.value)
    assert "not valid YAML" in text and "count: [1, 2" in text and "^" in text


def test_libyaml_reads_params_as_the_python_parser_does():
    from negset.core.config import FastSafeLoader

    text = (REPO / "params.yaml").read_text()
    assert yaml.load(text, Loader=FastSafeLoader) == BASE  # noqa: S506 - a SafeLoader
