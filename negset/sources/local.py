"""A local folder as a source: recursive, sorted, symlinked folders not followed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from negset.errors import NegsetError
from negset.sources import SourceObject


class LocalSource:
    workers = 1  # local reads are cheap: read in listing order, as they are listed

    def __init__(self, path: Path, recursive: bool = True, layout=None):
        self.path = Path(path)
        self.recursive = recursive
        self.layout = layout
        self.name = layout.uri(self.path) if layout else str(self.path)

    def _files(self) -> Iterator[Path]:
        if not self.path.is_dir():
            raise NegsetError(f"{self.path}: source folder not found", hint="check ingest.sources[].path")
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if not self.recursive:
                dirnames[:] = []
            for name in sorted(filenames):
                if not name.startswith("."):
                    p = Path(dirpath) / name
                    if p.is_file():
                        yield p

    def list(self) -> Iterator[SourceObject]:
        for p in self._files():
            yield SourceObject(
                uri=self.layout.uri(p) if self.layout else str(p),
                source=self.name,
                size=p.stat().st_size,
                version="",
                read=p.read_bytes,
                local_path=p.resolve(),
            )
