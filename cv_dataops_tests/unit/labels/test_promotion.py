"""Promotion: a paired test on a frozen holdout; a worse model is refused with a reason a check can show."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from cv_dataops.labels.model import LabelModel
from cv_dataops.labels.promotion import (
    PromotionSettings,
    decide_promotion,
    in_holdout,
    mcnemar_p_value,
)


class Answers:
    """A stand-in model that answers fixed predictions for the holdout rows."""

    def __init__(self, answers):
        self.answers = np.asarray(answers)

    def predict(self, x):
        return self.answers[: len(x)]


def _holdout(n=400):
    labels = np.array(["a", "b", "c", "d"])[np.arange(n) % 4]
    return np.zeros((n, 2)), labels


def _with_errors(labels, wrong_rows):
    answers = labels.copy()
    answers[wrong_rows] = np.where(labels[wrong_rows] == "a", "b", "a")
    return answers


def test_a_clearly_worse_candidate_is_refused_with_a_reason():
    x, labels = _holdout()
    current = Answers(_with_errors(labels, np.arange(0, 40)))        # 90 % right
    candidate = Answers(_with_errors(labels, np.arange(0, 80)))      # 80 %, wrong wherever current is
    decision = decide_promotion(candidate, current, x, labels)
    assert not decision.promote
    assert decision.accuracy_change == pytest.approx(-0.1)
    assert decision.lower_bound < -0.1 + 0.01 and decision.mcnemar_p_value < 1e-6
    assert decision.reason.startswith("not promoted: holdout accuracy 0.800 vs 0.900 (change -0.100")
    assert "\n" not in decision.reason


def test_an_equal_or_better_candidate_is_promoted():
    x, labels = _holdout()
    current = Answers(_with_errors(labels, np.arange(0, 40)))
    assert decide_promotion(current, current, x, labels).promote  # a tie is not worse
    better = Answers(_with_errors(labels, np.arange(0, 20)))
    decision = decide_promotion(better, current, x, labels)
    assert decision.promote and decision.accuracy_change == pytest.approx(0.05)
    assert decision.reason.startswith("promoted:")


def test_a_slightly_worse_candidate_passes_only_within_the_tolerance():
    x, labels = _holdout()
    current = Answers(_with_errors(labels, np.arange(0, 40)))
    slightly = Answers(_with_errors(labels, np.arange(0, 44)))  # 1 point worse, 4 disagreements
    assert not decide_promotion(slightly, current, x, labels, PromotionSettings(tolerance=0.0)).promote
    assert decide_promotion(slightly, current, x, labels, PromotionSettings(tolerance=0.03)).promote


def test_the_first_model_must_beat_the_majority_class():
    x, labels = _holdout()
    good = decide_promotion(Answers(_with_errors(labels, np.arange(0, 100))), None, x, labels)
    assert good.promote and "first model" in good.reason and "majority-class rate 0.250" in good.reason
    constant = decide_promotion(Answers(np.full(len(labels), "a")), None, x, labels)
    assert not constant.promote and constant.reason.startswith("not promoted (first model)")


def test_a_holdout_too_small_decides_nothing():
    x, labels = _holdout(8)
    decision = decide_promotion(Answers(labels), None, x, labels)
    assert not decision.promote and "8 human labels" in decision.reason


def test_real_models_a_model_trained_on_corrupted_labels_is_refused():
    x, y = make_blobs(n_samples=900, centers=3, n_features=5, cluster_std=1.5, random_state=4)
    holdout = in_holdout([f"img-{i}" for i in range(len(x))], fraction=0.3)
    train = ~holdout
    good = LabelModel(calibration="none").fit(x[train], y[train])
    corrupted = y[train].copy()
    flip = np.random.default_rng(0).random(len(corrupted)) < 0.6
    corrupted[flip] = (corrupted[flip] + 1) % 3
    bad = LabelModel(calibration="none").fit(x[train], corrupted)
    assert not decide_promotion(bad, good, x[holdout], y[holdout]).promote
    assert decide_promotion(good, bad, x[holdout], y[holdout]).promote


def test_the_holdout_is_frozen_by_image_id():
    ids = [f"img-{i}" for i in range(2000)]
    first = in_holdout(ids)
    assert 0.17 < first.mean() < 0.23
    assert (in_holdout(ids[:500]) == first[:500]).all()  # the same images, whatever else is in the catalog


def test_mcnemar():
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(10, 10) == pytest.approx(1.0)
    assert mcnemar_p_value(20, 0) < 1e-5
