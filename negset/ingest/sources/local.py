"""A local folder as a source: recursive, sorted, symlinked folders not followed."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

from negset.core.errors import NegsetError
from negset.ingest.sources import FetchError, SourceObject


class LocalSource:
    """A folder of candidate files.

    Rules (README "Bad input and faults"): hidden files and folders (a name
    starting with '.') and symbolic links are not read; each is listed in
    ``rejected.parquet`` (rules ``hidden``, ``symlink``) under its own path.
    A link could point anywhere (outside the source, at a device, in a loop);
    ``follow_symlinks: true`` on a local source reads linked *files* (where
    they point), as DVC's symlink cache or a farm of links needs. Linked
    folders are never walked.
    """

    workers = 1  # local reads are cheap: read in listing order, as they are listed

    def __init__(self, path: Path, recursive: bool = True, layout=None, follow_symlinks: bool = False):
        self.path = Path(path)
        self.recursive = recursive
        self.layout = layout
        self.follow_symlinks = follow_symlinks
        self.name = layout.uri(self.path) if layout else str(self.path)

    def _files(self) -> Iterator[tuple[Path, Path, int, FetchError | None]]:
        """(path, resolved path, size, refusal) of every file, in listing order.

        A folder's real path is resolved once, not per file (a folder os.walk
        enters is never a symlink); only a followed symlinked file is resolved on
        its own: 10,000 per-file resolves cost about a second per refresh.
        ``refusal`` is set for what the rules above leave unread.
        """
        if not self.path.is_dir():
            raise NegsetError(f"{self.path}: source folder not found", hint="check ingest.sources[].path")
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=False):
            folder = Path(dirpath)
            real = Path(os.path.realpath(dirpath))
            for d in sorted(dirnames):
                if d.startswith("."):
                    yield folder / d, real / d, 0, FetchError("hidden", "hidden folder (name starts with '.'): not read")
                elif os.path.islink(folder / d):
                    yield folder / d, real / d, 0, FetchError("symlink", "symbolic link to a folder: not followed")
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not os.path.islink(folder / d))
            if not self.recursive:
                dirnames[:] = []
            for name in sorted(filenames):
                p = folder / name
                if name.startswith("."):
                    yield p, real / name, 0, FetchError("hidden", "hidden file (name starts with '.'): not read")
                    continue
                try:
                    st = os.lstat(p)
                    if stat.S_ISLNK(st.st_mode):
                        if not self.follow_symlinks:
                            target = os.readlink(p)
                            yield p, real / name, 0, FetchError(
                                "symlink", f"symbolic link (to {target}): not followed (local sources: follow_symlinks)")
                            continue
                        st = os.stat(p)  # a followed link to a file counts as that file
                        resolved = p.resolve()
                    else:
                        resolved = real / name
                except OSError as exc:
                    yield p, real / name, 0, FetchError("unreadable", f"{exc.strerror or exc}")
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield p, resolved, st.st_size, None
                else:
                    yield p, resolved, 0, FetchError("not_file", "not a regular file (device, pipe or socket): not read")

    def list(self) -> Iterator[SourceObject]:
        for p, resolved, size, refusal in self._files():
            uri = self.layout.uri(resolved, resolved=True) if self.layout else str(p)
            if refusal is not None:  # listed (as rejected) under its own path, never read
                folder = os.path.isdir(p) and refusal.rule in ("hidden", "symlink")
                yield SourceObject(uri=uri + ("/" if folder else ""), source=self.name, size=size, version="",
                                   read=_refuse(refusal))
                continue
            yield SourceObject(
                uri=uri,
                source=self.name,
                size=size,
                version="",
                read=p.read_bytes,
                local_path=resolved,
            )


def _refuse(error: FetchError):
    def read() -> bytes:
        raise error

    return read
