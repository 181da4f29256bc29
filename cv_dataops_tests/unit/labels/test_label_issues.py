"""The label audit: planted label flips come first, the frame is the label_issues table, weak features warn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from cv_dataops.labels.label_issues import (
    LabelIssueSettings,
    find_label_issues,
    neighbor_probabilities,
)


@pytest.fixture(scope="module")
def planted():
    """400 vectors in 4 classes, 30 labels flipped to another class."""
    x, y = make_blobs(n_samples=400, centers=4, n_features=16, cluster_std=3.0, random_state=3)
    truth = np.array(["ant", "bee", "cow", "dog"])[y]
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(y), 30, replace=False)
    given = truth.copy()
    given[flipped] = np.array(["ant", "bee", "cow", "dog"])[(y[flipped] + rng.integers(1, 4, 30)) % 4]
    return x, truth, given, flipped


@pytest.fixture(scope="module")
def audit(planted):
    x, _, given, _ = planted
    return find_label_issues(x, given, LabelIssueSettings(folds=3), image_ids=[f"img-{i}" for i in range(len(x))])


def test_planted_flips_are_ranked_first_and_flagged(planted, audit):
    _, truth, given, flipped = planted
    frame = audit.frame
    top = set(frame["image_id"].head(40))
    assert len(top & {f"img-{i}" for i in flipped}) >= 27  # at least 90 % of the flips in the first 40 of 400
    issues = set(frame.loc[frame["is_issue"], "image_id"])
    wrong = {f"img-{i}" for i in flipped}
    assert len(issues & wrong) >= 27 and len(issues - wrong) <= 10
    suggested = frame.set_index("image_id")["suggested_label"]
    assert np.mean([suggested[f"img-{i}"] == truth[i] for i in flipped]) >= 0.9


def test_the_frame_is_ranked_and_scored(audit):
    frame = audit.frame
    assert list(frame.columns[:6]) == ["image_id", "given_label", "suggested_label", "score", "rank", "is_issue"]
    assert list(frame["rank"]) == list(range(1, 401))
    assert frame["score"].between(0, 1).all() and frame["score"].is_monotonic_increasing
    assert audit.flag_share == pytest.approx(frame["is_issue"].mean())
    assert 0.8 < audit.cv_accuracy < 0.97 and audit.warning is None
    assert "nearest images share it" in frame["detail"].iloc[0]


def test_the_frame_is_the_label_issues_table(audit):
    from cv_dataops.labels.tables import LABEL_ISSUES

    table = audit.to_table(labels_version=3, model_version="v0001")
    assert table.schema.equals(LABEL_ISSUES.arrow_schema) and table.num_rows == 400
    assert set(table.column("labels_version").to_pylist()) == {3}


def test_weak_features_warn_to_rely_on_the_review_budget():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8))
    labels = rng.choice(["a", "b", "c"], size=300)  # the vectors say nothing about the labels
    result = find_label_issues(x, labels, LabelIssueSettings(folds=3))
    assert result.cv_accuracy < 0.5 and result.needs_budget
    assert "rely on the review budget" in result.warning


def test_neighbour_vote_leaves_the_item_out():
    x = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    p = neighbor_probabilities(x, np.array([0, 1, 1, 1]), 2, neighbors=1, smoothing=0.0)
    assert p[0].tolist() == [0.0, 1.0]  # its only neighbour says 1, its own label 0 is not counted
    assert p[1].tolist() == [1.0, 0.0]


def test_bad_settings_and_input_are_one_clear_line(planted):
    x, _, given, _ = planted
    with pytest.raises(ValueError, match="classifier_weight"):
        LabelIssueSettings(classifier_weight=1.5)
    with pytest.raises(ValueError, match="max_score"):
        LabelIssueSettings(max_score=0)
    with pytest.raises(ValueError, match="filter_by"):
        LabelIssueSettings(filter_by="vibes")
    with pytest.raises(ValueError, match="image ids"):
        find_label_issues(x, given, image_ids=["a"])
    with pytest.raises(ValueError, match="too few"):
        find_label_issues(x[:5], given[:5])
