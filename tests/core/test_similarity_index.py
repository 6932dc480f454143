"""The approximate top-k (inverted lists over the positives) against the exact float32 kernels."""

from __future__ import annotations

import numpy as np
import pytest

from negset.core import similarity as sim

RECALL_FLOOR = 0.85  # share of the exact top-k the index finds on the sample (half the rows are far from every positive)
NEAR_RECALL_FLOOR = 0.98  # the same for the rows near the positives (those the leak rules decide on)


def clustered(n: int, dim: int, centres: np.ndarray, rng, noise: float = 0.6) -> np.ndarray:
    c = rng.integers(0, len(centres), n)
    x = centres[c] + noise * rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    dim = 96
    centres = rng.standard_normal((24, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    P = clustered(1536, dim, centres[:12], rng).astype(np.float32)
    C = clustered(6000, dim, centres, rng)
    exact = sim.exact_similarity(C, np.arange(len(C)), P, 5)
    return C, P, exact


@pytest.fixture(params=[False, True], ids=["float32", "int8"])
def products(request, monkeypatch):
    """The index's and brute force's products in float32 / bfloat16, or in int8 (forced: whatever the CPU)."""
    monkeypatch.setattr(sim, "int8_products", lambda: request.param)
    return "int8" if request.param else "float32"


@pytest.fixture
def float32(monkeypatch):
    monkeypatch.setattr(sim, "int8_products", lambda: False)


def test_forced_index_is_a_lower_bound_with_measured_error(data, float32):
    C, P, (t, b, a) = data
    est = sim.estimate_similarity(C, P, 5, approx_above=0, sample=500)
    assert not est.exact and est.lower_bound and "inverted lists" in est.method
    # float32 scores of a subset of the positives: never above the exact value
    assert (est.topk <= t + sim.FLOAT_SLACK).all() and (est.best <= b + sim.FLOAT_SLACK).all()
    assert est.recall >= RECALL_FLOOR
    # where the nearest positive was found, its similarity is the exact one
    found = est.arg == a
    assert found.mean() > 0.85
    np.testing.assert_allclose(est.best[found], b[found], atol=1e-5)
    # the sample's measured error is what the rows sampled really have
    assert est.max_error("topk") == pytest.approx(float(np.abs(t[est.sample] - est.topk[est.sample]).max()), abs=1e-6)


def test_rows_outside_the_margin_decide_as_the_exact_values_do(data, products):
    C, P, (t, b, a) = data
    est = sim.estimate_similarity(C, P, 5, approx_above=0, sample=500)
    assert est.method.endswith(products)
    for thr in np.quantile(t, [0.5, 0.8, 0.95]):
        near = est.near("topk", est.topk, float(thr))
        assert ((est.topk >= thr) == (t >= thr))[~near].all()
        assert near.sum() < 0.5 * len(C)  # the margin is narrow: most rows need no exact re-score


def test_int8_index_is_refined_to_float32_lower_bounds(data, monkeypatch):
    """int8 list products may land on either side of the exact value (two-sided margins); ``refine`` gives the
    float32 values over the same probed lists (what a float32 index estimates: lower bounds), and ``refined``
    their own measured error, which decides the rows near a threshold as the exact values do."""
    C, P, (t, b, a) = data
    monkeypatch.setattr(sim, "int8_products", lambda: True)
    est = sim.estimate_similarity(C, P, 5, approx_above=0, sample=500)
    assert not est.lower_bound and "int8" in est.method and est.recall >= RECALL_FLOOR
    err = t - est.topk
    assert (err < -sim.FLOAT_SLACK).any(), "int8 rounding puts some estimates over the exact value"
    assert np.abs(est.best - b)[est.arg == a].max() < 0.01  # rounding only, where the nearest positive was found
    down, up = est.bounds("topk", float(np.median(t)))
    assert down > sim.FLOAT_SLACK and up > 0
    rows = np.arange(0, len(C), 7)
    rt, rb, ra = est.refine(sim.RowView(C, rows))
    monkeypatch.setattr(sim, "int8_products", lambda: False)
    want = sim.PositiveIndex(P, seed=0).search(np.asarray(C[rows]), 5)[0]
    np.testing.assert_allclose(rt, want.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(rb, want[:, 0], atol=1e-5)
    assert (rt <= t[rows] + sim.FLOAT_SLACK).all() and (rb <= b[rows] + sim.FLOAT_SLACK).all()
    ref = est.refined
    assert ref.lower_bound and ref.bounds("topk", 0.5)[0] == sim.FLOAT_SLACK
    np.testing.assert_allclose(ref.topk, est.refine(sim.RowView(C, est.sample))[0], atol=1e-6)
    for thr in np.quantile(t, [0.5, 0.8, 0.95]):
        near = ref.near("topk", rt, float(thr))
        assert ((rt >= thr) == (t[rows] >= thr))[~near].all()


def test_int8_brute_force_error_is_rounding_only(data, monkeypatch):
    """Brute force (index=False) in int8: every positive scored, values within int8 rounding of the exact ones,
    the nearest positive the exact one wherever the runner-up is not within that rounding."""
    C, P, (t, b, a) = data
    monkeypatch.setattr(sim, "int8_products", lambda: True)
    est = sim.estimate_similarity(C, P, 1, approx_above=0, sample=500, index=False)
    assert est.method == "brute force, int8" and not est.lower_bound
    _, b1, a1 = sim.exact_similarity(C, np.arange(len(C)), P, 1)
    assert np.abs(est.best - b1).max() < 0.01
    sims = np.asarray(C, np.float32) @ P.T
    gap = b1 - np.partition(sims, -2, axis=1)[:, -2]
    clear = gap > 0.01
    assert clear.mean() > 0.2 and (est.arg == a1)[clear].all()
    assert est.max_error("best") == pytest.approx(float(np.abs(b1[est.sample] - est.best[est.sample]).max()), abs=1e-6)


def test_small_products_stay_exact_and_the_same(data):
    C, P, (t, b, a) = data
    est = sim.estimate_similarity(C, P, 5)  # 6,000 x 1,536: under INDEX_ABOVE
    assert est.exact and est.margin("topk", 0.5) == 0.0
    t2, b2, a2 = sim.similarity_to_positives(C, P, 5)
    np.testing.assert_array_equal(est.topk, t2)
    np.testing.assert_array_equal(est.arg, a2)


def test_recall_near_the_positives(data, float32):
    C, P, (t, b, a) = data
    near = np.flatnonzero(t >= np.quantile(t, 0.6))
    _, idx, _ = sim.PositiveIndex(P).search(C[near], 5)
    sims = np.asarray(C[near], np.float32) @ P.T
    want = np.argsort(-sims, axis=1)[:, :5]
    recall = np.mean([len(set(w) & set(g)) / 5 for w, g in zip(want.tolist(), idx.tolist())])
    assert recall >= NEAR_RECALL_FLOOR


def test_kmeans_lists_cover_every_positive_once(data):
    _, P, _ = data
    index = sim.PositiveIndex(P, seed=1)
    assert sorted(index.members.tolist()) == list(range(len(P)))
    sizes = np.diff(index.bounds)
    assert (sizes > 0).all() and sizes.sum() == len(P) and index.lists == len(P) // sim.LIST_SIZE


def test_large_products_in_threads_match_numpy_and_repeat(data):
    """Over NUMPY_BELOW the kernels run blocks of rows on one Python thread per core (torch, one thread each):
    the same float32 values as NumPy, the same nearest positive, the same on a second run, torch's threads restored."""
    torch = pytest.importorskip("torch")
    C, P, _ = data
    rng = np.random.default_rng(5)
    rows = np.sort(rng.choice(len(C), 5000, replace=False))
    big = np.concatenate([P] * 5)  # 7,680 positives: 5,000 x 7,680 = 3.8e7 products, over NUMPY_BELOW
    assert len(rows) * len(big) > sim.NUMPY_BELOW
    before = torch.get_num_threads()
    got = sim.exact_similarity(C, rows, big, 5, chunk=512)  # ten blocks
    assert torch.get_num_threads() == before
    want = sim._numpy_similarity_to_positives(sim.RowView(C, rows), big, 5, 4096)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)
    np.testing.assert_array_equal(got[2] % len(P), want[2] % len(P))  # a copy of the same positive
    again = sim.exact_similarity(C, rows, big, 5, chunk=512)
    for a, b in zip(got, again):
        np.testing.assert_array_equal(a, b)
    # the index search: the same per row whatever the block size (each block on one thread)
    ivf = sim.PositiveIndex(P, seed=2)
    v1, i1, none = ivf.search(C, 5, chunk=700)
    R = sim.random_projection(4, C.shape[1], 16)
    v2, i2, proj = ivf.search(C, 5, chunk=6000, project=R)
    np.testing.assert_allclose(v1, v2, atol=1e-6)
    assert (i1 == i2).mean() > 0.999
    # the projection asked for comes from the same pass: each row @ R, in row order
    assert none is None and proj.shape == (len(C), 16)
    np.testing.assert_allclose(proj, np.asarray(C, np.float32) @ R, atol=1e-4)
    assert (sim.random_projection(4, C.shape[1], 16) is R) and not np.array_equal(sim.random_projection(5, C.shape[1], 16), R)


def test_search_scores_exactly_the_probed_lists(data, float32):
    """Each row's estimate is the exact top-k over the members of its probed lists, whatever the lists' sizes
    (products run over widths rounded up to sim.LANES: the extra columns never count), and the projection
    made in the same pass is the row's product with it."""
    C, P, _ = data
    index = sim.PositiveIndex(P)
    sizes = np.diff(index.bounds)
    assert (sizes % sim.LANES != 0).any(), "some list width is not a multiple of LANES"
    rows = np.asarray(C[:300], np.float32)
    project = sim.random_projection(0, P.shape[1], 37)  # 37: a width that needs padding too
    vals, idx, proj = index.search(rows, 5, project=project)
    probed = np.argsort(-(rows @ index.centroids.T), axis=1)[:, : index.nprobe]
    for r in range(len(rows)):
        members = np.concatenate([index.members[index.bounds[j] : index.bounds[j + 1]] for j in probed[r]])
        s = rows[r] @ P[members].T
        best = np.argsort(-s)[:5]
        np.testing.assert_allclose(vals[r], s[best], atol=1e-5)
        assert set(idx[r].tolist()) <= set(members.tolist())
    np.testing.assert_allclose(proj, rows @ project, atol=1e-4)
