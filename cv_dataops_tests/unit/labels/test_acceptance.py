"""Auto-label acceptance: a threshold chosen out of sample on verified labels, held to its precision on others."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from cv_dataops.labels.acceptance import (
    AUTO,
    REVIEW,
    AcceptanceSettings,
    acceptance_threshold,
    accuracy_coverage,
    apply_threshold,
    choose_threshold,
    threshold_from_probabilities,
)


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Small fits: on a shared machine, BLAS threads only contend (a 2,000-point fit took 7 s instead of 0.2 s)."""
    with threadpool_limits(1):
        yield


def test_threshold_reaches_the_precision_on_held_out_images():
    # four overlapping blobs: about 10 % of the images sit where their class is a guess
    x, y = make_blobs(n_samples=2000, centers=4, cluster_std=2.2, random_state=1)
    verified, unseen = np.arange(600), np.arange(600, 2000)  # 30 % verified
    settings = AcceptanceSettings(precision=0.98)
    chosen = acceptance_threshold(LogisticRegression(), x[verified], y[verified], settings)
    assert chosen.threshold is not None and chosen.precision >= 0.98
    model = LogisticRegression().fit(x[verified], y[verified])
    decisions = apply_threshold(model.predict_proba(x[unseen]), model.classes_, chosen, image_ids=unseen)
    accepted = decisions["decision"] == AUTO
    held_out_precision = float((decisions.loc[accepted, "label"].to_numpy() == y[unseen][accepted]).mean())
    all_accuracy = float((decisions["label"].to_numpy() == y[unseen]).mean())
    assert all_accuracy < 0.95  # the task is not trivial: accepting everything would miss the target
    assert held_out_precision >= 0.975  # 1,400 held-out images: the target within its sampling error
    assert 0.2 < accepted.mean() < 1.0
    assert (decisions.loc[~accepted, "decision"] == REVIEW).all()
    assert chosen.metadata()["accuracy_coverage"][0]["coverage"] <= chosen.metadata()["accuracy_coverage"][-1][
        "coverage"] == 1.0


def test_largest_coverage_at_the_precision_and_ties_together():
    confidences = np.array([0.99, 0.97, 0.95, 0.95, 0.90, 0.80, 0.70])
    correct = np.array([True, True, True, False, True, True, False])
    curve = accuracy_coverage(confidences, correct)
    assert curve["threshold"].tolist() == [0.99, 0.97, 0.95, 0.90, 0.80, 0.70]  # the tie at 0.95 is one step
    chosen = choose_threshold(confidences, correct, AcceptanceSettings(precision=0.8, min_verified=1))
    assert chosen.threshold == 0.80 and chosen.coverage == pytest.approx(6 / 7)
    assert chosen.precision == pytest.approx(5 / 6)


def test_no_threshold_reaching_the_precision_accepts_nothing():
    confidences = np.linspace(0.9, 0.5, 40)
    correct = np.arange(40) % 2 == 1  # the most confident is wrong, then half
    chosen = choose_threshold(confidences, correct, AcceptanceSettings(precision=0.98))
    assert chosen.threshold is None and chosen.coverage == 0.0
    assert "reaches precision 0.98" in chosen.reason and "\n" not in chosen.reason
    decisions = apply_threshold(np.full((3, 2), 0.5), ["a", "b"], chosen)
    assert (decisions["decision"] == REVIEW).all() and decisions["reason"].iloc[0] == chosen.reason


def test_a_few_lucky_top_scores_are_not_a_threshold():
    confidences = np.linspace(0.99, 0.5, 200)
    correct = np.arange(200) % 10 != 9  # 90 % right throughout ...
    correct[:19] = True  # ... except a perfect top 19, fewer than the 50 that 98 % needs to be resolvable
    chosen = choose_threshold(confidences, correct, AcceptanceSettings(precision=0.98))
    assert chosen.threshold is None and "at least 50 of the 200" in chosen.reason
    assert choose_threshold(confidences, correct, AcceptanceSettings(min_accepted=19)).coverage == 19 / 200


def test_too_few_verified_labels_accept_nothing():
    x, y = make_blobs(n_samples=10, centers=2, random_state=0)
    chosen = acceptance_threshold(LogisticRegression(), x, y)
    assert chosen.threshold is None and "fewer than the 20" in chosen.reason


class Nearest:
    """A classifier without scikit-learn's get_params: the nearest class mean, softmax of minus distances."""

    def fit(self, x, y):
        self.classes_ = np.unique(y)
        self.means_ = np.array([x[y == c].mean(axis=0) for c in self.classes_])
        return self

    def predict_proba(self, x):
        scores = -np.linalg.norm(x[:, None, :] - self.means_[None], axis=2)
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def test_any_estimator_with_fit_and_predict_proba_plugs_in():
    x, y = make_blobs(n_samples=200, centers=3, cluster_std=3.0, random_state=1)
    labels = np.array(["a", "b", "c"], dtype=object)[y]
    chosen = acceptance_threshold(Nearest(), x, labels, AcceptanceSettings(precision=0.95))
    assert chosen.threshold is not None and chosen.precision >= 0.95 and 0 < chosen.coverage < 1
    assert chosen.verified == 200


def test_bad_input_is_a_one_line_error():
    with pytest.raises(ValueError, match="precision"):
        AcceptanceSettings(precision=1.5)
    with pytest.raises(ValueError, match="expected"):
        apply_threshold(np.zeros((2, 3)), ["a", "b"], 0.5)
    with pytest.raises(ValueError, match="expected"):
        threshold_from_probabilities(np.zeros((4, 2)), ["a", "b"], ["a", "b"])
