"""Where each step reads and writes, under the project's ``data/`` folder.

Each step owns one folder (a DVC output); the DuckDB catalog beside them is
rebuilt from those files by whichever step needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def at(cls, root: Path | str) -> "Layout":
        return cls(Path(root).resolve())

    @property
    def data(self) -> Path:
        return self.root / "data"

    # ingest
    @property
    def ingest(self) -> Path:
        return self.data / "ingest"

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
        return self.data / "embed"

    # detect
    @property
    def detect(self) -> Path:
        return self.data / "detect"

    # tag
    @property
    def tags(self) -> Path:
        return self.data / "tags"

    # select
    @property
    def select(self) -> Path:
        return self.data / "select"

    # export
    @property
    def negatives(self) -> Path:
        return self.data / "negatives"

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
