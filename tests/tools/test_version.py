"""Release bookkeeping in real git + dvc repositories, without building anything."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from negset.core.errors import NegsetError
from negset.core.lock import child_env, project_lock
from negset.tools import release as version
from tests.conftest import BIN, run

LOCK = """schema: '2.0'
stages:
  export:
    cmd: negset export
    outs:
    - path: data/negatives/manifest.parquet
      hash: md5
      md5: {m}
    - path: data/negatives/images
      hash: md5
      md5: {i}.dir
"""


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "r"
    root.mkdir()
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.email", "t@negset.invalid"], root)
    run(["git", "config", "user.name", "t"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    (root / "data").mkdir()
    (root / "data" / ".gitignore").write_text("/*\n!/.gitignore\n")
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "init"], root)
    return root


def test_tags_count_up_within_a_day_and_restart_the_next(repo):
    day = dt.date(2026, 3, 4)
    assert version.next_tag(repo, day) == "negatives-20260304-1"
    for n in (1, 2, 10):
        run(["git", "tag", f"negatives-20260304-{n}"], repo)
    run(["git", "tag", "negatives-20260304-x"], repo)  # not a release tag
    assert version.next_tag(repo, day) == "negatives-20260304-11"
    assert version.next_tag(repo, dt.date(2026, 3, 5)) == "negatives-20260305-1"
    assert version.last_release(repo) == "negatives-20260304-10"  # numeric, not text order


def test_no_remote_and_a_dirty_tree_are_clear_errors(repo):
    with pytest.raises(NegsetError, match=r"\.dvc/config: no default DVC remote"):
        version.check_project(repo)
    run([str(BIN / "dvc"), "remote", "add", "-d", "local", str(repo.parent / "remote")], repo)
    with pytest.raises(NegsetError, match=r"uncommitted changes in \.dvc/config"):
        version.check_project(repo)
    run(["git", "commit", "-qam", "remote"], repo)
    version.check_project(repo)
    (repo / "dvc.lock").write_text("schema: '2.0'\n")  # dvc.lock alone may differ: it is what a refresh changes
    version.check_project(repo)


def test_change_detection_and_release_commit(repo):
    (repo / "dvc.lock").write_text(LOCK.format(m="a" * 32, i="b" * 32))
    first = version.detect_change(repo)
    assert first.changed and first.needs_commit and first.set_changed and first.previous is None
    tag = version.commit_and_tag(repo, first, today=dt.date(2026, 1, 1))
    assert tag == "negatives-20260101-1" and version.dirty_paths(repo) == []
    assert run(["git", "tag", "--points-at", "HEAD"], repo).stdout.split() == [tag]
    assert version.detect_change(repo).changed is False  # same dvc.lock as the release
    (repo / "dvc.lock").write_text(LOCK.format(m="a" * 32, i="c" * 32))
    again = version.detect_change(repo)
    assert again.changed and again.set_changed and again.previous == tag


def test_killed_before_the_tag_or_before_the_commit_is_repaired(repo):
    # killed between commit and tag: the next run tags the release commit
    (repo / "dvc.lock").write_text(LOCK.format(m="a" * 32, i="b" * 32))
    run(["git", "add", "dvc.lock"], repo)
    run(["git", "commit", "-q", "-m", "negset release negatives-20260101-1\n\nnotes"], repo)
    assert version.recover(repo) == ["tagged negatives-20260101-1"]
    assert version.releases(repo) == ["negatives-20260101-1"]
    # killed during the rebuild: dvc.lock changed and the marker left; the next run restores them
    committed = (repo / "dvc.lock").read_text()
    version.mark_pending(repo, "repro")
    (repo / "dvc.lock").write_text(LOCK.format(m="d" * 32, i="e" * 32))
    assert version.recover(repo) == ["restored dvc.lock and the workspace to the last commit"]
    assert (repo / "dvc.lock").read_text() == committed and version.dirty_paths(repo) == []
    assert not (repo / version.PENDING).exists() and version.recover(repo) == []


def test_a_dvc_stage_error_from_negset_is_not_transient(repo):
    (repo / "fail.py").write_text(
        "import sys\nsys.stderr.write('negset: error: params.yaml: select.count: not a number\\n  hint: use an integer\\n')\n"
        "sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 2)\n"
    )
    (repo / "dvc.yaml").write_text("stages:\n  bad:\n    cmd: python fail.py\n")
    with pytest.raises(NegsetError, match="select.count: not a number") as info:
        version.dvc(repo, "repro")
    assert info.value.hint == "use an integer"
    (repo / "dvc.yaml").write_text("stages:\n  flaky:\n    cmd: python -c 'import sys; sys.exit(3)'\n")
    with pytest.raises(version.TransientError):
        version.dvc(repo, "repro")
    (repo / "dvc.yaml").write_text("stages:\n  broken: [\n")
    with pytest.raises(NegsetError, match="dvc.yaml: invalid"):
        version.dvc(repo, "repro")


def test_children_work_under_the_parents_lock_and_strangers_do_not(tmp_path):
    data = tmp_path / "data"
    code = "import sys; from negset.core.lock import project_lock\nwith project_lock(sys.argv[1], 'child'): print('ran')"
    with project_lock(data, "negset refresh"):
        env = {**__import__("os").environ, **child_env(data)}
        child = subprocess.run([sys.executable, "-c", code, str(data)], env=env, capture_output=True, text=True)
        assert child.returncode == 0 and child.stdout.strip() == "ran", child.stderr
        bad = {**env, "NEGSET_LOCK_TOKEN": "not-the-token"}
        stranger = subprocess.run([sys.executable, "-c", code, str(data)], env=bad, capture_output=True, text=True)
        assert stranger.returncode != 0 and "another negset run is working on this project" in stranger.stderr


def test_refresh_outside_a_git_repository_is_a_clear_error(tmp_path):
    (tmp_path / "params.yaml").write_text((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    proc = subprocess.run([str(BIN / "negset"), "--no-prefect", "refresh"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a git repository" in proc.stderr and "Traceback" not in proc.stderr
