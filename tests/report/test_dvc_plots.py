"""`dvc plots show` and `dvc metrics show` on a built project, rendered offline.

DVC fills the plot templates (negset/dvc_plots/) with the report's CSV files;
vl-convert (Vega-Lite bundled, no network) renders each spec to SVG, which
proves the spec DVC produces draws one bar per row.
"""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import BIN, copy_built, run

vl_convert = pytest.importorskip("vl_convert")


@pytest.fixture
def dvc_built(built_project, tmp_path):
    root = copy_built(built_project, tmp_path / "repo")
    run(["git", "init", "-q", "-b", "main"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    return root


def rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_dvc_plots_render_offline(dvc_built, tmp_path):
    root = dvc_built
    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], root).stdout)["data"]
    expected = {
        "data/negatives/plots/strata.csv": "Strata: share of positives and negatives",
        "data/negatives/plots/hardness.csv": "Hardness: similarity of the negatives to the positives",
    }
    assert set(shown) == set(expected)
    for name, title in expected.items():
        spec = shown[name][0]["content"]
        assert spec["encoding"]["color"]["field"] == "set"
        svg = vl_convert.vegalite_to_svg(spec)
        (tmp_path / (name.rsplit("/", 1)[1] + ".svg")).write_text(svg)
        assert title in svg
        assert svg.count('aria-roledescription="bar"') == len(rows(root / name))  # one bar per row
    strata = shown["data/negatives/plots/strata.csv"][0]["content"]["data"]["values"]
    assert {v["set"] for v in strata} == {"positives", "negatives"}

    run([str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "dvc_plots")], root)
    assert (tmp_path / "dvc_plots" / "index.html").is_file()


def test_dvc_metrics_show(dvc_built):
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], dvc_built).stdout)
    text = json.dumps(shown)
    metrics = json.loads((dvc_built / "data/negatives/metrics.json").read_text())
    assert f'"negatives": {metrics["negatives"]}' in text and f'"strata_tv_distance": {metrics["strata_tv_distance"]}' in text
