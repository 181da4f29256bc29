"""The one neighbour engine and the one connected-components, against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from cv_dataops.core.graph import connected_components
from cv_dataops.embeddings.neighbors import NeighborIndex


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _cosine(a, b):
    return 1.0 - a.astype(np.float64) @ b.astype(np.float64).T


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(300, 12)))
    copies = _unit(base[rng.integers(0, 300, 80)] + 0.05 * rng.normal(size=(80, 12)))
    return np.concatenate([base, copies])


@pytest.mark.parametrize("block", [1, 997, 1 << 24])  # one row at a time, a few, all at once
def test_kneighbors_agree_with_brute_force_whatever_the_blocks(vectors, block):
    index = NeighborIndex(vectors, block=block)
    queries = vectors[:40] + 0.01
    distances, rows = index.kneighbors(queries, 7)
    full = _cosine(_unit(queries), vectors)
    want = np.lexsort((np.tile(np.arange(len(vectors)), (40, 1)), full), axis=1)[:, :7]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(distances, np.take_along_axis(full, want, axis=1), atol=1e-6)
    own, own_rows = index.kneighbors(k=3)  # the index's own rows leave themselves out
    assert not (own_rows == np.arange(len(vectors))[:, None]).any()
    self_full = _cosine(vectors, vectors)
    np.fill_diagonal(self_full, np.inf)
    np.testing.assert_allclose(own, np.sort(self_full, axis=1)[:, :3], atol=1e-6)


def test_radius_queries_agree_with_brute_force(vectors):
    index = NeighborIndex(vectors, block=5000)
    full = _cosine(vectors, vectors)
    for radius in (0.0, 0.005, 0.02, 0.3):
        i, j, d = index.radius_pairs(radius)
        want = np.argwhere(np.triu(full <= radius, 1))
        assert sorted(zip(i.tolist(), j.tolist())) == sorted(map(tuple, want.tolist()))
        assert (i < j).all() and np.allclose(d, full[i, j], atol=1e-6)
        strict = index.radius_pairs(radius, strict=True)
        assert len(strict[0]) == int(np.triu(full < radius, 1).sum())
    q, r, d = index.query_radius(vectors[:25], 0.02)
    assert len(q) == int((full[:25] <= 0.02).sum()) and (q[:-1] <= q[1:]).all()
    assert set(zip(q.tolist(), r.tolist())) >= {(n, n) for n in range(25)}  # an outside query may be in the index


def test_ties_by_row_vectors_not_finite_and_other_dimensions():
    x = _unit([[1, 0], [1, 0], [0, 1], [1, 0]]).astype(np.float32)
    distances, rows = NeighborIndex(x).kneighbors(np.array([1.0, 0.0]), 3)
    assert rows.tolist() == [[0, 1, 3]] and np.allclose(distances, 0.0)
    x[1] = np.nan  # an undecodable image's vector
    index = NeighborIndex(x)
    assert 1 not in index.kneighbors(np.array([1.0, 0.0]), 2)[1]
    assert np.isinf(index.kneighbors(k=3)[0][1]).all()
    assert 1 not in index.radius_pairs(0.5)[0] and 1 not in index.radius_pairs(0.5)[1]
    with pytest.raises(ValueError, match="3 dimensions, the index 2"):
        index.kneighbors(np.ones(3), 1)
    assert NeighborIndex(x).kneighbors(k=10)[0].shape == (4, 3)  # k is capped at the other rows
    assert NeighborIndex(np.zeros((0, 4))).radius_pairs(0.1)[0].size == 0


def test_zero_vectors_have_no_direction_and_are_nobodys_neighbour():
    """A zero row has no cosine with anything. Ranked by Euclidean distance between unit vectors it would sit at
    cosine distance 0.5 from every query and push true neighbours farther than that out of the k nearest."""
    x = _unit([[1, 0, 0], [0.2, 1, 0], [0.2, 0, 1], [0.25, -1, 0]]).astype(np.float32)  # all ~0.8 from [1, 0, 0]
    x = np.vstack([x, np.zeros((3, 3), np.float32)])  # three blank images
    for index in (NeighborIndex(x), NeighborIndex(x, approximate_from=2)):
        distances, rows = index.kneighbors(np.array([1.0, 0.0, 0.0]), 4)
        assert rows[0, 0] == 0 and set(rows[0, 1:].tolist()) == {1, 2, 3}, rows
        assert np.isfinite(distances).all()
        own_distances, own_rows = index.kneighbors(k=3)
        assert set(own_rows[0].tolist()) == {1, 2, 3} and np.isinf(own_distances[4:]).all()
        low, high, _ = index.radius_pairs(1.9)
        assert len(low) and not (set(low.tolist()) | set(high.tolist())) & {4, 5, 6}
        assert 4 not in index.query_radius(np.array([1.0, 0.0, 0.0]), 1.9)[1]
        assert not len(index.query_radius(np.zeros(3), 1.9)[0])  # a zero query finds nothing


def test_connected_components_roots_are_the_smallest_node():
    rng = np.random.default_rng(4)
    n = 5000
    a, b = rng.integers(0, n, 4000), rng.integers(0, n, 4000)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = find(x), find(y)
        parent[max(rx, ry)] = min(rx, ry)
    assert connected_components(a, b, n).tolist() == [find(x) for x in range(n)]
    chain = rng.permutation(100_000)  # one long chain: the worst case for label propagation
    assert (connected_components(chain[:-1], chain[1:], 100_000) == 0).all()
    assert connected_components(np.zeros(0), np.zeros(0), 3).tolist() == [0, 1, 2]
    assert connected_components([], [], 0).size == 0


# --- the HNSW path for all-pairs questions over large sets ------------------------------------------------------

def test_all_pairs_questions_through_the_graph_agree_with_brute_force(vectors):
    exact, graph = NeighborIndex(vectors, approximate_from=None), NeighborIndex(vectors, approximate_from=1)
    assert graph.approximate and not exact.approximate
    for radius in (0.005, 0.02, 0.3):
        want, got = exact.radius_pairs(radius, strict=True), graph.radius_pairs(radius, strict=True)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(w, g) if w.dtype.kind == "i" else np.testing.assert_allclose(w, g)
    (d_exact, r_exact), (d_graph, r_graph) = exact.kneighbors(k=5), graph.kneighbors(k=5)
    np.testing.assert_allclose(d_graph, d_exact, atol=1e-9)  # same distances (ties may order rows differently)
    assert (r_graph == r_exact).mean() > 0.99


def test_a_dense_cluster_is_found_whole_beyond_the_graph_s_candidates():
    rng = np.random.default_rng(1)
    spread = _unit(rng.normal(size=(400, 16)))
    cluster = _unit(spread[0] + 0.001 * rng.normal(size=(90, 16)))  # 90 near copies: more than 32 candidates
    x = np.concatenate([spread, cluster, np.full((2, 16), np.nan, np.float32)])
    got = NeighborIndex(x, approximate_from=1).radius_pairs(0.01)
    want = NeighborIndex(x, approximate_from=None).radius_pairs(0.01)
    assert len(want[0]) >= 90 * 89 // 2
    for w, g in zip(want, got):
        np.testing.assert_allclose(w, g)
    assert not {400 + 90, 400 + 91} & (set(got[0].tolist()) | set(got[1].tolist()))


def test_the_graph_persists_and_finds_the_same_candidates():
    from cv_dataops.embeddings.neighbors import ApproximateIndex

    rng = np.random.default_rng(2)
    x = _unit(rng.normal(size=(500, 24)))
    x[7] = np.nan
    graph = ApproximateIndex(24)
    graph.add(x[:300])
    graph.add(x[300:])
    again = ApproximateIndex.from_bytes(graph.to_bytes())
    assert len(again) == 500
    np.testing.assert_array_equal(again.candidates(x[:50], 6), graph.candidates(x[:50], 6))
    assert 7 not in graph.candidates(x, 10)
    with pytest.raises(ValueError, match="12 dimensions, the graph 24"):
        graph.add(np.ones((1, 12)))


@pytest.mark.slow
def test_large_sets_take_the_graph_and_keep_their_radius_pairs():
    """Planted near copies among 21,000 rows through the graph (the engine takes it itself from 200,000), found as the
    exact search finds them; below the threshold the engine stays exact."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(21_000, 64)).astype(np.float32) * (1.0 / (1.0 + np.arange(64)) ** 0.5)
    copies = rng.choice(21_000, 300, replace=False)
    x[copies[:150]] = x[copies[150:]] + 0.01 * rng.normal(size=(150, 64)).astype(np.float32)
    assert not NeighborIndex(x).approximate
    index = NeighborIndex(x, approximate_from=20_000)
    assert index.approximate
    got = set(zip(*[a.tolist() for a in index.radius_pairs(0.02)[:2]]))
    block = NeighborIndex(x, approximate_from=None)
    want = set(zip(*[a.tolist() for a in block.radius_pairs(0.02)[:2]]))
    assert len(want) >= 150 and len(got & want) / len(want) >= 0.99 and got <= want


def test_rows_the_graph_finds_too_few_candidates_for_are_searched_exactly(monkeypatch):
    from cv_dataops.embeddings.neighbors import ApproximateIndex

    rng = np.random.default_rng(4)
    x = _unit(rng.normal(size=(200, 8)))
    original = ApproximateIndex.candidates

    def short(self, queries, k):
        rows = original(self, queries, k)
        rows[::3, -2:] = -1  # as if the graph had found fewer for every third row
        return rows

    monkeypatch.setattr(ApproximateIndex, "candidates", short)
    distances, rows = NeighborIndex(x, approximate_from=1).kneighbors(k=4)
    want_d, want_r = NeighborIndex(x, approximate_from=None).kneighbors(k=4)
    np.testing.assert_allclose(distances, want_d, atol=1e-9)
    assert np.isfinite(distances).all() and not (rows == np.arange(200)[:, None]).any()
