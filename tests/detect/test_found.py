"""Found: a source's detections as columns, reduced per image as the per-detection loop did."""

import numpy as np

from negset.detect.found import Found


def _rows():
    return [
        dict(sha256="b", cls="dog", score=0.5, x0=1, y0=2, x1=3, y1=4),
        dict(sha256="a", cls="cat", score=0.9, x0=0, y0=0, x1=9, y1=9, tile=2),
        dict(sha256="b", cls="Dog", score=0.7, x0=5, y0=6, x1=7, y1=8),
        dict(sha256="b", cls="dog", score=0.7, x0=9, y0=9, x1=9, y1=9),  # a tie: the first row of it wins
        dict(sha256="a", cls="dog", score=0.2, x0=1, y0=1, x1=2, y1=2),
    ]


def test_strongest_is_each_images_best_wanted_detection_first_of_ties():
    found = Found.from_rows(_rows())
    best = found.strongest({"dog"})
    assert best == {"b": (0.7, "Dog", (5.0, 6.0, 7.0, 8.0)), "a": (0.2, "dog", (1.0, 1.0, 2.0, 2.0))}
    assert found.strongest({"cat"}) == {"a": (0.9, "cat", (0.0, 0.0, 9.0, 9.0))}
    assert found.strongest({"person"}) == {}
    assert found.images() == {"a", "b"} and found.class_names() == {"dog", "cat", "Dog"}


def test_cached_rows_and_dict_rows_make_the_same_columns():
    cached = [("a", dict(cls=[1, 0], score=[0.9, 0.2], box=[0, 0, 9, 9, 1, 1, 2, 2], tile=[2, 0])),
              ("c", dict(cls=[], score=[], box=[], tile=[])),
              ("b", dict(cls=[0], score=[0.5], box=[1, 2, 3, 4], tile=[0]))]
    from_cache = Found.from_cached(["dog", "cat"], cached)
    assert len(from_cache) == 3 and from_cache.images() == {"a", "b"}
    rows = from_cache.table("yolox").to_pylist()
    assert [(r["sha256"], r["class"], r["score"], r["tile"]) for r in rows] == [
        ("a", "cat", 0.9, 2), ("a", "dog", 0.2, 0), ("b", "dog", 0.5, 0)]
    assert {r["source"] for r in rows} == {"yolox"} and (rows[2]["x0"], rows[2]["y1"]) == (1.0, 4.0)
    again = Found.from_rows([dict(sha256=r["sha256"], cls=r["class"], score=r["score"], tile=r["tile"],
                                  **{k: r[k] for k in ("x0", "y0", "x1", "y1")}) for r in rows])
    assert again.strongest({"dog"}) == from_cache.strongest({"dog"})
    np.testing.assert_array_equal(again.box, from_cache.box)


def test_no_detections():
    empty = Found.from_rows([])
    assert len(empty) == 0 and empty.strongest({"dog"}) == {} and empty.table("x").num_rows == 0
