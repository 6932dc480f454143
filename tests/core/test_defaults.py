"""Defaults that hold: every section optional, `select: {}` is 8 negatives, ratio alone is per positive."""

from __future__ import annotations

import subprocess
import sys

import pytest

from negset.cli import _parser
from negset.core.config import Embed, Export, Select, Tag, parse_params
from negset.core.errors import NegsetError
from tests.conftest import REPO

MINIMAL = {"ingest": {"target": "person", "positives": {"format": "coco", "path": "a.json", "images": "img"}}}


def test_target_and_positives_alone_are_a_project():
    params = parse_params(MINIMAL)
    assert params.select == Select() and params.select.count == 8 and params.select.size_for(100) == 8
    assert (params.embed, params.tag, params.export) == (Embed(), Tag(), Export())
    assert params.ingest.sources == [] and params.ingest.include_positive_folders is False


@pytest.mark.parametrize("empty", [{}, None])
def test_an_empty_section_is_its_defaults(empty):
    raw = dict(MINIMAL, embed=empty, tag=empty, select=empty, export=empty)
    assert parse_params(raw) == parse_params(MINIMAL)


def test_ratio_alone_means_negatives_per_positive():
    params = parse_params(dict(MINIMAL, select={"ratio": 0.25}))
    assert params.select.count is None and params.select.size_for(40) == 10
    both = parse_params(dict(MINIMAL, select={"ratio": 0.25, "count": 3}))
    assert both.select.size_for(40) == 3  # count, when given, wins
    with pytest.raises(NegsetError, match="set 'count'"):
        parse_params(dict(MINIMAL, select={"count": None}))


def test_ingest_stays_required():
    with pytest.raises(NegsetError, match="ingest: required key is missing"):
        parse_params({"select": {}})
    with pytest.raises(NegsetError, match="ingest.positives: required key is missing"):
        parse_params({"ingest": {"target": "dog"}})


@pytest.mark.parametrize("option,value", [("--no-prefect", True), ("--json", True), ("-q", True),
                                          ("--params", "other.yaml"), ("--root", "/srv/p")])
@pytest.mark.parametrize("command", ["select", "refresh", "build", "export-coco", "init"])
def test_global_options_go_before_or_after_the_command(command, option, value):
    extra = [value] if isinstance(value, str) else []
    before = _parser().parse_args([option, *extra, command])
    after = _parser().parse_args([command, option, *extra])
    dest = {"-q": "quiet"}.get(option, option.lstrip("-").replace("-", "_"))
    assert getattr(before, dest) == getattr(after, dest) == value
    plain = _parser().parse_args([command])
    assert getattr(plain, dest) != value  # the sub-command's parser does not reset a value given before it


def test_refresh_no_prefect_after_the_command_runs_the_library_path(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "negset", "refresh", "--no-prefect"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    # accepted (not an argparse usage error, exit 2 with "unrecognized"), and refused for the project's state
    assert "unrecognized arguments" not in proc.stderr
    assert proc.returncode == 2 and "not a git repository" in proc.stderr and "Traceback" not in proc.stderr
