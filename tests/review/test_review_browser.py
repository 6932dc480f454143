"""`negset review` driven in a real headless Chromium on a built COCO128 project (target dog, the labels
of every other dog image removed, so the quarantine has real suspected positives).

Keyboard and click decisions land in reviews.csv, a second tab's decisions are kept, a reload shows them,
another local page cannot write; then `negset select` honours the decisions (the reviewed-negative quarantined
image is eligible again, the reviewed-positive one is out for good and listed for labelling, the reasons name
the review); and 500 cards load page by page (the time is printed)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from negset.core.layout import Layout
from negset.review.decisions import HEADER, read_review_rows, read_reviews
from tests.conftest import COCO128, copy_built, tag_project
from tests.review.conftest import review_server
from tests.support.browser import open_tab


@pytest.fixture(scope="module")
def reviewed_project(tmp_path_factory, request):
    """COCO128 built through report (target dog, 5 of 10 dog images unlabelled); the demo without COCO128."""
    if not COCO128.is_dir():
        built = request.getfixturevalue("built_project")
        return copy_built(built, tmp_path_factory.mktemp("review-demo") / "proj")
    from negset.core.config import load_params
    from negset.export import step as export
    from negset.report import step as report
    from negset.select import step as select

    root = tmp_path_factory.mktemp("review-coco128")
    labels = root / "labels"
    shutil.copytree(COCO128 / "labels", labels)
    dog = (COCO128 / "classes.txt").read_text().splitlines().index("dog")
    dogs = sorted(p for p in labels.glob("*.txt") if any(l.split() and int(l.split()[0]) == dog for l in p.read_text().splitlines()))
    for p in dogs[::2]:
        p.unlink()
    layout, _ = tag_project(root, f"""ingest:
  target: dog
  positives: {{format: yolo, path: labels, images: {COCO128 / 'images'}, classes: {COCO128 / 'classes.txt'}}}
select:
  count: 30
""")
    params = load_params(root / "params.yaml")
    for step in (select, export, report):
        step.run(params, layout)
    (root / "reviews.csv").write_text(HEADER)
    return root


def rows(root: Path):
    return read_review_rows(root / "reviews.csv")


def wait_rows(root: Path, n: int, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while len(rows(root)) < n:
        assert time.monotonic() < deadline, f"reviews.csv has {len(rows(root))} rows, expected {n}"
        time.sleep(0.05)
    return rows(root)


CARDS_READY = "document.querySelectorAll('article.card').length > 0 && !!document.querySelector('article.current')"


def test_keyboard_clicks_two_tabs_reload_and_refusals(browser, reviewed_project, capsys):
    root = reviewed_project
    with review_server(root, "--reviewer", "ana", "--hardest", "5") as (url, _):
        tab = open_tab(browser, url)
        tab.wait(CARDS_READY)
        queue = tab.eval("state.queue")
        first = tab.eval("state.cards.map(c => c.sha256)")
        assert queue == ("quarantine" if COCO128.is_dir() else "audit") and len(first) >= 3
        tab.wait("[...document.querySelectorAll('article.card img')].slice(0, 2).every(i => i.complete && i.naturalWidth > 0)")
        # the nearest positive beside each image; the best-matching crop drawn on it when regions were embedded
        if (root / "data" / "embed" / "regions.parquet").exists():
            assert tab.eval("document.querySelectorAll('article.card .subject .box.crop').length") >= 1
        assert "nearest positive: cosine" in tab.eval("document.querySelector('article.card .nearest figcaption').textContent")

        # keyboard: n on the first card (the page moves on), t on the second, u on the third
        tab.key("n")
        got = wait_rows(root, 1)
        assert (got[0].sha256, got[0].decision, got[0].queue, got[0].reviewer) == (first[0], "no_target", queue, "ana")
        tab.wait("state.current === 1")
        tab.key("t")
        tab.wait("state.current === 2")
        tab.key("u")
        got = wait_rows(root, 3)
        assert [(g.sha256, g.decision) for g in got] == [(first[0], "no_target"), (first[1], "contains_target"), (first[2], "unsure")]
        # arrows move, z undoes the last decision (a `cleared` row: no decision again)
        at = min(3, len(first) - 1)  # the page moves on after each key decision, up to the last card
        tab.wait(f"state.current === {at}")
        tab.key("ArrowLeft")
        tab.wait(f"state.current === {at - 1}")
        tab.key("ArrowRight")
        tab.wait(f"state.current === {at}")
        tab.key("z")
        got = wait_rows(root, 4)
        assert (got[3].sha256, got[3].decision) == (first[2], "cleared")
        assert first[2] not in read_reviews(root / "reviews.csv")
        tab.wait(f"!document.querySelector('article[data-sha=\"{first[2]}\"]').classList.contains('d-unsure')")

        # a click on another queue's tab and on a card's button
        tab.click('nav button[data-queue="audit"]')
        tab.wait("state.queue === 'audit' && state.cards.length > 1")
        audit = tab.eval("state.cards.map(c => c.sha256)")
        tab.click(f'article[data-sha="{audit[1]}"] button[data-d="contains_target"]')
        got = wait_rows(root, 5)
        assert (got[4].sha256, got[4].decision, got[4].queue) == (audit[1], "contains_target", "audit")
        tab.wait(f"document.querySelector('article[data-sha=\"{audit[1]}\"]').classList.contains('d-contains_target')")

        # a second tab decides too: nothing of either is lost, and the first tab sees it (polling)
        tab2 = open_tab(browser, url + "#audit")
        tab2.wait(CARDS_READY)
        tab2.key("ArrowRight")
        tab2.key("ArrowRight")
        tab2.wait("state.current === 2")
        tab2.key("n")
        got = wait_rows(root, 6)
        assert (got[5].sha256, got[5].decision) == (audit[2], "no_target")
        tab.wait(f"document.querySelector('article[data-sha=\"{audit[2]}\"]').classList.contains('d-no_target')", timeout=15)
        tab.key("n")  # the first tab's current card is still audit[1]: back to no_target
        got = wait_rows(root, 7)
        assert (got[6].sha256, got[6].decision) == (audit[1], "no_target")

        # a reload shows every decision in force, from both tabs
        tab.reload()
        tab.wait("state.queue === 'audit' && state.cards.length > 2")
        painted = tab.eval("Object.fromEntries([...document.querySelectorAll('article.card')].map(a => "
                           "[a.dataset.sha, ['no_target','contains_target','unsure'].find(d => a.classList.contains('d-' + d)) || null]))")
        assert painted[audit[1]] == "no_target" and painted[audit[2]] == "no_target"
        in_force = read_reviews(root / "reviews.csv")
        audited = [r for r in in_force.values() if r.queue == "audit"]
        progress = tab.eval("document.querySelector('#progress-text').textContent")
        assert progress.startswith(f"audit: {len(audited)} of ")
        tab.click(f'nav button[data-queue="{queue}"]')
        tab.wait(f"state.queue === '{queue}' && state.cards.length > 2")
        tab.wait(f"document.querySelector('article[data-sha=\"{first[1]}\"]').classList.contains('d-contains_target')")
        k = sum(r.decision == "contains_target" for r in audited)
        assert tab.eval("document.querySelector('#audit').textContent").startswith(
            f"Audit: {k} of {len(audited)} audited contain the target")

        # the page's own write without its token, and another local page's writes, are refused
        status = tab.eval(f"fetch('/api/decide', {{method: 'POST', headers: {{'Content-Type': 'application/json'}}, "
                          f"body: JSON.stringify({{sha256: '{audit[0]}', decision: 'contains_target', queue: 'audit'}})}}).then(r => r.status)",
                          await_promise=True)
        assert status == 403
        before = (root / "reviews.csv").read_bytes()
        evil_dir = root / "evil"
        evil_dir.mkdir(exist_ok=True)
        (evil_dir / "index.html").write_text(
            "<!DOCTYPE html><html><body><script>"
            f"const t = '{url}api/decide', b = JSON.stringify({{sha256: '{audit[0]}', decision: 'contains_target', queue: 'audit'}});"
            "Promise.allSettled(["
            " fetch(t, {method: 'POST', mode: 'no-cors', body: b}),"
            " fetch(t, {method: 'POST', headers: {'Content-Type': 'application/json', 'X-Negset-Token': 'guess'}, body: b}),"
            f" fetch('{url}api/state').then(r => r.json())"
            "]).then(rs => { window.result = rs.map(r => r.status); });"
            "</script></body></html>")
        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = lambda *a, **k: Quiet(*a, directory=str(evil_dir), **k)  # noqa: E731
        evil = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            bad = open_tab(browser, f"http://127.0.0.1:{evil.server_address[1]}/index.html")
            outcome = bad.wait("window.result")
            assert outcome[1:] == ["rejected", "rejected"]  # no CORS: the token guess is blocked, the state unreadable
            bad.close()
        finally:
            evil.shutdown()
        time.sleep(0.5)
        assert (root / "reviews.csv").read_bytes() == before
        for t in (tab, tab2):
            assert [e for e in t.errors if "403" not in e] == []
        shot = tab.screenshot()
        keep = os.environ.get("NEGSET_TEST_ARTIFACTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / "review.png").write_bytes(shot)
        from PIL import ImageStat

        im = Image.open(io.BytesIO(shot))
        assert im.size == (1280, 900) and max(ImageStat.Stat(im.convert("L")).stddev) > 20
        tab2.close()
        tab.close()
    said = select_honours_the_reviews(root, quarantine_queue=queue == "quarantine")
    with capsys.disabled():
        print("\nnegset select after the review:\n  " + "\n  ".join(said))


def select_honours_the_reviews(root: Path, quarantine_queue: bool) -> list[str]:
    """`negset select` after the decisions: no_target spares the quarantine, contains_target is reviewed_positive."""
    before = {r["sha256"]: r["rule"] for r in pq.read_table(root / "data/select/rejected.parquet").to_pylist()}
    done = subprocess.run([sys.executable, "-m", "negset", "--no-prefect", "--params", str(root / "params.yaml"), "select"],
                          cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    in_force = read_reviews(root / "reviews.csv")
    sel = root / "data" / "select"
    status = {r["sha256"]: r["status"] for r in pq.read_table(sel / "scores.parquet").to_pylist()}
    rejected = {r["sha256"]: r for r in pq.read_table(sel / "rejected.parquet").to_pylist()}
    reasons = {r["sha256"]: r["reason"] for r in pq.read_table(sel / "selection.parquet").to_pylist()}
    with open(sel / "new_positives.csv", newline="") as fh:
        listed = {r["sha256"]: r for r in csv.DictReader(fh)}
    spared = [s for s, r in in_force.items() if r.decision == "no_target" and before.get(s) == "quarantine"]
    positive = [s for s, r in in_force.items() if r.decision == "contains_target"]
    if quarantine_queue:  # COCO128: a quarantined image reviewed each way (the demo has no quarantine)
        assert spared and positive
    for s in spared:
        assert status[s] in ("chosen", "eligible"), (s, status[s], rejected.get(s))
        if status[s] == "chosen":
            assert reasons[s].endswith(f"suspected positive (quarantine) cleared: {in_force[s].describe()}")
    for s in positive:
        assert rejected[s]["rule"] == "reviewed_positive" and status[s] == "reviewed_positive"
        assert in_force[s].describe() in rejected[s]["reason"] and "by ana on " in rejected[s]["reason"]
        assert (listed[s]["reviewer"], listed[s]["time"]) == ("ana", in_force[s].time)
    assert set(listed) == set(positive)
    return ([f"{s[:12]} was quarantine, now {status[s]}: {reasons.get(s, '(not chosen)')}" for s in spared]
            + [f"{s[:12]} {rejected[s]['rule']}: {rejected[s]['reason']}" for s in positive])


def fake_project(root: Path, n: int) -> Layout:
    """A project of n chosen negatives in the real file formats (images, objects, manifest), no embeddings."""
    layout = Layout.at(root)
    rng = np.random.default_rng(0)
    rows, manifest = [], []
    for i in range(n):
        arr = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).resize((640, 480)).save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        layout.object_path(sha).parent.mkdir(parents=True, exist_ok=True)
        layout.object_path(sha).write_bytes(data)
        uri = f"pool/img_{i:04d}.jpg"
        rows.append(dict(sha256=sha, uri=uri, role="candidate", width=640, height=480, format="JPEG"))
        manifest.append(dict(uri=uri, sha256=sha, stratum="normal | bg0 | none", pos_similarity=float(rng.random()),
                             reason=f"context negative {i}"))
    layout.ingest.mkdir(parents=True, exist_ok=True)
    layout.negatives.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), layout.ingest / "images.parquet")
    pq.write_table(pa.Table.from_pylist(manifest), layout.negatives / "manifest.parquet")
    return layout


def test_five_hundred_cards_load_page_by_page(browser, tmp_path, capsys):
    from negset.review.server import ReviewApp, make_server

    layout = fake_project(tmp_path / "big", 500)
    app = ReviewApp(layout, "thing", reviewer="t", audit=500)
    server = make_server(app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{app.port}/#audit"
    try:
        start = time.monotonic()
        tab = open_tab(browser, url)
        tab.wait("document.querySelectorAll('article.card').length >= 60 && "
                 "[...document.images].filter(i => i.getBoundingClientRect().top < innerHeight).every(i => i.complete && i.naturalWidth > 0)")
        first = time.monotonic() - start
        assert tab.eval("document.querySelectorAll('article.card').length") < 500  # lazily: not all at once
        deadline = time.monotonic() + 120
        while tab.eval("document.querySelectorAll('article.card').length") < 500:
            assert time.monotonic() < deadline, tab.eval("[document.querySelectorAll('article.card').length, "
                                                         "state.loading, state.total, document.querySelector('#more').textContent]")
            tab.eval("window.scrollTo(0, document.body.scrollHeight)")
            time.sleep(0.05)
        tab.wait("[...document.images].filter(i => { const r = i.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; })"
                 ".every(i => i.complete && i.naturalWidth > 0)")
        total = time.monotonic() - start
        assert tab.eval("document.querySelector('#more').textContent") == "all 500 cards"
        loaded = tab.eval("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
        assert tab.errors == []
        tab.close()
    finally:
        server.shutdown()
        server.server_close()
    with capsys.disabled():
        print(f"\nreview page, 500 cards: first screen (60 cards, visible images) in {first:.2f}s; "
              f"all 500 cards scrolled in and the last screen's images shown in {total:.2f}s ({loaded} thumbnails decoded)")
    assert first < 20 and total < 90
