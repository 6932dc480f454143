"""select honours reviews.csv: no_target spares a suspected positive, contains_target leaves an image out for
good (rule reviewed_positive, new_positives.csv and .coco.json), decisions on other images are kept and ignored."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from negset.core.config import Select, load_params
from negset.core.layout import Layout
from negset.review.decisions import HEADER, Review, append_reviews, read_reviews
from negset.select import rules
from negset.select.pool import Pool
from negset.select.reviewed import reviewed_in_pool
from negset.select.step import choose
from tests.conftest import copy_built

T = "2025-01-31T12:00:00Z"


def _review(sha, decision, queue="quarantine", who="ana"):
    return Review(sha, f"img/{sha[:2]}.jpg", decision, queue, who, T)


@pytest.fixture
def suspect_pool():
    """6 positives around one direction, 3 unlabelled candidates near them (quarantined), 8 far ones."""
    rng = np.random.default_rng(7)
    d = 16

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    base = unit(rng.standard_normal(d))
    V = np.vstack([unit(base + 0.35 * rng.standard_normal((6, d))), unit(base + 0.35 * rng.standard_normal((3, d))),
                   unit(rng.standard_normal((8, d)))]).astype(np.float16)
    n = len(V)
    return Pool(
        sha256=np.asarray([f"{i:02d}" + "cd" * 31 for i in range(n)], dtype=object), vectors=V,
        positive=np.arange(n) < 6, has_target=np.zeros(n, bool), stratum=np.zeros(n, np.int32), stratum_names=["all"],
        background=np.zeros(n, np.int64), uri=np.asarray([f"img/{i:02d}.jpg" for i in range(n)], dtype=object),
        labelled=np.zeros(n, bool),
    )


CFG = Select(count=20, context={"irrelevant_below_percentile": 0})


def test_reviews_spare_the_quarantine_and_keep_reviewed_positives_out(suspect_pool):
    pool = suspect_pool
    plain = choose(pool, CFG, 20)
    assert plain.ledger.status()[6:9].tolist() == ["quarantine"] * 3  # the suspects, without reviews
    sha = pool.sha256
    reviews = {
        sha[6]: _review(sha[6], "no_target"),
        sha[7]: _review(sha[7], "contains_target"),
        sha[8]: _review(sha[8], "unsure"),
        sha[12]: _review(sha[12], "contains_target", "audit", "bo"),  # a chosen negative the audit found the target in
        sha[13]: _review(sha[13], "no_target", "audit"),
        sha[0]: _review(sha[0], "no_target"),  # a positive: not a candidate, ignored
        "ff" * 32: _review("ff" * 32, "contains_target"),  # no longer in the pool: ignored
    }
    reviewed = reviewed_in_pool(pool, reviews)
    choice = choose(pool, CFG, 20, reviewed)
    status, led = choice.ledger.status(), choice.ledger
    assert status[6] == "" and 6 in choice.rows  # eligible again, and chosen (the pool is short)
    assert status[7] == status[12] == "reviewed_positive" and led.score[7] == 1.0
    assert status[8] == "quarantine"  # unsure changes nothing
    assert set(choice.rows.tolist()) == {6, 9, 10, 11, 13, 14, 15, 16}
    reason = dict(zip(choice.rows.tolist(), choice.reasons))
    assert reason[6].endswith(f"; suspected positive (quarantine) cleared: reviewed as no_target by ana on {T} (quarantine)")
    assert reason[13].endswith(f"; reviewed as no_target by ana on {T} (audit)")
    assert "reviewed" not in reason[9]
    rule = rules.BY_NAME["reviewed_positive"]
    said = rule.explain(12, 1.0, None, choice.evidence, {})
    assert said == f"contains the target: reviewed as contains_target by bo on {T} (audit); listed in new_positives.csv to be labelled"
    assert reviewed.counts() == dict(reviews_applied=5, reviews_ignored=2,
                                     reviews_by_decision={"contains_target": 2, "no_target": 2, "unsure": 1},
                                     reviews_cleared={"quarantine": 1})


def test_no_target_does_not_override_a_fact():
    """A copy of a positive reviewed no_target is still a near-duplicate (a leak, not a suspicion)."""
    rng = np.random.default_rng(3)
    V = rng.standard_normal((6, 16)).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    V[4] = V[0]
    n = len(V)
    pool = Pool(sha256=np.asarray([f"{i:02d}" + "ef" * 31 for i in range(n)], dtype=object), vectors=V.astype(np.float16),
                positive=np.arange(n) < 2, has_target=np.zeros(n, bool), stratum=np.zeros(n, np.int32),
                stratum_names=["all"], background=np.zeros(n, np.int64),
                uri=np.asarray([f"img/{i:02d}.jpg" for i in range(n)], dtype=object), labelled=np.ones(n, bool))
    choice = choose(pool, CFG, 4, reviewed_in_pool(pool, {pool.sha256[4]: _review(pool.sha256[4], "no_target")}))
    assert choice.ledger.status()[4] == "near_duplicate"


def test_select_step_writes_new_positives_and_counts_the_reviews(built_project, tmp_path):
    """The real step on the demo: reviews.csv at the project root drives rejected / selection / new_positives."""
    from negset.select import step

    root = copy_built(built_project, tmp_path / "proj")
    layout = Layout.at(root)
    chosen = pq.read_table(layout.select / "selection.parquet").to_pylist()
    images = {r["sha256"]: r for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}
    out_sha, kept_sha = chosen[0]["sha256"], chosen[1]["sha256"]
    (root / "reviews.csv").write_text(HEADER)
    append_reviews(root / "reviews.csv", [
        Review(out_sha, chosen[0]["uri"], "no_target", "audit", "ana", T),
        Review(kept_sha, chosen[1]["uri"], "no_target", "audit", "ana", T),
        Review("0" * 64, "gone.jpg", "contains_target", "audit", "ana", T),
        Review(out_sha, chosen[0]["uri"], "contains_target", "audit", "bo", "2025-02-01T08:00:00Z"),  # the last row wins
    ])
    assert read_reviews(root / "reviews.csv")[out_sha].reviewer == "bo"
    summary = step.run(load_params(root / "params.yaml"), layout)
    assert (summary["reviews_applied"], summary["reviews_ignored"], summary["new_positives"]) == (2, 1, 1)
    assert summary["rejected_by_rule"]["reviewed_positive"] == 1
    assert json.loads((layout.select / "summary.json").read_text())["reviews_ignored"] == 1
    rejected = {r["sha256"]: r for r in pq.read_table(layout.select / "rejected.parquet").to_pylist()}
    assert rejected[out_sha]["rule"] == "reviewed_positive"
    assert "by bo on 2025-02-01T08:00:00Z (audit)" in rejected[out_sha]["reason"]
    selection = {r["sha256"]: r for r in pq.read_table(layout.select / "selection.parquet").to_pylist()}
    assert out_sha not in selection
    assert selection[kept_sha]["reason"].endswith(f"; reviewed as no_target by ana on {T} (audit)")
    with open(layout.select / "new_positives.csv", newline="") as fh:
        listed = list(csv.DictReader(fh))
    assert listed == [dict(sha256=out_sha, uri=images[out_sha]["uri"], reviewer="bo", time="2025-02-01T08:00:00Z",
                           queue="audit")]
    coco = json.loads((layout.select / "new_positives.coco.json").read_text())
    assert coco["annotations"] == [] and [c["name"] for c in coco["categories"]] == load_params(root / "params.yaml").ingest.target
    (im,) = coco["images"]
    assert (im["sha256"], im["width"], im["height"]) == (out_sha, images[out_sha]["width"], images[out_sha]["height"])
    assert (root / im["file_name"]).is_file() or im["file_name"].startswith("/")
