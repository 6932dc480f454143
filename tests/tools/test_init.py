"""`negset init`: a project from nothing, written once; running it again changes nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from negset import __version__
from negset.core.config import Params, load_params, parse_params
from negset.pipeline import STEPS
from negset.tools import project
from tests.conftest import REPO, SAMPLE

COCO = SAMPLE / "annotations" / "instances.json"


def negset(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "negset", *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root, .git included, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def init_args(folder: Path, *extra: str) -> list[str]:
    return ["init", str(folder), "--positives", str(COCO), "--images", str(SAMPLE / "images"), "--target", "person",
            *extra]


@pytest.fixture
def fresh(tmp_path) -> Path:
    folder = tmp_path / "pets"
    out = negset(*init_args(folder), cwd=tmp_path)
    assert "wrote  params.yaml" in out.stdout and "ran    git init" in out.stdout
    return folder


def test_init_writes_a_complete_project(fresh):
    for name in ("params.yaml", "dvc.yaml", "negset.lock", "data/.gitignore", ".gitignore", "prefect.yaml",
                 ".dvc/config", ".dvc/plots/grouped_hbar.json", ".dvc-remote/.gitignore"):
        assert (fresh / name).is_file(), name
    assert (fresh / ".git").is_dir()
    params = load_params(fresh / "params.yaml")
    assert params.ingest.target == ["person"] and params.select.count == 8
    raw = yaml.safe_load((fresh / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields)  # every section present (dvc.yaml tracks each)
    assert raw["ingest"]["positives"]["path"] == str(COCO)  # outside the project: absolute
    stages = yaml.safe_load((fresh / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STEPS)
    for name, stage in stages.items():
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]
        assert "negset.lock" in deps and not any(d.startswith("negset/") for d in deps), (name, deps)
        assert all(p.split(".")[0] in raw for p in stage.get("params", [])), name
    assert {str(COCO), str(SAMPLE / "images")} <= set(stages["ingest"]["deps"])
    assert yaml.safe_load((fresh / "negset.lock").read_text()) == {"negset": __version__}
    assert "default remote" not in (fresh / ".dvc" / "config").read_text()
    assert re.search(r"remote = local", (fresh / ".dvc" / "config").read_text())
    deployments = yaml.safe_load((fresh / "prefect.yaml").read_text())["deployments"]
    assert [d["entrypoint"] for d in deployments] == ["flows.refresh.refresh", "flows.build.build"]


def test_nothing_under_data_or_the_remote_reaches_git(fresh):
    for name in ("data/catalog.duckdb", "data/.negset.lock", "data/cache/embed/x.npz", "data/ingest/objects/aa/aa",
                 ".dvc-remote/files/md5/aa/bb"):
        (fresh / name).parent.mkdir(parents=True, exist_ok=True)
        (fresh / name).write_bytes(b"x")
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=fresh, capture_output=True,
                         text=True, check=True).stdout
    listed = {line[3:] for line in out.splitlines()}
    assert "data/.gitignore" in listed and not any(p.startswith(("data/", ".dvc-remote/")) and p != "data/.gitignore"
                                                   for p in listed), listed


def test_running_init_twice_changes_nothing(fresh, tmp_path):
    before = snapshot(fresh)
    again = negset(*init_args(fresh), cwd=tmp_path)
    assert snapshot(fresh) == before
    assert "nothing to do" in again.stdout and "unchanged  params.yaml" in again.stdout
    assert "wrote" not in again.stdout and "ran " not in again.stdout
    bare = negset("init", cwd=fresh)  # in the project, no options: completes nothing, keeps everything
    assert snapshot(fresh) == before and "kept       params.yaml" in bare.stdout


def test_init_over_a_different_params_yaml_keeps_it_and_says_what(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    mine = (f"ingest:\n  target: person\n  positives: {{format: coco, path: {COCO}, images: {SAMPLE / 'images'}}}\n"
            "embed: {}\ntag: {}\nselect: {count: 5}\nexport: {}\n")
    (folder / "params.yaml").write_text(mine)
    out = negset(*init_args(folder, "--target", "persn"), cwd=tmp_path, check=False)
    # the options are checked although the file is kept: 'persn' is no class of the sample
    assert out.returncode == 2 and "'persn' is not a class" in out.stderr and "did you mean 'person'" in out.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["params.yaml"]  # nothing written
    out = negset(*init_args(folder), cwd=tmp_path)
    assert (folder / "params.yaml").read_text() == mine
    kept = next(line for line in out.stdout.splitlines() if "params.yaml" in line)
    assert "kept" in kept and "select.count" in kept
    # its dvc.yaml comes from the kept parameters
    assert str(COCO) in (folder / "dvc.yaml").read_text()


def test_without_a_terminal_a_missing_option_is_an_error(tmp_path):
    out = negset("init", str(tmp_path / "p"), cwd=tmp_path, check=False)
    assert out.returncode == 2 and "--positives is required" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "p").exists()  # checked before anything is written
    out = negset("init", str(tmp_path / "p"), "--positives", str(COCO), "--images", str(SAMPLE / "images"),
                 cwd=tmp_path, check=False)
    assert out.returncode == 2 and "--target is required" in out.stderr


def test_an_upgrade_is_recorded_in_negset_lock(fresh, tmp_path):
    (fresh / "negset.lock").write_text(project.version_file_text("0.0.1"))
    check = negset("check", cwd=fresh)
    assert "negset.lock records negset 0.0.1" in check.stderr and "negset init" in check.stderr
    out = negset("init", cwd=fresh)
    assert f"0.0.1 -> {__version__}" in out.stdout
    assert (fresh / "negset.lock").read_text() == project.version_file_text()
    assert "negset.lock records" not in negset("check", cwd=fresh).stderr


def test_check_names_a_source_folder_no_stage_depends_on(fresh, tmp_path):
    extra = tmp_path / "more"
    extra.mkdir()
    text = (fresh / "params.yaml").read_text().replace("  sources: []", f"  sources: [{{path: {extra}}}]")
    (fresh / "params.yaml").write_text(text)
    err = negset("check", cwd=fresh).stderr
    assert f"stage 'ingest' does not depend on {extra} (ingest.sources[0])" in err


def test_the_template_s_commented_values_are_the_defaults():
    """Uncommenting every key of the template changes nothing: what it shows is what negset uses."""
    text = project.render_params_yaml(["person"], {"format": "coco", "path": "a.json", "images": "img"}, [])
    uncommented = re.sub(r"(?m)^(\s+)# (\w+:)", r"\1\2", text)
    assert uncommented.count("\n") == text.count("\n") and uncommented != text
    assert parse_params(yaml.safe_load(uncommented)) == parse_params(yaml.safe_load(text))
    minimal = parse_params({"ingest": {"target": "person", "positives": {"format": "coco", "path": "a.json", "images": "img"}}})
    assert parse_params(yaml.safe_load(text)) == minimal


def test_the_repo_dvc_yaml_is_generated_from_the_steps():
    """This repository's dvc.yaml is the generator's (dev mode): a new stage is one entry in project.STAGES."""
    assert set(project.STAGES) == set(STEPS)
    want = project.render_dvc_yaml(load_params(REPO / "params.yaml"), REPO, dev=True)
    assert (REPO / "dvc.yaml").read_text() == want, "run `python -m negset.tools.project` and commit dvc.yaml"
    assert (REPO / "negset.lock").read_text() == project.version_file_text()


def test_with_a_terminal_init_asks_for_what_is_missing(tmp_path):
    """On a terminal (a pty here) a missing --positives and --target are asked for; the rest is guessed."""
    import os
    import pty
    import select as _select

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "negset", "init", "asked"], cwd=tmp_path, stdin=secondary,
                            stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    answers = {"positives": str(COCO), "target": "person"}
    seen, buffer = [], ""
    try:
        while proc.poll() is None or _select.select([primary], [], [], 0)[0]:
            ready, _, _ = _select.select([primary], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(primary, 4096).decode(errors="replace")
            except OSError:
                break
            buffer += chunk
            for key, answer in answers.items():
                if key not in seen and re.search(rf"(?m)^{key}\b.*: $", buffer.splitlines()[-1] if buffer else ""):
                    seen.append(key)
                    os.write(primary, (answer + "\n").encode())
    finally:
        os.close(primary)
        proc.wait(timeout=120)
    assert proc.returncode == 0, buffer[-3000:]
    assert seen == ["positives", "target"], buffer[-3000:]
    params = load_params(tmp_path / "asked" / "params.yaml")
    assert params.ingest.target == ["person"] and params.ingest.positives.images == str(SAMPLE / "images")


def test_the_project_s_prefect_yaml_names_flows_that_load_without_a_flows_folder(tmp_path):
    """A user's project has no flows/ folder: its entrypoints are negset's installed modules."""
    code = (
        "import sys, yaml; from prefect.flows import load_flow_from_entrypoint; "
        "d = yaml.safe_load(open(sys.argv[1]))['deployments']; "
        "print(' '.join(load_flow_from_entrypoint(x['entrypoint']).name + '/' + x['name'] for x in d))"
    )
    (tmp_path / "prefect.yaml").write_text(project.prefect_yaml())
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "prefect.yaml")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["negset-refresh/nightly-refresh", "negset-build/manual-build"]
