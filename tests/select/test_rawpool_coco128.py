"""A raw, unlabelled COCO128 pool (issue 16's setup, one split): no target photo among the negatives,
and the quotas work without labels (picks over several strata and all three bands, not only the fill).

Positives: a seeded half of the dog photos, labelled as YOLO; candidates: every other photo, the other
dog photos included, unlabelled, in a folder of their own; the shipped params.yaml with select.ratio 2
(``benchmarks/rawpool_coco128.py`` builds the projects). Slow: the cold cache costs one model pass of
embed (with regions) and of detect (with tiles) over the 128 photos; the run without detector reuses it.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from benchmarks.rawpool_coco128 import build, make_project, measure, truth
from negset.core import parquet as pq
from negset.core.layout import Layout
from negset.select.bands import BANDS
from tests.conftest import COCO128

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (COCO128 / "images").is_dir(), reason=f"COCO128 not found at {COCO128}"),
]

TARGET, SEED = "dog", 0


@pytest.fixture(scope="module")
def rawpool(tmp_path_factory):
    """(labels, split, project with the shipped detector, project with detect off): one build each."""
    work = tmp_path_factory.mktemp("rawpool")
    _, labels = truth(COCO128)
    out = {}
    for detector in (True, False):
        root = work / ("det" if detector else "nodet")
        split = make_project(root, COCO128, labels, TARGET, SEED, detector, work / "cache")
        build(root)
        out[detector] = root
    return labels, split, out[True], out[False]


def selection(root):
    return pq.read_table(Layout.at(root).select / "selection.parquet").to_pylist()


def test_no_target_photo_among_the_negatives_of_a_raw_pool(rawpool):
    labels, split, root, _ = rawpool
    m = measure(root, labels, TARGET, split)
    chosen = [r["uri"] for r in selection(root)]
    assert m["chosen"] == len(chosen) == 8  # ratio 2 x 4 positives
    assert m["contaminated"] == 0, [u for u in chosen if TARGET in labels[u.rsplit("/", 1)[-1].rsplit(".", 1)[0]]]
    # the hidden dog photos are held back for review, most by the detector
    assert m["hidden_quarantined"] / m["hidden"] >= 0.9 and m["hidden_by_detector"] >= 1
    rej = pq.read_table(Layout.at(root).select / "rejected.parquet").to_pylist()
    det = [r for r in rej if r["rule"] == "detected_target"]
    assert det and all("yolox_nano detects" in r["reason"] and "in box [" in r["reason"] for r in det)
    quarantine = (Layout.at(root).select / "quarantine.csv").read_text()
    assert "detected_target" in quarantine


def test_quotas_work_on_a_raw_pool_with_and_without_the_detector(rawpool):
    _, _, with_det, without = rawpool
    for root in (with_det, without):
        sel = selection(root)
        quota = [r for r in sel if r["rule"] == "quota"]
        # the detector distractors (up to half, with the detector) come first; with the quota picks they span the bands
        offered = [r for r in sel if r["rule"] in ("quota", "distractor")]
        assert len({r["stratum"] for r in quota}) >= 2 and {r["band"] for r in offered} == set(BANDS), Counter(
            (r["rule"], r["band"], r["stratum"]) for r in sel)
    # with the detector, occlusion comes from its boxes and stays a stratum axis
    summary = json.loads((Layout.at(with_det).select / "summary.json").read_text())
    assert summary["axes_used"] == ["lighting", "background", "occlusion"] and not summary["warnings"]
    # without it, occlusion is unknown for every candidate: left out of the quotas, and said so
    summary = json.loads((Layout.at(without).select / "summary.json").read_text())
    assert summary["axes_used"] == ["lighting", "background"]
    assert summary["axes_dropped"][0]["axis"] == "occlusion" and "occlusion" in summary["warnings"][0]
