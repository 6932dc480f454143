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


def test_prefect_task_wraps_reporting(project):
    """The embed step run as its real Prefect task (in the ``negset-stage`` flow) mirrors its
    "embed batches" progress into a progress artifact of that task run, ending at 100%."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType
    from prefect.testing.utilities import prefect_test_harness

    from flows.build import stage
    from negset.pipeline import run_step
    from tests.conftest import write_params

    write_params(project, embed={"batch_size": 8, "regions": 0})
    params = str(project / "params.yaml")
    run_step("ingest", params, project)
    # a real Prefect server for this test alone, stopped when it ends
    with prefect_test_harness(server_startup_timeout=None):
        state = stage("embed", params, str(project), return_state=True)
        assert state.is_completed() and state.result()["embedded_now"] == 33
        with get_client(sync_client=True) as client:
            flow_run_id = state.state_details.flow_run_id
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["progress"])))
            assert [a.key for a in found] == ["negset-embed-progress"]
            artifact = found[0]
            assert artifact.data == 100.0  # the last report: every batch done
            assert artifact.description == "negset embed: embed batches 5/5"  # 33 images in batches of 8
            task_run = client.read_task_run(artifact.task_run_id)
            assert task_run.name.startswith("embed") and task_run.flow_run_id == flow_run_id


def test_unknown_totals_make_no_artifact():
    from tasks.steps import _ProgressArtifact

    reporter = _ProgressArtifact("embed")
    reporter("embed batches", 0, None)  # no total: no percentage to show, and no Prefect call
    assert reporter.artifact_id is None
