"""Where each step reads and writes, under the project's ``data/`` folder.

Each step owns one folder (a DVC output); the DuckDB catalog beside them is
rebuilt from those files by whichever step needs it.

While a step runs under ``negset.pipeline.run_step``, its own folder is a
staging folder beside the real one (``staged``: see negset/core/staging.py);
every other step's folder is the real one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path
    staged: tuple = ()  # ((folder name under data/, the staging folder that stands in for it),)

    @classmethod
    def at(cls, root: Path | str) -> "Layout":
        return cls(Path(root).resolve())

    def staging(self, folder: str, path: Path) -> "Layout":
        """This layout with ``data/<folder>`` read and written at ``path`` instead."""
        return dataclasses.replace(self, staged=((folder, Path(path)),))

    def _folder(self, name: str) -> Path:
        for folder, path in self.staged:
            if folder == name:
                return path
        return self.data / name

    @property
    def data(self) -> Path:
        return self.root / "data"

    # ingest
    @property
    def ingest(self) -> Path:
        return self._folder("ingest")

    @property
    def objects(self) -> Path:
        return self.ingest / "objects"

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    @cached_property
    def _objects_text(self) -> str:
        return str(self.objects)

    def object_file(self, sha256: str) -> str:
        """``object_path`` as a string, for hot loops (no pathlib parsing)."""
        return os.path.join(self._objects_text, sha256[:2], sha256)

    # embed
    @property
    def embed(self) -> Path:
        return self._folder("embed")

    # detect
    @property
    def detect(self) -> Path:
        return self._folder("detect")

    # tag
    @property
    def tags(self) -> Path:
        return self._folder("tags")

    # select
    @property
    def select(self) -> Path:
        return self._folder("select")

    # export
    @property
    def negatives(self) -> Path:
        return self._folder("negatives")

    @property
    def catalog(self) -> Path:
        return self.data / "catalog.duckdb"

    def uri(self, path: Path, resolved: bool = False) -> str:
        """A portable name for a local file: relative to the project when inside it.

        ``resolved=True``: ``path`` is already absolute with no symlinks in it.
        """
        path = Path(path) if resolved else Path(path).resolve()
        root = str(self.root)
        text = str(path)
        if text.startswith(root + os.sep) and os.sep == "/":
            return text[len(root) + 1 :]  # the common case, without pathlib's parsing
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_uri()

    def resolve_uri(self, uri: str) -> Path:
        if uri.startswith("file://"):
            from urllib.parse import unquote, urlparse

            return Path(unquote(urlparse(uri).path))
        return self.root / uri
