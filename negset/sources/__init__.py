"""Candidate sources behind one small interface.

A source lists ``SourceObject``s; each can be read as bytes and carries the
version information that pins it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol


@dataclass(frozen=True)
class SourceObject:
    uri: str  # portable name (relative to the project when local and inside it)
    source: str  # the source it came from
    size: int
    version: str  # ETag/VersionId for object stores; "" for local files (sha256 pins them)
    read: Callable[[], bytes]
    local_path: Path | None = None


class Source(Protocol):
    name: str

    def list(self) -> Iterable[SourceObject]: ...


def build_sources(specs, root: Path, layout) -> list[Source]:
    from negset.sources.local import LocalSource

    out: list[Source] = []
    for spec in specs:
        if spec.type == "local":
            out.append(LocalSource((root / spec.path).resolve(), recursive=spec.recursive, layout=layout))
    return out
