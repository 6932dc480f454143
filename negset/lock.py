"""One negset run at a time per project: an advisory lock on data/.negset.lock.

The lock is an ``flock`` on an open file, so the kernel drops it when its
process ends, even on SIGKILL: a crashed run never leaves a stale lock. It is
re-entrant inside one process (``negset build`` holds it across its steps).
A second run refuses at once with a message naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from negset.errors import NegsetError

_held: dict[Path, tuple[int, object]] = {}
_guard = threading.Lock()


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
            since = time.strftime("%H:%M:%S", time.localtime(holder["since"])) if "since" in holder else "?"
            raise NegsetError(
                f"{path.parent}: another negset run is working on this project "
                f"(pid {holder.get('pid', '?')}, `{holder.get('what', '?')}`, since {since})",
                hint="wait for it to finish and run again; the lock goes away by itself when that process ends",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(dict(pid=os.getpid(), what=what, since=time.time())))
        fh.flush()
        with _guard:
            _held[path] = (1, fh)
    try:
        yield
    finally:
        with _guard:
            depth, fh = _held[path]
            if depth > 1:
                _held[path] = (depth - 1, fh)
            else:
                del _held[path]
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                fh.close()
