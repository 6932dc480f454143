"""reviews.csv: last row wins, bad rows name their line, appends survive two writers and a kill."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from negset.core.errors import NegsetError
from negset.review.decisions import (
    HEADER,
    Review,
    append_reviews,
    ensure_file,
    read_review_rows,
    read_reviews,
)

A, B, C = "a" * 64, "b" * 64, "c" * 64
T = "2025-01-31T12:00:00Z"


def r(sha, decision, queue="audit", who="ana", uri=None):
    return Review(sha, uri or f"images/{sha[:3]}.jpg", decision, queue, who, T)


def test_last_row_per_image_wins_and_cleared_removes(tmp_path):
    path = tmp_path / "reviews.csv"
    assert read_reviews(path) == {}  # no file: no reviews
    assert ensure_file(path) and path.read_text() == HEADER and not ensure_file(path)
    append_reviews(path, [r(A, "contains_target"), r(B, "unsure", "quarantine")])
    append_reviews(path, [r(A, "no_target", who="bo"), r(C, "no_target"), r(C, "cleared")])
    got = read_reviews(path)
    assert set(got) == {A, B}
    assert got[A].decision == "no_target" and got[A].reviewer == "bo" and got[A].line == 4
    assert got[B].queue == "quarantine"
    assert got[A].describe() == f"reviewed as no_target by bo on {T} (audit)"
    assert len(read_review_rows(path)) == 5  # the history stays: one row per decision


def test_a_uri_with_commas_quotes_and_unicode_round_trips(tmp_path):
    path = tmp_path / "reviews.csv"
    odd = 's3://bucket/a "b", c/ünï.jpg'
    append_reviews(path, [r(A, "no_target", uri=odd)])
    assert read_reviews(path)[A].uri == odd


@pytest.mark.parametrize(
    "line,message",
    [
        (f"{A[:60]},x.jpg,no_target,audit,ana,{T}", "sha256 'aaaa"),
        (f"{A},x.jpg,maybe,audit,ana,{T}", "decision 'maybe' is not one of"),
        (f"{A},x.jpg,no_target,audit,ana,yesterday", "time 'yesterday' is not a UTC time"),
        (f"{A},x.jpg,no_target,Audit Queue,ana,{T}", "queue 'Audit Queue'"),
        (f"{A},x.jpg,no_target,audit,{T}", "expected 6 fields"),
    ],
)
def test_a_bad_row_names_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "reviews.csv"
    path.write_text(HEADER + f"{B},y.jpg,no_target,audit,ana,{T}\n" + line + "\n")
    with pytest.raises(NegsetError) as exc:
        read_reviews(path)
    text = str(exc.value).splitlines()[0]
    assert text.startswith(f"{path}:3: ") and message in text


def test_a_wrong_header_is_refused(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("sha,decision\n")
    with pytest.raises(NegsetError, match=r"reviews.csv:1: header should be sha256,uri,decision,queue,reviewer,time"):
        read_reviews(path)


def test_a_row_cut_short_is_skipped_then_repaired_and_a_hand_edit_without_newline_kept(tmp_path, caplog):
    path = tmp_path / "reviews.csv"
    append_reviews(path, [r(A, "no_target")])
    with open(path, "a") as fh:
        fh.write(f"{B},images/b.jpg,contains_tar")  # a writer killed mid-row (never acknowledged)
    assert set(read_reviews(path)) == {A}
    assert "incomplete last line" in caplog.text
    append_reviews(path, [r(C, "unsure")])  # the next append drops the torn bytes first
    assert set(read_reviews(path)) == {A, C}
    assert "contains_tar" not in path.read_text() and "dropped" in caplog.text
    with open(path, "a") as fh:
        fh.write(f"{B},images/b.jpg,no_target,audit,ana,{T}")  # a complete row, no final newline
    assert set(read_reviews(path)) == {A, B, C}
    append_reviews(path, [r(A, "cleared")])
    assert set(read_reviews(path)) == {B, C}


def _writer(path, tag, n):
    for i in range(n):
        sha = f"{tag}{i:063x}"
        append_reviews(path, [Review(sha, f"{tag}/{i}.jpg", "no_target", "audit", tag, T)])


def test_two_writers_lose_nothing_and_never_interleave(tmp_path):
    path = tmp_path / "reviews.csv"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, tag, 150)) for tag in ("d", "e")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = read_review_rows(path)
    assert len(rows) == 300 and len(read_reviews(path)) == 300
    assert path.read_text().count("sha256,uri") == 1  # one header, however the writers raced


KILL_LOOP = """
import sys
from negset.review.decisions import Review, append_reviews
path = sys.argv[1]
for i in range(100000):
    append_reviews(path, [Review(f"{i:064x}", f"x/{i}.jpg", "no_target", "audit", "k", "2025-01-31T12:00:00Z")])
    print(i, flush=True)  # acknowledged: on disk
"""


def test_a_killed_writer_loses_no_acknowledged_row(tmp_path):
    path = tmp_path / "reviews.csv"
    proc = subprocess.Popen([sys.executable, "-c", KILL_LOOP, str(path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    acked = -1
    deadline = time.monotonic() + 60
    while acked < 40 and time.monotonic() < deadline:
        acked = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    got = read_reviews(path)  # parses: no half row in the middle
    assert all(f"{i:064x}" in got for i in range(acked + 1))
