"""The label model: a calibrated classifier over vectors, its out-of-sample probabilities and calibration error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from cv_dataops.labels.model import (
    LabelModel,
    cross_validated_report,
    expected_calibration_error,
    out_of_sample_probabilities,
)


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(n_samples=300, centers=3, n_features=8, cluster_std=2.5, random_state=0)
    return x, np.array(["cat", "dog", "owl"])[y]


def test_fits_like_a_scikit_learn_classifier(blobs):
    x, y = blobs
    model = LabelModel()
    assert model.fit(x, y) is model
    assert list(model.classes_) == ["cat", "dog", "owl"]
    p = model.predict_proba(x)
    assert p.shape == (300, 3) and np.allclose(p.sum(axis=1), 1)
    assert (model.predict(x) == model.classes_[p.argmax(axis=1)]).all()
    assert (model.predict(x) == y).mean() > 0.9
    assert model.temperature_ > 0


def test_temperature_scaling_calibrates_an_overconfident_regression():
    # Overlapping classes and almost no regularisation: the raw regression is far too sure of itself.
    x, y = make_blobs(n_samples=1200, centers=4, n_features=30, cluster_std=6.0, random_state=1)
    train, test = slice(0, 600), slice(600, None)
    errors = {}
    for calibration in ("none", "temperature"):
        model = LabelModel(C=100.0, calibration=calibration).fit(x[train], y[train])
        errors[calibration] = expected_calibration_error(model.predict_proba(x[test]), y[test], model.classes_)
    assert errors["temperature"] < 0.5 * errors["none"]


def test_out_of_sample_probabilities_survive_classes_smaller_than_the_folds(blobs):
    x, y = blobs
    y = y.astype(object)
    y[:2] = "rare"     # two members: the fold count drops to 2
    y[2] = "single"    # one member: its row gets the in-sample probabilities
    p = out_of_sample_probabilities(LabelModel(), x, y, folds=5)
    assert p.shape == (300, 5) and np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1)
    classes = list(np.unique(y))
    assert p[2, classes.index("single")] > 0


def test_out_of_sample_probabilities_are_not_in_sample(blobs):
    x, _ = blobs
    y = np.random.default_rng(0).choice(["a", "b"], size=len(x))  # labels that carry no signal
    in_sample = LabelModel(C=10.0, calibration="none").fit(x, y).predict(x)
    out_of_sample = np.unique(y)[out_of_sample_probabilities(LabelModel(C=10.0, calibration="none"), x, y).argmax(axis=1)]
    assert (out_of_sample == y).mean() < (in_sample == y).mean()
    assert (out_of_sample == y).mean() < 0.65


def test_expected_calibration_error_on_known_cases():
    classes = np.array([0, 1])
    right = np.tile([[0.8, 0.2]], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)  # 80 % right at 80 % confidence
    assert expected_calibration_error(right, labels, classes) == pytest.approx(0.0)
    assert expected_calibration_error(right, np.array([0] * 5 + [1] * 5), classes) == pytest.approx(0.3)


def test_cross_validated_report_gives_json_metadata(blobs):
    x, y = blobs
    report = cross_validated_report(LabelModel(), x, y, folds=3)
    assert 0.85 < report.accuracy <= 1 and 0 <= report.calibration_error < 0.2
    metadata = json.loads(json.dumps(report.to_metadata()))
    assert metadata["classes"] == ["cat", "dog", "owl"] and metadata["training_items"] == 300
    assert metadata["cv_folds"] == 3


def test_bad_input_is_one_clear_line(blobs):
    x, y = blobs
    broken = x.copy()
    broken[7, 0] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        LabelModel().fit(broken, y)
    with pytest.raises(ValueError, match="one label per vector"):
        LabelModel().fit(x, y[:-1])
    with pytest.raises(ValueError, match="at least two classes"):
        LabelModel().fit(x, np.full(len(x), "cat"))
    with pytest.raises(ValueError, match="embedder versions"):
        LabelModel().fit(x, y).predict(x[:, :4])


def test_out_of_sample_probabilities_when_a_class_has_a_single_image():
    """A class of one image stays out of the folds (a fold holding it out would, with two classes, train on one
    class and fail): the other rows are out of sample, the single one in sample; with no two classes of two or
    more images, every row is in sample. Seen in a small catalog with one odd label."""
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, (12, 4)), rng.normal(8, 1, (12, 4)), rng.normal(4, 1, (1, 4))])
    y = np.array(["cat"] * 12 + ["bird"] * 12 + ["dog"])
    probabilities = out_of_sample_probabilities(LabelModel(), x, y, folds=5)  # columns: bird, cat, dog
    assert probabilities.shape == (25, 3) and np.allclose(probabilities.sum(axis=1), 1.0)
    assert np.all(probabilities[:24, 2] == 0.0)  # folded without the dog: never says dog
    assert probabilities[:12].argmax(axis=1).tolist() == [1] * 12 and probabilities[24, 2] > 0
    two = out_of_sample_probabilities(LabelModel(), x[12:], y[12:], folds=5)  # bird x 12, dog x 1
    assert two.shape == (13, 2) and np.allclose(two.sum(axis=1), 1.0)
