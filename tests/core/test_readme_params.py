"""The README's parameter table and the schema agree: every key's default, and every key listed."""

from __future__ import annotations

import re

import pytest
import yaml
from pydantic import BaseModel

from negset.core.config import Params
from tests.conftest import REPO

REQUIRED = object()


def table_rows() -> list[tuple[str, str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Parameters (`params.yaml`)"):]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def field_at(dotted: str):
    """The pydantic field of a dotted key (None when no such key)."""
    model, info = Params, None
    for part in dotted.split("."):
        item = part.endswith("[]")  # sources[].classes: a key of each list entry
        part = part.removesuffix("[]")
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        ann = info.annotation
        if item:
            args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
            ann = args[0] if args else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return info


def default_of(info):
    if info.is_required():
        return REQUIRED
    value = info.default_factory() if info.default_factory is not None else info.default
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


PAIRS = re.compile(r"(\w+ [\d.]+)(, \w+ [\d.]+)+")  # a cell of 'name value' pairs: dark 0.22, light 0.05


def keys_of(key_cell: str, default: str, meaning: str) -> list[str]:
    """`a.b.c`, `d`: a.b.c and a.b.d; `a.b.*`: the keys of a.b the default cell (pairs) or the meaning names."""
    names = re.findall(r"`([^`]+)`", key_cell)
    first = names[0]
    if first.endswith(".*"):
        prefix = first[:-2]
        named = [p.split(" ")[0] for p in default.split(", ")] if PAIRS.fullmatch(default) else re.findall(r"`(\w+)`", meaning)
        return [f"{prefix}.{n}" for n in named if field_at(f"{prefix}.{n}") is not None]
    parent = first.rsplit(".", 1)[0]
    return [n if "." in n else f"{parent}.{n}" for n in names]


def parse_value(text: str):
    text = re.sub(r"\s*\(demo:[^)]*\)", "", text.replace("`", "")).strip()
    if text == "(required)":
        return REQUIRED
    if text == "":
        return None
    return yaml.safe_load(text)


def values_of(cell: str, keys: list[str]) -> dict[str, object]:
    """The defaults a cell gives: one value (per key, or 'name value' pairs), split on ' / ' or ', '."""
    if len(keys) == 1 and PAIRS.fullmatch(cell):  # a mapping: hard 0.5, medium 0.3
        return {keys[0]: {k: yaml.safe_load(v) for k, v in (p.split(" ") for p in cell.split(", "))}}
    if len(keys) > 1 and PAIRS.fullmatch(cell):  # select.quality.*: dark 0.22, ...
        pairs = dict(p.split(" ") for p in cell.split(", "))
        return {k: yaml.safe_load(pairs[k.rsplit(".", 1)[1]]) for k in keys}
    if len(keys) == 1:
        return {keys[0]: parse_value(cell)}
    parts = cell.split(" / ") if " / " in cell else cell.split(", ")
    assert len(parts) == len(keys), (cell, keys)
    return dict(zip(keys, (parse_value(p) for p in parts)))


ROWS = table_rows()


def documented() -> dict[str, object]:
    out = {}
    for key_cell, default, meaning in ROWS:
        out.update(values_of(default, keys_of(key_cell, default, meaning)))
    return out


def test_the_table_is_there():
    assert len(ROWS) > 30


@pytest.mark.parametrize("key", sorted(documented()))
def test_each_documented_default_is_the_schema_s(key):
    info = field_at(key)
    assert info is not None, f"README names {key}, which params.yaml does not have"
    want = documented()[key]
    got = default_of(info)
    if isinstance(got, dict) and want == {}:
        return  # a section of its own keys (ingest.s3: its defaults are listed elsewhere)
    if want is REQUIRED or got is REQUIRED:
        assert want is got, f"{key}: README says {'required' if want is REQUIRED else want!r}, schema {got!r}"
        return
    assert got == want, f"{key}: README says {want!r}, the schema's default is {got!r}"


def schema_keys(model=Params, prefix="") -> list[str]:
    """Every leaf key of the schema (a sub-section with defaults counts through its keys)."""
    out = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and not info.is_required() and info.default is not None:
            out += [key] + schema_keys(ann, key + ".")
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            out += [key] + schema_keys(ann, key + ".")
        else:
            out.append(key)
    return out


def test_every_key_of_the_schema_is_in_the_table():
    listed = set(documented())
    missing = [k for k in schema_keys() if k not in listed and not any(k.startswith(d + ".") for d in listed)
               and not any(d.startswith(k + ".") for d in listed)]
    assert not missing, f"README's parameter table lacks: {missing}"
