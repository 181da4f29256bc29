"""The label model: a classifier over embedding vectors with calibrated probabilities, and its cross-validated figures.

The model only ever sees vectors: a team's own network plugs in as the ONNX embedder
(:class:`cv_dataops.embeddings.embedders.OnnxEmbedder`), and its vectors come here like the built-in embedder's.

Model: standardised features, multinomial logistic regression, then temperature scaling. Temperature scaling was
chosen over ``CalibratedClassifierCV`` because (1) it has one parameter, so it cannot overfit the small label sets
a review loop starts with (isotonic regression needs hundreds of items per class); (2) it keeps the argmax, so
the calibrated model's predictions and accuracy are those of the one fitted regression (``CalibratedClassifierCV``
averages ``cv`` copies, and its one-vs-rest sigmoids renormalised distort multi-class probabilities); (3) it costs
one cross-validated pass, not ``cv`` extra models kept forever.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.preprocessing import StandardScaler

CALIBRATIONS = ("temperature", "none")


def check_vectors(vectors, labels=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``vectors`` as a finite float64 2-D array (and ``labels`` as an array of the same length), or a one-line
    ValueError naming the first bad row."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"vectors must be a non-empty 2-D array, got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise ValueError(f"{len(bad)} vector row(s) are not finite (first: row {bad[0]}; an undecodable image?): "
                         f"leave them out before fitting")
    if labels is None:
        return x, None
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{len(y)} labels for {len(x)} vectors: one label per vector is needed")
    return x, y


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=1, keepdims=True)


def _as_logits(decision: np.ndarray) -> np.ndarray:
    """Two-class regressions give one score per row; as logits that is ``[0, score]``."""
    return np.column_stack([np.zeros(len(decision)), decision]) if decision.ndim == 1 else decision


def fit_temperature(logits: np.ndarray, label_index: np.ndarray) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)`` (searched in
    ``[0.05, 20]``)."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(logits))

    def loss(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, label_index]))

    return float(np.exp(minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


class LabelModel(ClassifierMixin, BaseEstimator):
    """Standardised multinomial logistic regression with temperature-scaled probabilities, scikit-learn style.

    ``C``: inverse regularisation (small: label sets are small and partly wrong). ``calibration``:
    ``"temperature"`` (the temperature fitted on ``calibration_folds``-fold out-of-sample scores of the training
    labels) or ``"none"``. ``temperature_`` is 1 when calibration is off or no class has two members.
    """

    def __init__(self, C: float = 0.1, calibration: str = "temperature", calibration_folds: int = 3,
                 max_iter: int = 2000, seed: int = 0):
        self.C = C
        self.calibration = calibration
        self.calibration_folds = calibration_folds
        self.max_iter = max_iter
        self.seed = seed

    def _regression(self) -> tuple[StandardScaler, LogisticRegression]:
        return StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter)

    def _fit_regression(self, x: np.ndarray, y: np.ndarray) -> tuple[StandardScaler, LogisticRegression]:
        scaler, regression = self._regression()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            regression.fit(scaler.fit_transform(x), y)
        return scaler, regression

    def fit(self, X, y) -> LabelModel:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.C <= 0:
            raise ValueError(f"C must be positive, got {self.C}")
        x, labels = check_vectors(X, y)
        self.classes_, index = np.unique(labels, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"a label model needs at least two classes, got {list(self.classes_)}")
        self.n_features_in_ = x.shape[1]
        self.temperature_ = self._temperature(x, index) if self.calibration == "temperature" else 1.0
        self.scaler_, self.regression_ = self._fit_regression(x, index)
        return self

    def _temperature(self, x: np.ndarray, index: np.ndarray) -> float:
        """Out-of-sample scores on the rows of classes with at least ``folds`` members (each training fold then
        holds every such class), then the temperature fitted to them."""
        counts = np.bincount(index)
        folds = min(self.calibration_folds, int(counts[counts >= 2].min()) if (counts >= 2).any() else 0)
        rows = np.flatnonzero(counts[index] >= max(folds, 2))
        kept, local = np.unique(index[rows], return_inverse=True)
        if folds < 2 or len(kept) < 2:
            return 1.0
        logits = np.zeros((len(rows), len(kept)))
        split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed)
        for train, test in split.split(x[rows], local):
            scaler, regression = self._fit_regression(x[rows][train], local[train])
            logits[test] = _as_logits(regression.decision_function(scaler.transform(x[rows][test])))
        return fit_temperature(logits, local)

    def decision_function(self, X) -> np.ndarray:
        """Temperature-scaled logits, one column per class of ``classes_``."""
        x, _ = check_vectors(X)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"vectors have {x.shape[1]} dimensions, the model was fitted on {self.n_features_in_}"
                             f": vectors of two embedder versions do not compare")
        return _as_logits(self.regression_.decision_function(self.scaler_.transform(x))) / self.temperature_

    def predict_proba(self, X) -> np.ndarray:
        return _softmax(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


def fold_count(class_counts: np.ndarray, folds: int) -> int:
    """The folds cross-validation uses: ``folds``, or fewer so that every training fold holds every class with at
    least two members (never below 2)."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    several = class_counts[class_counts >= 2]
    return max(2, min(folds, int(several.min()) if len(several) else 2))


def out_of_sample_probabilities(model, X, y, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each row's class probabilities from a copy of ``model`` fitted without that row (stratified ``folds``-fold
    ``cross_val_predict``); columns in the order of ``np.unique(y)``.

    Classes smaller than ``folds``: the fold count drops to the size of the smallest class with at least two
    members (never below 2), so every training fold holds every such class. A class with ONE member cannot be held
    out and learnt at once: its row gets the probabilities of the model fitted on all rows (in-sample, so
    optimistic about that label; there is nothing to compare it with)."""
    x, labels = check_vectors(X, y)
    classes, index = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"out-of-sample probabilities need at least two classes, got {list(classes)}")
    counts = np.bincount(index)
    single = counts[index] < 2
    probabilities = np.zeros((len(x), len(classes)))
    # The singletons stay out of the folds: in a fold that held one out, the training rows would lack its class
    # (with two classes, a training set of one class, which no classifier fits).
    shared = ~single
    shared_classes = np.unique(index[shared])
    if len(shared_classes) >= 2:
        splits = fold_count(counts[shared_classes], folds)
        if int(shared.sum()) < splits:
            raise ValueError(f"{int(shared.sum())} labelled vectors are too few for {splits}-fold cross-validation")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            folded = cross_val_predict(clone(model), x[shared], labels[shared], method="predict_proba",
                                       cv=StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed))
        rows = np.flatnonzero(shared)
        probabilities[np.ix_(rows, shared_classes)] = folded
    else:
        single = np.ones(len(x), dtype=bool)  # no two classes to fold over: every row in-sample
    if single.any():
        probabilities[single] = clone(model).fit(x, labels).predict_proba(x[single])
    return probabilities


def expected_calibration_error(probabilities, labels, classes, bins: int = 15) -> float:
    """Top-label expected calibration error: the mean over equal-width confidence bins of |accuracy - confidence|,
    weighted by the bin's share of rows (0 = calibrated). ``classes`` names the columns of ``probabilities``."""
    p = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(labels)
    if p.ndim != 2 or len(p) != len(truth) or p.shape[1] != len(classes):
        raise ValueError(f"probabilities of shape {p.shape} do not match {len(truth)} labels and "
                         f"{len(classes)} classes")
    confidence = p.max(axis=1)
    correct = np.asarray(classes)[p.argmax(axis=1)] == truth
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for b in np.unique(which):
        rows = which == b
        error += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(error)


@dataclass(frozen=True)
class CrossValidatedReport:
    """Cross-validated figures of a label model; ``probabilities`` (out-of-sample, columns ``classes``) are kept
    for the label audit, which needs exactly these."""

    accuracy: float
    calibration_error: float
    folds: int
    items: int
    classes: tuple
    probabilities: np.ndarray = field(repr=False, compare=False)

    def to_metadata(self) -> dict:
        """The JSON-ready figures the model registry keeps beside the model."""
        return {"cv_accuracy": round(self.accuracy, 6), "calibration_error": round(self.calibration_error, 6),
                "cv_folds": self.folds, "training_items": self.items,
                "classes": [c.item() if hasattr(c, "item") else c for c in self.classes]}


def cross_validated_report(model, X, y, folds: int = 5, seed: int = 0) -> CrossValidatedReport:
    """Accuracy and expected calibration error of ``model``'s out-of-sample probabilities on ``(X, y)``."""
    x, labels = check_vectors(X, y)
    probabilities = out_of_sample_probabilities(model, x, labels, folds=folds, seed=seed)
    classes = np.unique(labels)
    accuracy = float(np.mean(classes[probabilities.argmax(axis=1)] == labels))
    return CrossValidatedReport(accuracy=accuracy,
                                calibration_error=expected_calibration_error(probabilities, labels, classes),
                                folds=fold_count(np.unique(labels, return_counts=True)[1], folds), items=len(x),
                                classes=tuple(classes), probabilities=probabilities)
