"""The HTML report and the DVC plot files, on the demo built once per session."""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from negset.core.layout import Layout
from negset.embed.store import read_embeddings
from tests.conftest import REPO, copy_built, run, write_params


@pytest.fixture
def built(built_project, tmp_path):
    return copy_built(built_project, tmp_path / "proj")


def negset(root, *args, check=True):
    return run([sys.executable, "-m", "negset", "--no-prefect", *args], root, check=check)


def html_of(root) -> str:
    return (root / "data" / "negatives" / "report.html").read_text(encoding="utf-8")


def test_report_is_one_self_contained_file(built_project):
    page = html_of(built_project)
    manifest = pq.read_table(built_project / "data/negatives/manifest.parquet").to_pylist()
    # nothing that a browser would fetch: every src is a data: URI, no stylesheet or script links
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    assert not re.search(r"<link\b|<script\b|@import|url\(", page)
    assert "img-src data:" in page and "default-src 'none'" in page  # CSP: the browser refuses anything else
    # every section is there, with charts and one thumbnail per negative at least
    for anchor in ("strata", "hardness", "thumbs", "hardest", "rejected", "quarantine", "run", "manifest"):
        assert f'id="{anchor}"' in page
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg"') >= 5  # 3 axes + strata + histogram
    assert len(set(srcs)) >= len(manifest)
    for row in manifest:
        assert row["uri"] in page
    run_info = json.loads((built_project / "data/negatives/run.json").read_text())
    assert run_info["model"]["weights_sha256"] in page and "selection seed" in page


def test_outputs_get_the_usual_permissions(built_project):
    """Atomic writes go through private temporary files; the results must not stay private (0600)."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    for rel in ("data/negatives/report.html", "data/negatives/manifest.parquet", "data/negatives/plots/strata.csv"):
        assert (built_project / rel).stat().st_mode & 0o777 == 0o666 & ~mask, rel
    assert (built_project / "data/negatives").stat().st_mode & 0o777 == 0o777 & ~mask


def test_hardest_negatives_sit_beside_their_nearest_positive(built_project):
    from negset.report import step as report

    layout = Layout.at(built_project)
    d = report.gather(layout)
    pairs = report.hardest(d)
    assert pairs and len(pairs) == min(report.HARDEST, len(d["manifest"]))
    shas, vectors = read_embeddings(layout)
    index = {s: i for i, s in enumerate(shas)}
    positives = [index[r["sha256"]] for r in d["images"] if r["role"] == "positive"]
    for p in pairs:
        sims = vectors[positives] @ vectors[index[p["sha256"]]]
        assert d["by_sha"][p["nearest_sha"]]["role"] == "positive"
        assert p["nearest_similarity"] == pytest.approx(float(sims.max()), abs=1e-5)
    assert [p["nearest_similarity"] for p in pairs] == sorted((p["nearest_similarity"] for p in pairs), reverse=True)
    page = html_of(built_project)
    section = page[page.index('id="hardest"') : page.index('id="rejected"')]
    assert section.count('<div class="pair">') == len(pairs)
    assert section.count("<img ") == 2 * len(pairs)


def test_plots_agree_with_metrics(built_project):
    folder = built_project / "data" / "negatives"
    metrics = json.loads((folder / "metrics.json").read_text())
    with open(folder / "plots" / "strata.csv", newline="") as fh:
        strata = list(csv.DictReader(fh))
    for row in strata:
        want = metrics["per_stratum"][row["stratum"]]["positives" if row["set"] == "positives" else "negatives"]
        assert int(row["count"]) == want
    for name in ("positives", "negatives"):
        assert sum(float(r["share"]) for r in strata if r["set"] == name) == pytest.approx(1.0, abs=1e-3)
    with open(folder / "plots" / "hardness.csv", newline="") as fh:
        hardness = list(csv.DictReader(fh))
    counts = Counter()
    for r in hardness:
        counts[r["set"]] += int(r["count"])
    assert counts["negatives"] == metrics["negatives"]
    images = pq.read_table(built_project / "data/ingest/images.parquet").to_pylist()
    eligible = sum(r["role"] == "candidate" and not r["has_target"] for r in images)
    assert counts["pool not chosen"] == eligible - metrics["negatives"]


def test_report_is_deterministic(built):
    before = html_of(built)
    proc = negset(built, "--json", "report")
    summary = json.loads(proc.stdout)
    quarantine = built / "data/select/quarantine.csv"
    expected = sum(1 for _ in csv.reader(quarantine.open())) - 1 if quarantine.exists() else None
    assert summary["negatives"] == 8 and summary["quarantined"] == expected
    assert html_of(built) == before


def test_rejected_and_quarantine_are_shown_and_text_is_escaped(built):
    images = built / "examples" / "coco-sample" / "images"
    (images / "notes<b>.jpg").write_text("not a picture <script>alert('x')</script>")
    negset(built, "-q", "ingest")  # real ingest: rejects the file by content
    rejected = pq.read_table(built / "data/ingest/rejected.parquet").to_pylist()
    assert [r["rule"] for r in rejected] == ["not_image"]
    chosen = pq.read_table(built / "data/negatives/manifest.parquet").to_pylist()
    with open(built / "data/select/quarantine.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sha256", "uri", "reason"])
        w.writerow([chosen[0]["sha256"], chosen[0]["uri"], "looks like a <script>alert(1)</script> person"])
    negset(built, "-q", "report")
    page = html_of(built)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "notes&lt;b&gt;.jpg" in page
    rej = page[page.index('id="rejected"') : page.index('id="quarantine"')]
    assert "not_image" in rej and "not an image" in rej
    quarantine = page[page.index('id="quarantine"') : page.index('id="run"')]
    assert quarantine.count("<img ") == 1 and "quarantined" in page


def test_report_without_a_build_names_the_missing_file(project):
    proc = negset(project, "report", check=False)
    assert proc.returncode == 2
    assert "manifest.parquet: missing" in proc.stderr and "negset export" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bar_chart_scales_to_the_largest_value():
    from negset.report.step import bar_chart

    svg = bar_chart("t", [("a", 0.5, 0.25), ("b", 0.0, 1.0)], ("positives", "negatives"))
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([\d.]+)"', svg)]
    assert widths[3] == max(widths) and widths[0] == pytest.approx(widths[3] / 2) and widths[1] == pytest.approx(widths[3] / 4)
    assert np.isclose(widths[2], 0.5)  # a zero is drawn as a hairline, not left out


def test_hardness_chart_shows_the_hardness_the_bands_used(built):
    """The chart bins select's ``hardness`` (scores.parquet), not the whole-image ``pos_similarity``."""
    from negset.report import step as report

    write_params(built, embed={"regions": 3})  # object hardness from region crops: the two differ
    for step in ("embed", "select", "report"):
        negset(built, "-q", step)
    built_project = built
    folder = built_project / "data"
    summary = json.loads((folder / "select" / "summary.json").read_text())
    assert summary["hardness"] == "regions"
    scores = pq.read_table(folder / "select" / "scores.parquet").to_pylist()
    chosen = [r for r in scores if r["status"] == "chosen"]
    rest = [r for r in scores if r["status"] not in ("chosen", "positive", "target_label")]
    with open(folder / "negatives" / "plots" / "hardness.csv", newline="") as fh:
        shown = [int(r["count"]) for r in csv.DictReader(fh) if r["set"] == "negatives"]

    def bins(key):
        edges, _ = report.histogram([r[key] for r in chosen + rest])
        return report.histogram([r[key] for r in chosen], lo=edges[0], hi=edges[-1])[1]

    assert shown == bins("hardness") != bins("pos_similarity")
    selection = {r["sha256"]: r["hardness"] for r in pq.read_table(folder / "select" / "selection.parquet").to_pylist()}
    assert {r["sha256"]: r["hardness"] for r in chosen} == selection
    page = html_of(built_project)
    section = page[page.index('id="hardness"') : page.index('id="thumbs"')]
    assert "object similarity" in section and "hardness: object similarity</text>" in section


def test_report_reads_select_scores_not_the_embeddings(built):
    """The report computes no similarity: without the embeddings it writes the same page; its code
    (what its dvc.yaml stage depends on) holds nothing of select or embed."""
    from tests.core.test_layering import stage_code

    before = html_of(built)
    for name in ("embeddings.parquet", "vectors.npy", "regions.parquet", "regions.npy"):
        (built / "data" / "embed" / name).unlink(missing_ok=True)
    negset(built, "-q", "report")
    assert html_of(built) == before
    code = {str(p.relative_to(REPO)) for p in stage_code("report")}
    assert not [p for p in code if p.startswith(("negset/select/", "negset/embed/"))], code
