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


def test_map_and_plot():
    vectors = _unit(np.random.default_rng(1).normal(size=(50, 8)))
    coordinates = map_2d(vectors)
    assert coordinates.shape == (50, 2)
    png = map_png(coordinates, discover(vectors, n_scenarios=3).labels)
    assert Image.open(io.BytesIO(png)).size == (480, 480) and len(png) < 40_000


def test_tiny_and_empty_inputs():
    assert discover(np.zeros((0, 4), np.float32)).labels.shape == (0,)
    assert set(discover(_unit(np.ones((3, 4)))).labels) == {0}


def test_scenario_rows_and_typical_members():
    from cv_dataops.discovery.scenarios import scenario_rows, typical_members

    centres = _unit(np.random.default_rng(2).normal(size=(2, 16))) * 10
    vectors, _ = make_blobs(n_samples=[40, 20], centers=centres, cluster_std=0.5, random_state=0)
    frame, coordinates = scenario_rows([f"i{n}" for n in range(60)], _unit(vectors))
    assert list(frame.columns) == ["image_id", "scenario", "distance", "map_x", "map_y"]
    assert frame.scenario.value_counts().to_dict() == {0: 40, 1: 20} and coordinates.shape == (60, 2)
    typical = typical_members(frame, 3)
    assert sorted(typical) == [0, 1] and all(len(t) == 3 for t in typical.values())
    assert typical[0].distance.max() <= frame[frame.scenario == 0].distance.nsmallest(4).iloc[-1]
    empty, _ = scenario_rows([], np.zeros((0, 0), np.float32))
    assert len(empty) == 0 and typical_members(empty) == {}
