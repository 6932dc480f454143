"""What a test compares to show that a failed run left ``data/`` as it was."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

LOCK = ".negset.lock"  # rewritten (pid, time) by every run that takes it: not data
CATALOG = "catalog.duckdb"  # every step reloads tables into it: compared by its tables' contents, not its bytes


def catalog_digest(path: Path) -> str:
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        h = hashlib.sha256()
        for (name,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall():
            h.update(name.encode())
            h.update(repr(con.execute(f'SELECT * FROM "{name}" ORDER BY ALL').fetchall()).encode())
        return "tables " + h.hexdigest()
    finally:
        con.close()


def snapshot(data: Path) -> dict[str, str]:
    """Every file under ``data/`` (but the run lock) -> its sha256; symlinks -> their target."""
    out: dict[str, str] = {}
    data = Path(data)
    if not data.exists():
        return out
    for dirpath, _, filenames in os.walk(data):
        for name in filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(data).as_posix()
            if rel == LOCK:
                continue
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif rel == CATALOG:
                out[rel] = catalog_digest(p)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files added, removed or changed (empty when data/ is as it was)."""
    return sorted(
        [f"+{k}" for k in after.keys() - before.keys()]
        + [f"-{k}" for k in before.keys() - after.keys()]
        + [f"~{k}" for k in before.keys() & after.keys() if before[k] != after[k]]
    )


@contextlib.contextmanager
def read_only(*paths: Path):
    """Make files and folders unwritable for this process (root too: ``chattr +i``); skip where impossible."""
    import pytest

    paths = [Path(p) for p in paths]
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p in paths:
                p.chmod(modes[p])
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a path unwritable")
    done = []
    try:
        for p in paths:
            if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode != 0:
                pytest.skip(f"chattr +i not supported here ({p})")
            done.append(p)
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)
