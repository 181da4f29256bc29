"""The persisted neighbour graph's kept edges: batch by batch they equal an exact search of the whole catalog, a
re-embedded batch rebuilds them, and the leak-free split and its check read them instead of searching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.curation.dataset import curate, curated_leakage
from cv_dataops.curation.settings import CurationSettings
from cv_dataops.embeddings.graph_store import (
    EDGE_RADIUS,
    kept_pairs,
    load_graph,
    update_graph,
)
from cv_dataops.embeddings.neighbors import NeighborIndex
from cv_dataops.embeddings.tables import EMBEDDINGS
from cv_dataops.embeddings.vectors import read_vectors


def _vectors(seed: int = 0, n: int = 900, dimension: int = 24) -> np.ndarray:
    """Spread-out rows with planted near copies and one dense cluster (more members than the graph's candidates)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dimension))
    copies = rng.choice(n - 100, 120, replace=False)
    x[copies[:60]] = x[copies[60:]] + 0.1 * rng.normal(size=(60, dimension))
    x[n - 60:] = x[0] + 0.05 * rng.normal(size=(60, dimension))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(n: int) -> list[str]:
    return [f"{i:064x}" for i in range(n)]


def _write(catalog: Catalog, batch: str, ids: list[str], vectors: np.ndarray) -> None:
    catalog.write(EMBEDDINGS, EMBEDDINGS.from_rows(
        {"image_id": i, "batch_id": batch, "vector": v.tolist(), "embedder": "test", "embedder_version": "v1"}
        for i, v in zip(ids, vectors, strict=True)), batch)


def _update(catalog: Catalog):
    return update_graph(catalog.storage, "v1", catalog.partition_versions(EMBEDDINGS),
                        lambda batch: read_vectors(catalog, "v1", batches=[batch]), catalog_rows=0, min_rows=0)


def _pair_set(pairs, ids):
    return {(ids[a], ids[b]) for a, b in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True)}


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    return Catalog(LocalStorage(tmp_path / "data"))


def test_edges_kept_batch_by_batch_equal_an_exact_search_of_the_whole_catalog(catalog):
    x, ids = _vectors(), _ids(900)
    order = np.random.default_rng(1).permutation(900)  # copies and originals land in any order
    for number, rows in enumerate(np.array_split(order, 3)):
        _write(catalog, f"b{number}", [ids[r] for r in rows], x[rows])
        _update(catalog)
    graph = load_graph(catalog.storage, "v1")
    exact = NeighborIndex(x, approximate_from=None).radius_pairs(EDGE_RADIUS)
    want = {tuple(sorted(p)) for p in _pair_set(exact, ids)}
    got = {tuple(sorted(p)) for p in _pair_set(graph.edges, graph.image_ids)}
    assert len(want) > 60 * 59 // 2 and got == want
    low, high, distance = graph.edges
    rows = {image_id: row for row, image_id in enumerate(graph.image_ids)}
    back = np.array([rows[i] for i in ids])
    inverse = np.empty(900, np.int64)
    inverse[back] = np.arange(900)
    np.testing.assert_allclose(distance, 1.0 - np.einsum("ij,ij->i", x[inverse[low]].astype(np.float64),
                                                         x[inverse[high]].astype(np.float64)), atol=1e-6)

    # a batch re-embedded: the graph and its edges are built again, as if from scratch
    moved = x.copy()
    first = np.array_split(order, 3)[0]
    moved[first] = _vectors(seed=5, n=900)[first]
    _write(catalog, "b0", [ids[r] for r in first], moved[first])
    update = _update(catalog)
    assert update.rebuilt
    graph = load_graph(catalog.storage, "v1")
    want = {tuple(sorted(p)) for p in _pair_set(NeighborIndex(moved, approximate_from=None).radius_pairs(EDGE_RADIUS),
                                                 ids)}
    assert {tuple(sorted(p)) for p in _pair_set(graph.edges, graph.image_ids)} == want


def test_pairs_among_a_subset_are_what_the_engine_finds_on_its_vectors(catalog):
    x, ids = _vectors(seed=2), _ids(900)
    _write(catalog, "b0", ids, x)
    _update(catalog)
    graph = load_graph(catalog.storage, "v1")
    edges_only = load_graph(catalog.storage, "v1", with_index=False)  # what the split reads: no HNSW to load
    assert edges_only.graph is None and edges_only.image_ids == graph.image_ids
    subset = np.random.default_rng(3).choice(900, 500, replace=False)
    for radius in (0.02, 0.05, EDGE_RADIUS):
        got = graph.pairs_among([ids[r] for r in subset], radius)
        want = NeighborIndex(x[subset], approximate_from=None).radius_pairs(radius, strict=True)
        for g, w, e in zip(got, want, edges_only.pairs_among([ids[r] for r in subset], radius), strict=True):
            np.testing.assert_allclose(g, w, atol=1e-9)
            np.testing.assert_array_equal(g, e)
    assert graph.pairs_among([ids[0]], EDGE_RADIUS + 0.01) is None  # beyond the kept edges: search instead
    assert graph.pairs_among([ids[0], "f" * 64], 0.05) is None       # an image the graph does not hold


def test_the_split_and_its_check_read_the_kept_edges_only_when_the_graph_is_current(catalog):
    x, ids = _vectors(seed=4), _ids(900)
    _write(catalog, "b0", ids[:600], x[:600])
    _write(catalog, "b1", ids[600:], x[600:])
    pool = pd.DataFrame({"image_id": ids, "uri": [f"/landing/{i}.jpg" for i in range(900)],
                         "label": [str(i % 3) for i in range(900)], "batch_id": "b0"})
    settings = CurationSettings(neighbour_radius=0.05)
    near = kept_pairs(catalog.storage, "v1", catalog.partition_versions(EMBEDDINGS))
    assert near.graph is None and "no neighbour graph" in near.why_not
    searched = curate(pool, x, settings, near)
    assert near.used.startswith("searched by the neighbour engine: no neighbour graph")
    _update(catalog)
    near = kept_pairs(catalog.storage, "v1", catalog.partition_versions(EMBEDDINGS))
    from_edges = curate(pool, x, settings, near)
    assert near.used.startswith("the neighbour graph's kept edges")
    pd.testing.assert_series_equal(from_edges.selected.split, searched.selected.split)
    vectors = read_vectors(catalog, "v1")
    curated = from_edges.selected[["image_id", "split"]]
    groups = pd.Series(dtype=object)
    checked = curated_leakage(curated, vectors, groups, 0.05, near)
    assert checked == curated_leakage(curated, vectors, groups, 0.05)
    assert checked["near_pairs"] >= 60 * 59 // 2 and checked["leak_free"]  # the dense cluster kept in one split
    _write(catalog, "b1", ids[600:], x[600:] * 1.0)  # rewritten since the graph was updated: its edges may be stale
    stale = kept_pairs(catalog.storage, "v1", catalog.partition_versions(EMBEDDINGS))
    assert stale.graph is None and "1 batch(es) in the neighbour graph changed" in stale.why_not
    _update(catalog)
    _write(catalog, "b2", ["e" * 64], x[:1])  # a batch not in the graph yet: its image makes the edges answer None
    near = kept_pairs(catalog.storage, "v1", catalog.partition_versions(EMBEDDINGS))
    assert near(ids[:5] + ["e" * 64], 0.05) is None and "not in the neighbour graph" in near.used
    assert near(ids[:5], 0.05) is not None


def test_a_batch_of_another_embedder_waits_outside_the_graph_and_joins_it_once_re_embedded(catalog):
    x, ids = _vectors(seed=6, n=400), _ids(400)
    _write(catalog, "b0", ids[:300], x[:300])
    assert _update(catalog).rows == 300
    catalog.write(EMBEDDINGS, EMBEDDINGS.from_rows(
        {"image_id": i, "batch_id": "b1", "vector": [1.0, 0.0], "embedder": "test", "embedder_version": "v0"}
        for i in ids[300:]), "b1")
    before = catalog.storage.local_path("models/neighbours/v1.npz").stat().st_mtime_ns
    waiting = _update(catalog)
    assert not waiting.rebuilt and waiting.batches_added == [] and waiting.rows == 300
    assert catalog.storage.local_path("models/neighbours/v1.npz").stat().st_mtime_ns == before  # not rewritten
    assert _update(catalog).rows == 300  # nothing new since: the summary answers
    _write(catalog, "b1", ids[300:], x[300:])  # re-embedded by the current embedder
    joined = _update(catalog)
    assert not joined.rebuilt and joined.batches_added == ["b1"] and joined.rows == 400


def test_pairs_at_radius_zero_and_a_corrupt_graph_file(catalog):
    x, ids = _vectors(seed=7, n=300), _ids(300)
    x[100:150] = x[0]  # exact copies: distance about 0, a little below or above in float64
    _write(catalog, "b0", ids, x)
    _update(catalog)
    graph = load_graph(catalog.storage, "v1")
    for strict in (True, False):
        got = graph.pairs_among(ids, 0.0, strict=strict)
        want = NeighborIndex(x, approximate_from=None).radius_pairs(0.0, strict=strict)
        assert set(zip(got[0].tolist(), got[1].tolist())) == set(zip(want[0].tolist(), want[1].tolist()))
    for junk in (b"PK\x03\x04 torn zip", b"", b"not a zip at all"):
        catalog.storage.write_bytes("models/neighbours/v1.npz", junk)
        assert load_graph(catalog.storage, "v1") is None
