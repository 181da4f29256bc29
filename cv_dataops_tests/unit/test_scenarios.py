"""Scenario discovery finds the clusters that are there, numbers them by size, and maps the catalog."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from sklearn.datasets import make_blobs

from cv_dataops.discovery.scenarios import choose_count, discover, map_2d, map_png


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_planted_scenarios_are_recovered_and_numbered_by_size():
    centres = _unit(np.random.default_rng(0).normal(size=(4, 32))) * 10
    vectors, truth = make_blobs(n_samples=[300, 200, 120, 60], centers=centres, cluster_std=0.8, random_state=0)
    vectors = _unit(vectors)
    assert choose_count(vectors) == 4
    found = discover(vectors)
    assert np.bincount(found.labels).tolist() == [300, 200, 120, 60]
    for cluster in range(4):  # each planted cluster maps to exactly one scenario
        assert len(set(found.labels[truth == cluster])) == 1
    assert (found.distances >= -1e-5).all() and found.distances.max() < 0.5


def test_choosing_the_count_in_threads_gives_the_same_answer_as_sklearn_alone():
    """The precomputed distances and the threads change the time, not the choice: each count's silhouette is
    sklearn's own cosine silhouette, and the count chosen is the same with 1 or 3 threads."""
    from sklearn.metrics import silhouette_score

    from cv_dataops.discovery.scenarios import _cluster

    centres = _unit(np.random.default_rng(1).normal(size=(6, 24))) * 4
    vectors = _unit(make_blobs(n_samples=600, centers=centres, cluster_std=1.5, random_state=1)[0])
    scores = [silhouette_score(vectors, _cluster(vectors, k, 0), metric="cosine") for k in range(2, 13)]
    expected = 2 + int(np.argmax(scores))
    assert choose_count(vectors) == choose_count(vectors, workers=3) == expected


def test_map_and_plot():
    vectors = _unit(np.random.default_rng(1).normal(size=(50, 8)))
    coordinates = map_2d(vectors)
    assert coordinates.shape == (50, 2)
    png = map_png(coordinates, discover(vectors, n_scenarios=3).labels)
    assert Image.open(io.BytesIO(png)).size == (480, 480) and len(png) < 40_000


def test_tiny_and_empty_inputs():
    assert discover(np.zeros((0, 4), np.float32)).labels.shape == (0,)
    assert set(discover(_unit(np.ones((3, 4)))).labels) == {0}


def _blobs(sizes, seed=0, dimension=16):
    centres = _unit(np.random.default_rng(2).normal(size=(len(sizes), dimension))) * 10
    vectors, truth = make_blobs(n_samples=list(sizes), centers=centres, cluster_std=0.5, random_state=seed)
    return _unit(vectors).astype(np.float32), truth


def test_scenario_rows_and_typical_members():
    from cv_dataops.discovery.scenarios import typical_members, update_scenarios

    vectors, _ = _blobs([40, 20])
    update = update_scenarios([f"i{n}" for n in range(60)], ["b1"] * 60, vectors, "v1", None)
    frame, coordinates = update.frame, update.coordinates
    assert update.rechosen and update.reason == "chosen again: no clustering chosen yet"
    assert list(frame.columns) == ["image_id", "scenario", "distance", "map_x", "map_y"]
    assert frame.scenario.value_counts().to_dict() == {0: 40, 1: 20} and coordinates.shape == (60, 2)
    typical = typical_members(frame, 3)
    assert sorted(typical) == [0, 1] and all(len(t) == 3 for t in typical.values())
    assert typical[0].distance.max() <= frame[frame.scenario == 0].distance.nsmallest(4).iloc[-1]
    empty = update_scenarios([], [], np.zeros((0, 0), np.float32), "v1", None).frame
    assert len(empty) == 0 and typical_members(empty) == {}


def test_later_images_join_the_chosen_scenarios_until_the_catalog_grows_or_drifts():
    from cv_dataops.discovery.scenarios import ScenarioModel, update_scenarios

    vectors, truth = _blobs([200, 100, 60], seed=1)
    first = update_scenarios([f"i{n}" for n in range(300)], ["b1"] * 300, vectors[:300], "v1", None)
    model = ScenarioModel.from_bytes(first.model.to_bytes())  # stored and read back
    assert model.fitted_images == 300 and model.fitted_batches == ("b1",) and len(model.centres) >= 2
    ids, batches = [f"i{n}" for n in range(360)], ["b1"] * 300 + ["b2"] * 60
    kept = update_scenarios(ids, batches, vectors, "v1", model, growth=0.25)
    assert not kept.rechosen and "assigned to the nearest" in kept.reason
    # the first 300 keep their scenario numbers and map places
    assert (kept.frame.scenario[:300].to_numpy() == first.frame.scenario.to_numpy()).all()
    assert np.allclose(kept.coordinates[:300], first.coordinates, atol=1e-4)
    # a batch that drifted, or growth beyond the fraction, or another embedder: chosen again
    drifted = update_scenarios(ids, batches, vectors, "v1", model, drifted_batches=["b2"])
    assert drifted.rechosen and "batch b2 drifted" in drifted.reason
    grown = update_scenarios(ids, batches, vectors, "v1", model, growth=0.1)
    assert grown.rechosen and "from 300 to 360 images" in grown.reason
    assert update_scenarios(ids, batches, vectors, "v2", model).reason.startswith("chosen again: the embedder")
    assert ScenarioModel.from_bytes(b"not a model") is None
    assert ScenarioModel.from_bytes(first.model.to_bytes()[:100]) is None and ScenarioModel.from_bytes(b"") is None
