"""One negset run at a time per project: an advisory lock on data/.negset.lock.

The lock is an ``flock`` on an open file, so the kernel drops it when its
process ends, even on SIGKILL: a crashed run never leaves a stale lock. It is
re-entrant inside one process (``negset build`` holds it across its steps).
A second run refuses at once with a message naming the holder.

A holder can hand the lock down to the processes it starts (``negset
refresh`` runs ``dvc repro``, whose stages run ``negset STEP``): it passes
``child_env(data_dir)`` to them, a random token that is also written in the
lock file. A process that finds the lock taken and the same token in both
its environment and the file works under its parent's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Iterator

from negset.core.errors import NegsetError

_held: dict[Path, tuple[int, object]] = {}
_tokens: dict[Path, str] = {}
_guard = threading.Lock()
TOKEN_ENV = "NEGSET_LOCK_TOKEN"


def child_env(data_dir: Path) -> dict[str, str]:
    """Environment entries that let a child process work under this process's lock."""
    path = (Path(data_dir) / ".negset.lock").resolve()
    with _guard:
        token = _tokens.get(path)
    if token is None:
        raise RuntimeError(f"{path}: not held by this process")
    return {TOKEN_ENV: token}


@contextlib.contextmanager
def project_lock(data_dir: Path, what: str) -> Iterator[None]:
    path = (Path(data_dir) / ".negset.lock").resolve()
    with _guard:
        if path in _held:
            depth, fh = _held[path]
            _held[path] = (depth + 1, fh)
            reentered = True
        else:
            reentered = False
    if not reentered:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                holder = json.loads(fh.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            fh.close()
            inherited = os.environ.get(TOKEN_ENV)
            if inherited and holder.get("token") == inherited:  # our parent holds it for us
                yield
                return
            since = time.strftime("%H:%M:%S", time.localtime(holder["since"])) if "since" in holder else "?"
            raise NegsetError(
                f"{path.parent}: another negset run is working on this project "
                f"(pid {holder.get('pid', '?')}, `{holder.get('what', '?')}`, since {since})",
                hint="wait for it to finish and run again; the lock goes away by itself when that process ends",
            ) from None
        fh.seek(0)
        fh.truncate()
        token = secrets.token_hex(16)
        fh.write(json.dumps(dict(pid=os.getpid(), what=what, since=time.time(), token=token)))
        fh.flush()
        with _guard:
            _held[path] = (1, fh)
            _tokens[path] = token
    try:
        yield
    finally:
        with _guard:
            depth, fh = _held[path]
            if depth > 1:
                _held[path] = (depth - 1, fh)
            else:
                del _held[path]
                _tokens.pop(path, None)
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                fh.close()
