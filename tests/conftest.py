"""Shared fixtures: real files, real DuckDB, real git + dvc repos in temporary folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# the S3 fixtures (moto server on loopback, fault proxy, dummy credentials) for every test module
pytest_plugins = ["tests.support.s3server"]

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "coco-sample"
# ../shared (COCO128 photos, detectors) exists only beside this checkout; a user's clone has none, and the
# tests that need it skip. NEGSET_SHARED points elsewhere (a missing folder: run as a user's clone would).
SHARED = Path(os.environ.get("NEGSET_SHARED") or REPO.parent / "shared")
COCO128 = SHARED / "datasets" / "coco128-train"
BIN = Path(sys.executable).parent

# Files a project copy needs for `dvc repro` (dvc.yaml hashes the code it depends on).
PROJECT_FILES = ["dvc.yaml", "params.yaml", "negset.lock", "reviews.csv", "negset", "flows", "tasks", "examples", ".dvcignore", ".gitignore", "prefect.yaml"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Prefect state in a temporary home; no telemetry; the venv first on PATH."""
    home = tmp_path_factory.mktemp("prefect-home")
    saved = dict(os.environ)
    os.environ.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        DVC_NO_ANALYTICS="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    os.environ.pop("PREFECT_API_URL", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    (dest / "data").mkdir(exist_ok=True)
    shutil.copy2(REPO / "data" / ".gitignore", dest / "data" / ".gitignore")
    return dest


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project with the sample, not yet a git repo."""
    return copy_project(tmp_path / "proj")


@pytest.fixture
def dvc_project(tmp_path) -> Path:
    """A copy of the project as a real git + dvc repository with a local remote."""
    root = copy_project(tmp_path / "repo")
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.email", "test@negset.invalid"], root)
    run(["git", "config", "user.name", "negset tests"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    run([str(BIN / "dvc"), "remote", "add", "-d", "local", str(tmp_path / "remote")], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "project"], root)
    return root


def write_params(root: Path, **sections) -> None:
    """Update params.yaml sections (nested dicts are merged)."""
    import yaml

    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key].update(value)
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def tag_project(root: Path, params_yaml: str | None = None):
    """Run ingest, embed and tag in this process (after writing ``params_yaml`` as root/params.yaml, when given)."""
    from negset.core.config import load_params
    from negset.core.layout import Layout
    from negset.embed import step as embed
    from negset.ingest import step as ingest
    from negset.tag import step as tags

    if params_yaml is not None:
        (root / "params.yaml").write_text(params_yaml)
    layout, params = Layout.at(root), load_params(root / "params.yaml")
    for step in (ingest, embed, tags):
        step.run(params, layout)
    return layout, params


@pytest.fixture(scope="session")
def built_project(tmp_path_factory) -> Path:
    """The demo built once per session (``negset --no-prefect build``); copy it before changing it."""
    root = copy_project(tmp_path_factory.mktemp("built") / "proj")
    run([sys.executable, "-m", "negset", "--no-prefect", "-q", "build"], root)
    return root


def copy_built(built: Path, dest: Path) -> Path:
    """A private copy of a built project (tests that change files use this)."""
    shutil.copytree(built, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium over the DevTools protocol (tests/support/browser.py); skipped, with the reason, without it."""
    from tests.support.browser import Browser, ensure_chromium

    path, why = ensure_chromium()
    if path is None:
        pytest.skip(why)
    with Browser(path) as b:
        yield b
