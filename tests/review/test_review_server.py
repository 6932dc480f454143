"""`negset review` over HTTP on the built demo: images by sha256 only, token-guarded writes,
decisions durable across a killed server; then metrics.json, the report and a release read them."""

from __future__ import annotations

import json
import os
import signal
import sys

import pyarrow.parquet as pq
import pytest

from negset.core.config import load_params
from negset.core.layout import Layout
from negset.review.decisions import HEADER, read_review_rows, read_reviews
from tests.conftest import copy_built, run
from tests.review.conftest import decide, get_json, page_token, request, review_server


@pytest.fixture
def demo(built_project, tmp_path):
    return copy_built(built_project, tmp_path / "demo")


def test_review_serves_by_sha256_only_and_guards_writes(demo):
    layout = Layout.at(demo)
    reviews = demo / "reviews.csv"
    assert reviews.read_text() == HEADER  # the repo ships a header-only file (a dvc.yaml dependency)
    manifest = pq.read_table(layout.negatives / "manifest.parquet").to_pylist()
    with review_server(demo, "--reviewer", "ana", "--audit", "5") as (url, proc):
        token = page_token(url)
        state = get_json(url, "/api/state")
        assert state["queues"]["audit"]["total"] == 5 and state["reviewer"] == "ana"
        cards = get_json(url, "/api/cards?queue=audit&offset=0&limit=3")
        assert cards["total"] == 5 and len(cards["cards"]) == 3
        rest = get_json(url, "/api/cards?queue=audit&offset=3&limit=3")["cards"]
        assert len(rest) == 2 and not {c["sha256"] for c in rest} & {c["sha256"] for c in cards["cards"]}
        card = cards["cards"][0]
        assert card["sha256"] in {m["sha256"] for m in manifest} and card["reason"]
        assert card["nearest"]["similarity"] > 0 and card["boxes"][0]["kind"] == "detection"  # the demo runs detect

        status, headers, body = request(url, "GET", f"/image/{card['sha256']}")
        assert status == 200 and body == layout.object_path(card["sha256"]).read_bytes()
        assert headers["Content-Type"] == "image/jpeg"
        status, headers, body = request(url, "GET", f"/thumb/{card['sha256']}")
        assert status == 200 and body[:2] == b"\xff\xd8" and len(body) < len(layout.object_path(card["sha256"]).read_bytes())

        # only sha256 names reach a file; paths of any kind are refused
        for path in ("/image/../../params.yaml", "/image/%2e%2e/%2e%2e/params.yaml", "/static/../server.py",
                     "/image//etc/passwd", "/image/%2Fetc%2Fpasswd", "/etc/passwd", "/params.yaml",
                     "/api/cards?queue=../../etc", "/api/cards?queue=/etc/passwd", "/image/..%5c..%5cparams.yaml",
                     f"/image/{'0' * 64}", "/thumb/params.yaml"):
            status, _, body = request(url, "GET", path)
            assert status in (400, 404), path
            assert b"ingest:" not in body and b"root:" not in body, path
        status, _, _ = request(url, "GET", "/api/state", headers={"Host": "attacker.example:80"})
        assert status == 403  # DNS rebinding: another name for 127.0.0.1 gets nothing

        # writes need the page's token and this origin
        before = reviews.read_bytes()
        for tok, origin in ((None, None), ("wrong", None), (token, "http://evil.example")):
            status, _, body = decide(url, tok, card["sha256"], "contains_target", "audit", origin=origin)
            assert status == 403, body
        status, _, _ = decide(url, token, card["sha256"], "maybe", "audit")
        assert status == 400
        status, _, _ = decide(url, token, "f" * 64, "no_target", "audit")
        assert status == 404
        assert reviews.read_bytes() == before

        status, _, body = decide(url, token, card["sha256"], "no_target", "audit", origin=url.rstrip("/"))
        assert status == 200, body
        reply = json.loads(body)
        assert reply["row"]["reviewer"] == "ana" and reply["queues"]["audit"]["no_target"] == 1
        for c in rest:
            assert decide(url, token, c["sha256"], "unsure", "audit")[0] == 200
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown: what was acknowledged is on disk
        proc.wait()
    got = read_reviews(reviews)
    assert got[card["sha256"]].decision == "no_target" and got[card["sha256"]].uri == card["uri"]
    assert [got[c["sha256"]].decision for c in rest] == ["unsure", "unsure"]
    # a restarted server shows them
    with review_server(demo, "--audit", "5") as (url, _):
        state = get_json(url, "/api/state")
        assert state["queues"]["audit"]["decided"] == 3 and state["decisions"][card["sha256"]] == "no_target"


def test_a_bad_reviews_file_or_port_stops_with_one_line(demo):
    (demo / "reviews.csv").write_text(HEADER + f"{'a' * 64},x.jpg,perhaps,audit,ana,2025-01-31T12:00:00Z\n")
    proc = run([sys.executable, "-m", "negset", "review"], demo, check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"negset: error: {demo / 'reviews.csv'}:2: decision 'perhaps'")
    assert "Traceback" not in proc.stderr
    (demo / "reviews.csv").write_text(HEADER)
    manifest = demo / "data" / "negatives" / "manifest.parquet"
    saved = manifest.read_bytes()
    manifest.unlink()
    proc = run([sys.executable, "-m", "negset", "review"], demo, check=False, timeout=120)
    assert proc.returncode == 2 and "manifest.parquet: missing; `negset review` reviews a built project" in proc.stderr
    manifest.write_bytes(saved)
    with review_server(demo) as (url, _):
        port = url.rsplit(":", 1)[1].strip("/")
        proc = run([sys.executable, "-m", "negset", "review", "--port", port], demo, check=False, timeout=120)
        assert proc.returncode == 2 and f"127.0.0.1:{port}: cannot listen" in proc.stderr


def test_audit_reaches_metrics_report_and_release_summary(demo):
    """Decide every audited image, rebuild export and report: the bound is in all three places."""
    from negset.export import step as export
    from negset.report import step as report
    from negset.tools import release

    layout, params = Layout.at(demo), load_params(demo / "params.yaml")
    with review_server(demo, "--reviewer", "bo") as (url, _):
        token = page_token(url)
        cards = get_json(url, "/api/cards?queue=audit&limit=100")["cards"]
        assert len(cards) == 8  # the demo chose 8: the whole set is the sample
        for c in cards[:-1]:
            assert decide(url, token, c["sha256"], "no_target", "audit")[0] == 200
    export.run(params, layout)
    m = json.loads((layout.negatives / "metrics.json").read_text())
    assert m["audit"] == dict(planned=8, reviewed=7, audited=7, contain_target=0, unsure=0, unreviewed=1,
                              contamination=0.0, contamination_upper_95=0.3482, complete=False)
    assert m["reviews"]["decisions"] == 7 and m["reviews"]["quarantined"] == 0
    notes = release.summary_markdown(demo, release.Change(True, True, True, None), "negatives-20250131-1")
    assert ("**Released while the audit is incomplete.** Audit: 0 of 7 audited contain the target: "
            "contamination <= 34.8% at 95%; audit incomplete: 1 of the 8 sampled negatives not reviewed") in notes

    with review_server(demo, "--reviewer", "bo") as (url, _):
        assert decide(url, page_token(url), cards[-1]["sha256"], "contains_target", "audit")[0] == 200
    export.run(params, layout)
    report.run(params, layout)
    m = json.loads((layout.negatives / "metrics.json").read_text())
    assert (m["audit"]["audited"], m["audit"]["contain_target"], m["audit"]["complete"]) == (8, 1, True)
    page = (layout.negatives / "report.html").read_text()
    head = page[: page.index('<h2 id="strata">')]
    assert "\u2264 " + f"{100 * m['audit']['contamination_upper_95']:.1f}%" in head
    assert "contamination at 95%: 1 of 8 audited contain the target" in head
    assert "0 / 0</b><span>quarantine reviewed / quarantined" in head
    notes = release.summary_markdown(demo, release.Change(True, True, True, None), "negatives-20250131-2")
    assert "incomplete" not in notes and "Audit: 1 of 8 audited contain the target: contamination <= 47.1% at 95%." in notes
    assert len(read_review_rows(demo / "reviews.csv")) == 8


def test_suspects_decided_in_the_quarantine_stay_in_its_queue_and_progress(demo):
    """After a rebuild select lets a decided suspect go (quarantine.csv lists only what it holds back): the review
    queue still shows it as decided, after the held-back ones, and metrics.json's progress counts it."""
    import csv

    from negset.export.step import review_metrics
    from negset.review.decisions import Review, append_reviews
    from negset.review.queues import Project

    layout = Layout.at(demo)
    images = pq.read_table(layout.ingest / "images.parquet").to_pylist()
    cand = [r for r in images if r["role"] == "candidate"]
    held, cleared, confirmed = cand[0], cand[1], cand[2]
    positive = next(r for r in images if r["role"] == "positive")
    with open(layout.select / "quarantine.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uri", "sha256", "similarity", "rule", "reason"])
        w.writerow([held["uri"], held["sha256"], "0.61", "detected_target", "yolox_nano detects 'person' at 0.3"])
    append_reviews(demo / "reviews.csv", [
        Review(cleared["sha256"], cleared["uri"], "no_target", "quarantine", "ana", "2025-01-31T12:00:00Z"),
        Review(confirmed["sha256"], confirmed["uri"], "contains_target", "quarantine", "ana", "2025-01-31T11:00:00Z"),
        Review(positive["sha256"], positive["uri"], "no_target", "quarantine", "ana", "2025-01-31T10:00:00Z"),
    ])
    queue = Project(layout).queues["quarantine"]
    assert [c.sha256 for c in queue] == [held["sha256"], confirmed["sha256"], cleared["sha256"]]
    assert queue[0].reason == "yolox_nano detects 'person' at 0.3" and queue[0].similarity == 0.61
    assert queue[1].reason.startswith("suspected positive, decided: reviewed as contains_target by ana")
    assert queue[1].reason.endswith("left out, listed in new_positives.csv") and queue[2].reason.endswith("eligible again")
    negatives = [r["sha256"] for r in pq.read_table(layout.negatives / "manifest.parquet").to_pylist()]
    progress = review_metrics(layout, negatives)["reviews"]
    assert progress == dict(quarantined=3, quarantine_reviewed=2, quarantine_contains_target=1, quarantine_no_target=1,
                            decisions=3)
