"""PartCache.compact: many parts become one with the same rows; mixed rows are left alone."""

from negset.core.cache import row_cache


def test_compact_merges_parts_into_one_with_the_same_rows(tmp_path):
    cache = row_cache(tmp_path)
    for i in range(10):
        cache.add({f"sha{i}": dict(value=i, name=f"n{i}")})
    assert len(list(tmp_path.glob("part-*"))) == 10
    assert cache.compact(most=8) == 10
    assert len(list(tmp_path.glob("part-*"))) == 1
    again = row_cache(tmp_path)
    assert again.rows == {f"sha{i}": dict(value=i, name=f"n{i}") for i in range(10)}
    assert again.compact(most=8) == 0  # one part: nothing to do


def test_compact_leaves_rows_of_different_fields_and_few_parts(tmp_path):
    cache = row_cache(tmp_path)
    cache.add({"a": dict(value=1)})
    cache.add({"b": dict(value=2)})
    assert cache.compact(most=8) == 0
    for i in range(8):
        cache.add({f"old{i}": dict(other=i)})  # rows of older code: another set of fields
    assert cache.compact(most=8) == 0
    assert len(list(tmp_path.glob("part-*"))) == 10 and len(row_cache(tmp_path).rows) == 10
