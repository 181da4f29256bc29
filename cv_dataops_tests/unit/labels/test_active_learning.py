"""choose_for_labelling on small synthetic blobs: coverage first, then uncertainty spread over the embedding."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from cv_dataops.labels.active_learning import (
    COVERAGE,
    UNCERTAINTY,
    ActiveLearningSettings,
    choose_for_labelling,
    margins,
    typicality,
)


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Small fits: on a shared machine, BLAS threads only contend (a 2,000-point fit took 7 s instead of 0.2 s)."""
    with threadpool_limits(1):
        yield


def blobs(count=6, per_blob=40, seed=0):
    centres = np.eye(count, 8) * 10.0 + 1.0  # well apart in direction too (the engine's distance is cosine)
    x, y = make_blobs(n_samples=[per_blob] * count, centers=centres, cluster_std=0.6, random_state=seed)
    return x, y


def test_first_picks_cover_every_blob():
    x, y = blobs()
    choice = choose_for_labelling(x, np.zeros(len(x), bool), 6)
    assert choice.phase == COVERAGE
    assert sorted(y[choice.indices].tolist()) == list(range(6))
    assert len(choice.reasons) == 6 and all(r.startswith("coverage") for r in choice.reasons)


def test_coverage_goes_to_the_blobs_without_labels():
    x, y = blobs()
    labelled = np.isin(np.arange(len(x)), np.flatnonzero(y < 4)[::2])  # half of blobs 0..3 labelled
    choice = choose_for_labelling(x, labelled, 2)
    assert sorted(y[choice.indices].tolist()) == [4, 5]
    assert not labelled[choice.indices].any()


def test_coverage_picks_a_typical_image_not_an_outlier():
    x, y = blobs(count=3)
    x = np.vstack([x, x[y == 0].mean(axis=0) + np.r_[0, 0, 0, 0, 0, 6.0, 0, 0]])  # a stray image near blob 0
    choice = choose_for_labelling(x, np.zeros(len(x), bool), 3)
    assert len(x) - 1 not in choice.indices
    members = np.flatnonzero(y == 0)
    most_typical = members[np.argsort(-typicality(x[members], 20))[:10]]
    assert set(choice.indices.tolist()) & set(most_typical.tolist())


def test_uncertainty_once_labels_per_class_pass_the_switch():
    x, y = blobs(count=2, per_blob=150)
    labelled = np.zeros(len(x), bool)
    labelled[np.r_[0:6, 150:156]] = True  # six per class
    model = LogisticRegression().fit(x[labelled], y[labelled])
    probabilities = model.predict_proba(x)
    assert choose_for_labelling(x, labelled, 4, probabilities,
                                ActiveLearningSettings(switch_labels_per_class=7)).phase == COVERAGE
    choice = choose_for_labelling(x, labelled, 4, probabilities, ActiveLearningSettings(switch_labels_per_class=6))
    assert choice.phase == UNCERTAINTY
    margin = margins(probabilities)
    open_rows = np.flatnonzero(~labelled)
    # every pick is among the 40 least certain unlabelled images (candidates_per_pick x budget)
    assert set(choice.indices.tolist()) <= set(open_rows[np.argsort(margin[open_rows])[:40]].tolist())
    assert all(r.startswith("uncertainty") for r in choice.reasons)


def test_uncertain_picks_are_spread_over_the_embedding():
    """Two separate confusing regions; plain margin would spend the whole batch on the slightly less certain one."""
    rng = np.random.default_rng(0)
    left = rng.normal([-10, 0], 0.3, (60, 2))
    right = rng.normal([10, 0], 0.3, (60, 2))
    x = np.hstack([np.vstack([left, right]), np.full((120, 1), 5.0)])
    probabilities = np.column_stack([np.r_[np.full(60, 0.50), np.full(60, 0.45)], np.zeros(120)])
    probabilities[:, 1] = 1 - probabilities[:, 0]
    labelled = np.zeros(120, bool)
    labelled[[0, 60]] = True
    settings = ActiveLearningSettings(switch_labels_per_class=0, candidates_per_pick=100)
    choice = choose_for_labelling(x, labelled, 4, probabilities, settings)
    assert (choice.indices < 60).sum() == 2 and (choice.indices >= 60).sum() == 2


def test_never_picks_labelled_or_broken_rows_and_caps_the_budget():
    x, _ = blobs(count=2, per_blob=10)
    x[3] = np.nan
    labelled = np.zeros(len(x), bool)
    labelled[:5] = True
    choice = choose_for_labelling(x, labelled, 100)
    assert sorted(choice.indices.tolist()) == list(range(5, 20))
    assert len(choose_for_labelling(x, labelled, 0).indices) == 0


def test_deterministic_for_a_seed():
    x, _ = blobs()
    mask = np.zeros(len(x), bool)
    first = choose_for_labelling(x, mask, 10, settings=ActiveLearningSettings(seed=3)).indices
    assert first.tolist() == choose_for_labelling(x, mask, 10, settings=ActiveLearningSettings(seed=3)).indices.tolist()


def test_bad_shapes_are_one_line_errors():
    x, _ = blobs(count=2, per_blob=10)
    with pytest.raises(ValueError, match="labelled_mask"):
        choose_for_labelling(x, np.zeros(3, bool), 2)
    with pytest.raises(ValueError, match="probabilities"):
        choose_for_labelling(x, np.zeros(len(x), bool), 2, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="at least 1"):
        ActiveLearningSettings(typicality_neighbours=0)
