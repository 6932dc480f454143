"""Releases end to end: real git + dvc repositories, an S3 DVC remote on a moto
server on 127.0.0.1, and a real Prefect server, work pool and process worker.

The source of new images is ``ingest.sources`` in params.yaml (a local folder
outside the repository here); switching it to a bucket is a params change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from negset.tools import release as version
from tests.conftest import BIN, SAMPLE, copy_project, run, write_params

pytestmark = pytest.mark.slow

BUCKET = "negset-remote"
AWS_ENV = dict(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)


def source_images(n: int, skip: int = 0) -> list[Path]:
    """New photos for the source: distinct crops of the sample's photos (no ../shared needed), made once each.

    Image ``i`` is a crop of sample photo ``i % 33`` at an offset of its own,
    mirrored every other round, so every image has other bytes and content;
    ``make_repo`` turns the near-duplicate checks off, so each is a negative.
    """
    from PIL import Image, ImageOps

    folder = NEW_IMAGES[0]
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted((SAMPLE / "images").glob("*.jpg"))
    out = []
    for i in range(skip, skip + n):
        path = folder / f"new-{i:03d}.jpg"
        if not path.exists():
            with Image.open(photos[i % len(photos)]) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                w, h = im.size
                k = i // len(photos)
                box = (int(w * 0.05 * (k + 1)), int(h * 0.04 * (k + 1)), int(w * (0.8 + 0.05 * k)), int(h * (0.85 + 0.04 * k)))
                crop = im.crop(box).resize((320, 240))
                (ImageOps.mirror(crop) if k % 2 else crop).save(path, quality=88)
        out.append(path)
    return out


NEW_IMAGES: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _new_images_folder(tmp_path_factory):
    NEW_IMAGES[:] = [tmp_path_factory.mktemp("new-images")]
    yield


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback with the DVC remote's bucket; AWS credentials in the environment only."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer("127.0.0.1", 0)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


class FolderSource:
    """Where new candidate images arrive: a folder outside the repository.

    A bucket source only needs another ``spec`` (the ``ingest.sources`` entry
    in params.yaml) and an ``add`` that uploads; the tests use nothing else.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def spec(self) -> dict:
        return {"type": "local", "path": str(self.folder), "recursive": True}

    def add(self, paths: list[Path]) -> None:
        for p in paths:
            shutil.copy2(p, self.folder / p.name)


class BucketSource:
    """New candidate images arrive in a bucket on the same moto server as the DVC remote."""

    def __init__(self, endpoint: str, bucket: str = "negset-candidates"):
        import boto3

        self.endpoint, self.bucket = endpoint, bucket
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.client.create_bucket(Bucket=bucket)

    @property
    def spec(self) -> dict:
        return {"type": "s3", "bucket": self.bucket, "prefixes": ["raw/"], "endpoint_url": self.endpoint,
                "region": "us-east-1", "addressing_style": "path"}

    def add(self, paths: list[Path]) -> None:
        for p in paths:
            self.client.put_object(Bucket=self.bucket, Key=f"raw/{p.name}", Body=p.read_bytes())


def make_repo(root: Path, source: FolderSource | BucketSource, endpoint: str, prefix: str) -> Path:
    """A git + dvc copy of the project: candidates from ``source``, all of them chosen, S3 remote."""
    copy_project(root)
    write_params(
        root,
        ingest={"sources": [source.spec]},
        # more than the pool, and no rule that leaves images out: every candidate is a negative (the new
        # images are crops of the sample's photos: no near-duplicate check)
        select={"count": 1000, "quarantine": {"enabled": False}, "leaks": {"near_duplicate": 0, "hash_bits": 0},
                "context": {"irrelevant_below_percentile": 0, "require_positive_background": False},
                "quality": {k: None for k in ("dark", "light", "low_information", "near_uniform", "blurry",
                                              "odd_aspect_ratio", "tiny")}},
        # half the crops show the sample's people, which the detector rightly quarantines: this test is
        # about releases, so no detection evidence (the target check is tested in tests/select, tests/detect)
        detect={"sources": []},
    )
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.email", "test@negset.invalid"], root)
    run(["git", "config", "user.name", "negset tests"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    run([str(BIN / "dvc"), "remote", "add", "-d", "s3", f"s3://{BUCKET}/{prefix}"], root)
    run([str(BIN / "dvc"), "remote", "modify", "s3", "endpointurl", endpoint], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "project"], root)
    config = (root / ".dvc" / "config").read_text()
    assert "testing" not in config and endpoint in config  # credentials never in tracked files
    return root


def tags(root: Path) -> list[str]:
    return version.releases(root)


def head(root: Path) -> str:
    return run(["git", "rev-parse", "HEAD"], root).stdout.strip()


def assert_clean(root: Path) -> None:
    assert version.dirty_paths(root) == [], run(["git", "status", "--porcelain"], root).stdout


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_tag_reproduces(root: Path, tag: str, dest: Path) -> None:
    """A clean clone at the tag plus `dvc pull` gives byte-identical negatives."""
    run(["git", "clone", "-q", "--branch", tag, str(root), str(dest)], root.parent)
    run([str(BIN / "dvc"), "pull", "-q", "data/negatives/manifest.parquet", "data/negatives/images"], dest)
    ours = root / "data" / "negatives"
    theirs = dest / "data" / "negatives"
    assert (theirs / "manifest.parquet").read_bytes() == (ours / "manifest.parquet").read_bytes()
    got, want = files_under(theirs / "images"), files_under(ours / "images")
    assert got.keys() == want.keys() and got == want and len(got) > 0


@pytest.fixture
def no_prefect(monkeypatch):
    """The library path: stages run without Prefect (the deployment test covers Prefect)."""
    monkeypatch.setenv("NEGSET_NO_PREFECT", "1")


def children_of(pid: int) -> list[tuple[int, str]]:
    """Descendant processes of pid: (pid, command line)."""
    parents: dict[int, int] = {}
    cmds: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmds[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p:
                out.append((child, cmds.get(child, "")))
                frontier.append(child)
    return out


def test_refresh_releases_only_changes_and_survives_a_kill(tmp_path, s3, no_prefect):
    source = FolderSource(tmp_path / "source")
    source.add(source_images(6))
    root = make_repo(tmp_path / "repo", source, s3, "lib")
    today = dt.date(2026, 1, 2)

    # first refresh: a release, committed and tagged
    first = version.refresh(root, today=today)
    assert first["tag"] == "negatives-20260102-1" and tags(root) == [first["tag"]]
    assert first["change"]["previous"] is None and len(first["change"]["added"]) == first["change"]["negatives"]
    assert "New release" in first["summary"] and "Nothing changed" not in first["summary"]
    assert_clean(root)
    assert run(["git", "tag", "--points-at", "HEAD"], root).stdout.split() == [first["tag"]]
    # (a clean clone at a tag reproducing the set is checked after the deployment run below)

    # nothing new in the source: no commit, no tag, and the summary says so
    before = head(root)
    second = version.refresh(root, today=today)
    assert second["tag"] is None and head(root) == before and tags(root) == [first["tag"]]
    assert "Nothing changed" in second["summary"] and second["change"]["added"] == []
    assert_clean(root)

    # new images in the source: a new tag whose summary lists exactly them
    new = source_images(3, skip=6)
    source.add(new)
    third = version.refresh(root, today=today)
    assert third["tag"] == "negatives-20260102-2" and tags(root) == [first["tag"], third["tag"]]
    added_uris = sorted(Path(r["uri"]).name for r in third["change"]["added"])
    assert added_uris == sorted(p.name for p in new)
    assert third["change"]["removed"] == []
    for r in third["change"]["added"]:
        assert r["sha256"][:12] in third["summary"]
    notes = run(["git", "tag", "-l", "--format=%(contents)", third["tag"]], root).stdout
    assert all(r["sha256"][:12] in notes for r in third["change"]["added"])
    assert_clean(root)

    # a refresh killed in the middle (its `negset embed` gets SIGKILL) leaves the last release intact
    source.add(source_images(2, skip=9))
    released_head, released_tags = head(root), tags(root)
    released_manifest = (root / version.MANIFEST).read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from negset.tools.release import refresh; refresh(sys.argv[1])", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    killed = None
    try:
        deadline = time.monotonic() + 180
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            for pid, cmd in children_of(proc.pid):
                if "negset" in cmd and cmd.rstrip().endswith("embed"):
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed is not None, "the refresh never reached the embed stage"
    assert proc.returncode != 0 and "TransientError" in err
    assert head(root) == released_head and tags(root) == released_tags
    assert_clean(root)
    assert (root / version.MANIFEST).read_bytes() == released_manifest  # the workspace is the release again
    assert not (root / version.PENDING).exists()

    # the next run goes through
    fourth = version.refresh(root, today=today)
    assert fourth["tag"] == "negatives-20260102-3" and len(fourth["change"]["added"]) == 2
    assert_clean(root)


# ------------------------------------------------------------- real Prefect server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)


@pytest.fixture
def prefect_server(tmp_path):
    """`prefect server start` on 127.0.0.1 with a temporary PREFECT_HOME; yields the clients' environment."""
    port = free_port()
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        DO_NOT_TRACK="1",
        DVC_NO_ANALYTICS="1",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("NEGSET_NO_PREFECT", None)
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--no-ui", "--host", "127.0.0.1", "--port", str(port)],
        env={k: v for k, v in env.items() if k != "PREFECT_API_URL"}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prefect server did not start in 120 s"
            time.sleep(0.5)
        yield env
    finally:
        stop(server)
        log.close()


def prefect(args: list[str], cwd: Path, env: dict, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def latest_summary(root: Path, env: dict) -> str:
    """The markdown of the newest version of the refresh's summary artifact."""
    versions = json.loads(prefect(["artifact", "inspect", "negset-refresh", "-o", "json"], root, env).stdout)
    return max(versions, key=lambda a: a["created"])["data"]


def kill_flow_run_during_embed(root: Path, deadline: float) -> list[int]:
    """SIGKILL the flow run process working on ``root``, its `dvc repro` and `negset embed`, once embed runs."""
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if "negset" in cmd and cmd.endswith(" embed") and cwd == str(root):
                chain = [int(entry.name)]
                for _ in range(2):  # negset embed <- dvc repro <- the flow run's process
                    stat = (Path("/proc") / str(chain[-1]) / "stat").read_text()
                    chain.append(int(stat.rsplit(")", 1)[1].split()[1]))
                for pid in reversed(chain):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return chain
        time.sleep(0.05)
    return []


def test_deployment_run_on_a_prefect_server_releases(tmp_path, s3, prefect_server):
    source = BucketSource(s3)  # the run ingests from a bucket on the moto server
    source.add(source_images(4, skip=20))
    root = make_repo(tmp_path / "repo", source, s3, "deployed")
    env = dict(prefect_server)
    prefect(["work-pool", "create", "local", "--type", "process"], root, env)
    prefect(["--no-prompt", "deploy", "--all"], root, env)
    nightly = json.loads(prefect(["deployment", "inspect", "negset-refresh/nightly-refresh", "-o", "json"], root, env).stdout)
    assert (nightly.get("global_concurrency_limit") or {}).get("limit") == 1  # one refresh at a time
    assert [s["schedule"].get("cron") for s in nightly["schedules"]] == ["0 3 * * *"]
    assert nightly["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(root)}}]
    build = json.loads(prefect(["deployment", "inspect", "negset-build/manual-build", "-o", "json"], root, env).stdout)
    assert build["entrypoint"] == "flows/build.py:build" and build["work_pool_name"] == "local"

    # the worker: flow runs in subprocesses with the project's code, AWS credentials from the environment only
    worker_env = dict(env, PYTHONPATH=str(root), PREFECT_WORKER_QUERY_SECONDS="2", **AWS_ENV)
    wlog = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "local", "--type", "process"],
        cwd=tmp_path, env=worker_env, stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        first = prefect(["deployment", "run", "negset-refresh/nightly-refresh", "--watch"], root, env, timeout=400, check=False)
        assert first.returncode == 0, first.stdout[-3000:] + (tmp_path / "worker.log").read_text()[-6000:]
        assert "Completed" in first.stdout
        made = tags(root)
        assert len(made) == 1 and made[0].startswith("negatives-")
        assert_clean(root)
        assert made[0] in latest_summary(root, env)

        # a second run with nothing new: completes, no tag
        before = head(root)
        second = prefect(["deployment", "run", "negset-refresh/nightly-refresh", "--watch"], root, env, timeout=400, check=False)
        assert second.returncode == 0, second.stdout[-3000:] + (tmp_path / "worker.log").read_text()[-6000:]
        assert tags(root) == made and head(root) == before
        assert "Nothing changed" in latest_summary(root, env)
        assert_clean(root)

        # new images, and the flow run's process (with its dvc and negset) killed in the middle
        new = source_images(2, skip=24)
        source.add(new)
        prefect(["deployment", "run", "negset-refresh/nightly-refresh"], root, env)
        victims = kill_flow_run_during_embed(root, deadline=time.monotonic() + 240)
        assert victims, "the refresh never reached its embed stage:\n" + (tmp_path / "worker.log").read_text()[-6000:]
        assert tags(root) == made and head(root) == before  # the last release is intact
        assert set(version.dirty_paths(root)) <= {version.LOCK_FILE}  # at most dvc.lock, restored by the next run

        # the next run repairs and releases, and its summary lists the new images
        third = prefect(["deployment", "run", "negset-refresh/nightly-refresh", "--watch"], root, env, timeout=400, check=False)
        assert third.returncode == 0, third.stdout[-3000:] + (tmp_path / "worker.log").read_text()[-6000:]
        assert len(tags(root)) == 2 and tags(root)[0] == made[0]
        summary = latest_summary(root, env)
        assert tags(root)[1] in summary and all(p.name in summary for p in new)
        assert_clean(root)
    finally:
        stop(worker)
        wlog.close()
    assert_tag_reproduces(root, tags(root)[-1], tmp_path / "clone")  # the workspace holds the newest release
