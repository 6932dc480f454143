"""The sha256-keyed part cache: concurrent writers, content-named parts, the formats of every cache folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from negset.core.cache import PartCache, fields, part_name, row_cache
from negset.core.layout import Layout
from negset.embed.regions import RegionParts, region_cache
from negset.embed.step import embedding_cache
from tests.conftest import REPO

PARTS_PER_WRITER = 60

WRITER = f"""
import sys, time
from pathlib import Path
from negset.core.cache import row_cache

folder, who, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
cache = row_cache(folder)
for i in range({PARTS_PER_WRITER}):
    cache.add({{f"{{who}}-{{i:03d}}": {{"n": i, "who": who}}}})
    cache.add({{"same-in-both": {{"n": 0, "who": "both"}}}})  # both writers cache the very same keys
"""


def test_two_processes_adding_parts_at_once_lose_nothing(tmp_path):
    folder, go = tmp_path / "cache", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), who, str(go)], env=env,
                                stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    time.sleep(1.0)  # both interpreters started and waiting
    go.touch()
    for w in writers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    parts = sorted(folder.glob("part-*.parquet"))
    assert len(parts) == 2 * 2 * PARTS_PER_WRITER  # no part overwrote another, even with equal keys
    assert not list(folder.glob(".*.tmp"))
    cache = row_cache(folder)
    expected = {f"{who}-{i:03d}" for who in "ab" for i in range(PARTS_PER_WRITER)} | {"same-in-both"}
    assert set(cache.rows) == expected
    assert cache.get("b-042") == {"n": 42, "who": "b"}


def test_part_names_hash_the_keys_and_never_repeat():
    a, b = part_name(["x", "y"], ".npz"), part_name(["y", "x"], ".npz")
    assert a != b and a.endswith(".npz")
    assert a.split("-")[1] == b.split("-")[1]  # the keys' hash, whatever their order
    assert part_name(["x"], ".npz").split("-")[1] != a.split("-")[1]


def test_an_unreadable_part_is_skipped_and_the_rest_kept(tmp_path):
    cache = row_cache(tmp_path)
    cache.add({"s1": {"v": 1.5}})
    (tmp_path / "part-0000-broken.parquet").write_bytes(b"not parquet")
    again = row_cache(tmp_path)
    assert again.rows == {"s1": {"v": 1.5}}
    assert "s1" in again and len(again) == 1


def test_fields_reuse_only_rows_with_the_current_field_set(tmp_path):
    cache = row_cache(tmp_path)
    cache.add({"old": {"median": 0.5}})  # a part written by code that computed fewer fields
    cache.add({"new": {"median": 0.4, "spread": 0.1}})
    reread = row_cache(tmp_path)
    assert fields(reread, "old", {"median", "spread"}) is None
    assert fields(reread, "new", {"median", "spread"}) == {"median": 0.4, "spread": 0.1}
    assert fields(reread, "absent", {"median"}) is None


def test_embedding_parts_round_trip_exactly(tmp_path):
    layout = Layout.at(tmp_path)
    rng = np.random.default_rng(0)
    rows = {f"{i:064x}": dict(sha256=f"{i:064x}", embedding=rng.standard_normal(8).astype(np.float32),
                              top1=i, top1_prob=0.5, top5=[i, 1, 2, 3, 4]) for i in range(3)}
    embedding_cache(layout, "k").add(rows)
    got = embedding_cache(layout, "k").rows
    assert set(got) == set(rows)
    for s, r in rows.items():
        assert np.array_equal(got[s]["embedding"], r["embedding"]) and got[s]["embedding"].dtype == np.float32
        assert (got[s]["top1"], got[s]["top5"]) == (r["top1"], r["top5"])


def test_embedding_parts_keep_missing_classifier_fields_and_read_older_parquet_parts(tmp_path):
    """No top-1 (an embedder without a classifier head) survives the .npz part as None; a Parquet part of an
    older version is still read, and the first compaction rewrites it in the current format."""
    import pyarrow as pa

    from negset.core import atomic

    layout = Layout.at(tmp_path)
    v = np.arange(8, dtype=np.float32)
    cache = embedding_cache(layout, "k")
    cache.add({"a": dict(sha256="a", embedding=v, top1=None, top1_prob=None, top5=[])})
    legacy = pa.table({"sha256": ["b"], "embedding": pa.FixedSizeListArray.from_arrays(pa.array(v + 1), 8),
                       "top1": pa.array([7], pa.int16()), "top1_prob": pa.array([0.25], pa.float32()),
                       "top5": pa.array([[7, 1]], pa.list_(pa.int16()))})  # the columns older versions wrote
    atomic.write_parquet(legacy, cache.folder / "part-0000000000000000-legacy.parquet")
    again = embedding_cache(layout, "k")
    assert again.rows["a"]["top1"] is None and again.rows["a"]["top1_prob"] is None and again.rows["a"]["top5"] == []
    assert np.array_equal(again.rows["b"]["embedding"], v + 1)
    assert (again.rows["b"]["top1"], again.rows["b"]["top1_prob"], again.rows["b"]["top5"]) == (7, 0.25, [7, 1])
    assert again.compact() == 2  # two parts, one of them Parquet: merged although under the limit of 8
    assert [p.suffix for p in again.folder.iterdir()] == [".npz"]
    merged = embedding_cache(layout, "k").rows
    assert set(merged) == {"a", "b"} and merged["b"]["top5"] == [7, 1] and merged["a"]["top1"] is None


def test_region_parts_keep_items_without_crops(tmp_path):
    layout = Layout.at(tmp_path)
    vec = np.arange(24, dtype=np.float16).reshape(3, 8)
    done = {"a": ([(0, 0, 4, 4), (1, 1, 5, 5)], vec[:2]), "none": ([], np.zeros((0, 8), np.float16)),
            "b": ([(2, 2, 6, 6)], vec[2:])}
    region_cache(layout, "k").add(done)
    got = region_cache(layout, "k").rows
    assert set(got) == {"a", "none", "b"}
    assert got["a"][0] == [(0, 0, 4, 4), (1, 1, 5, 5)] and np.array_equal(got["a"][1], vec[:2])
    assert got["none"][0] == [] and got["none"][1].shape == (0, 8)
    assert np.array_equal(got["b"][1], vec[2:])


def test_when_two_parts_hold_one_key_the_first_by_name_is_used(tmp_path):
    vec = np.ones((1, 4), np.float16)
    cache = PartCache(tmp_path, RegionParts())
    first, second = cache.add({"k": ([(0, 0, 1, 1)], vec)}), cache.add({"k": ([(0, 0, 2, 2)], 2 * vec)})
    winner = min(first, second)  # names sort by keys hash (equal), then the random suffix
    want = (0, 0, 1, 1) if winner == first else (0, 0, 2, 2)
    assert PartCache(tmp_path, RegionParts()).get("k")[0] == [want]
