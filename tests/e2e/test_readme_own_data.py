"""README "Your own data", run as written: in a fresh folder outside the repository, against COCO128.

The commands are the fenced block after the ``readme-test: own-data`` marker
in README.md, so README and test cannot drift. Only the first line's value
changes (``DATA=``: where the photos are on this machine). The stages run
without Prefect (``NEGSET_NO_PREFECT=1``, as `negset refresh` runs them).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, COCO128, REPO

needs_coco128 = pytest.mark.skipif(not (COCO128 / "images").is_dir(), reason=f"needs the COCO128 photos ({COCO128})")
MARKER = "<!-- readme-test: own-data"


def readme_block() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text[text.index(MARKER):]
    block = re.search(r"```bash\n(.*?)\n```", after, re.S)
    assert block, "README: no ```bash block after the own-data marker"
    return block.group(1).splitlines()


def test_readme_block_is_what_the_test_runs():
    lines = readme_block()
    assert lines[0].startswith("DATA=") and any(line.startswith("negset init ") for line in lines)
    assert sum(line.startswith("dvc repro") for line in lines) == 2 and lines[-1].startswith("negset refresh")


def staged_sizes(root: Path) -> dict[str, int]:
    out = subprocess.run(["git", "diff", "--cached", "--name-only", "HEAD"], cwd=root, capture_output=True,
                         text=True).stdout.split()
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    return {p: (root / p).stat().st_size for p in set(out) | set(tracked) if (root / p).is_file()}


@pytest.mark.slow
@needs_coco128
def test_the_readme_s_own_data_commands_work_outside_the_repo(tmp_path):
    lines = readme_block()
    lines[0] = f"DATA={COCO128}"
    script = "set -euo pipefail\nset -x\n" + "\n".join(lines) + "\n"
    work = tmp_path / "work"  # outside the repository: no negset/, flows/ or examples/ to lean on
    work.mkdir()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", NEGSET_NO_PREFECT="1", HOME=str(tmp_path),
               GIT_AUTHOR_NAME="negset tests", GIT_AUTHOR_EMAIL="test@negset.invalid",
               GIT_COMMITTER_NAME="negset tests", GIT_COMMITTER_EMAIL="test@negset.invalid",
               PYTHONPATH=str(REPO))  # this checkout's negset (the venv's may be another worktree's)
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    root = work / "pets"
    ran = re.findall(r"Running stage '(\w+)'", log)
    # the first repro builds everything, the one after the parameter change only select and what follows
    # (the refresh then ingests again: its forced ingest stage may follow)
    from negset.pipeline import STEPS

    after_select = list(STEPS[STEPS.index("select"):])
    assert ran[: len(STEPS) + len(after_select)] == list(STEPS) + after_select, ran
    assert "next:" in log and "dvc repro" in log
    assert (root / "data" / "negatives" / "report.html").is_file()

    again = subprocess.run([str(BIN / "dvc"), "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout[-3000:]
    tags = subprocess.run(["git", "tag", "--list", "negatives-*"], cwd=root, capture_output=True, text=True).stdout.split()
    assert len(tags) == 1
    import pyarrow.parquet as pq

    assert pq.read_table(root / "data" / "negatives" / "manifest.parquet").num_rows == 12

    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    sizes = staged_sizes(root)
    assert "dvc.lock" in sizes and "params.yaml" in sizes
    big = {p: s for p, s in sizes.items() if s > 1_000_000}
    assert not big, f"files over 1 MB reach git: {big}"
    assert not any(p.startswith(("data/", ".dvc-remote/")) and p != "data/.gitignore" for p in sizes), sorted(sizes)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    assert status.strip() == "", status
