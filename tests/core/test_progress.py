"""Progress: every tracked loop also reports to registered reporters (Prefect progress artifacts)."""

from __future__ import annotations

from negset.core import progress


def test_reporters_see_start_and_end():
    seen = []
    with progress.reporting(lambda what, done, total: seen.append((what, done, total))):
        out = list(progress.track(range(5), 5, "things"))
    assert out == [0, 1, 2, 3, 4]
    assert seen[0] == ("things", 0, 5) and seen[-1] == ("things", 5, 5)
    seen.clear()
    list(progress.track(range(3), 3, "after"))
    assert seen == []  # the reporter was removed


def test_a_failing_reporter_does_not_break_the_work():
    def broken(what, done, total):
        raise RuntimeError("progress backend down")

    with progress.reporting(broken):
        assert sum(progress.track(range(4), 4, "x")) == 6


def test_prefect_task_wraps_reporting():
    from tasks.steps import _ProgressArtifact

    reporter = _ProgressArtifact("embed")
    reporter("embed batches", 0, None)  # unknown totals make no artifact
    assert reporter.artifact_id is None
