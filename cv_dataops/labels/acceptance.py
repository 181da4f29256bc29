"""Auto-label acceptance: the confidence above which a model's label is taken without a human (``source = auto``).

The threshold is chosen on verified labels only, from *out-of-sample* probabilities (each verified image scored
by a model that did not see it: the label model's cross-validation,
:func:`cv_dataops.labels.model.out_of_sample_probabilities`): the lowest confidence at which the accepted
images' accuracy still reaches the configured precision, which is the largest coverage at that precision
(:func:`choose_threshold`). The accuracy-coverage curve it was read from goes into the asset's metadata. Applied
to an unlabelled image (:func:`apply_threshold`), a confidence at or above the threshold is accepted, anything
else goes to review. When no threshold reaches the precision, nothing is accepted and the reason says so in one
line. Any classifier with ``fit``/``predict_proba``/``classes_`` works (scikit-learn's, the label domain's
``LabelModel``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

AUTO = "auto"
REVIEW = "review"


@dataclass(frozen=True)
class AcceptanceSettings:
    """``precision``: the accuracy the accepted auto-labels must reach on the verified labels (out of sample).
    ``folds``: cross-validation folds for the out-of-sample probabilities. ``min_verified``: below this many verified
    labels the precision cannot be estimated (one error in 20 is already 5 %): nothing is accepted.
    ``min_accepted``: a threshold must accept at least this many verified images, by default ``1 / (1 -
    precision)`` rounded up (50 at 0.98): the fewest among which one error still leaves the precision reached, so
    that a handful of lucky top scores (19 of 19 right, then the curve below 98 % for good) is not taken for a
    threshold."""

    precision: float = 0.98
    folds: int = 5
    min_verified: int = 20
    min_accepted: int | None = None
    seed: int = 0

    @property
    def accepted_at_least(self) -> int:
        if self.min_accepted is not None:
            return max(1, int(self.min_accepted))
        return self.min_verified if self.precision >= 1.0 else math.ceil(1.0 / (1.0 - self.precision) - 1e-9)

    def __post_init__(self) -> None:
        if not 0.0 < self.precision <= 1.0:
            raise ValueError(f"AcceptanceSettings.precision must be in (0, 1], got {self.precision}")
        if self.folds < 2:
            raise ValueError(f"AcceptanceSettings.folds must be at least 2, got {self.folds}")


@dataclass(frozen=True)
class AcceptanceThreshold:
    """The chosen threshold (None: accept nothing), the out-of-sample precision and coverage it gives on the
    verified labels, why, and the accuracy-coverage curve (one row per distinct confidence, most confident first:
    accepting every verified image at or above ``threshold`` covers ``coverage`` of them at ``accuracy``)."""

    threshold: float | None
    precision: float | None
    coverage: float
    target: float
    verified: int
    reason: str
    curve: pd.DataFrame = field(repr=False)

    def curve_points(self, count: int = 21) -> list[dict[str, float]]:
        """At most ``count`` points of the curve, evenly spread over coverage, for an asset's metadata."""
        if self.curve.empty:
            return []
        wanted = np.linspace(self.curve["coverage"].iloc[0], 1.0, count)
        coverage = self.curve["coverage"].to_numpy()
        rows = np.unique(np.searchsorted(coverage, wanted - 1e-12).clip(0, len(coverage) - 1))
        return [{key: round(float(value), 4) for key, value in row.items()}
                for row in self.curve.iloc[rows].to_dict("records")]

    def metadata(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "target_precision": self.target, "precision": self.precision,
                "coverage": self.coverage, "verified": self.verified, "reason": self.reason,
                "accuracy_coverage": self.curve_points()}


class _AnyClassifier(ClassifierMixin, BaseEstimator):
    """Lends scikit-learn's ``clone`` (which the label model's cross-validation uses) to any object with ``fit``,
    ``predict_proba`` and ``classes_``: the wrapped estimator is cloned where it supports ``get_params``, deep-copied
    otherwise."""

    def __init__(self, estimator: Any):
        self.estimator = estimator

    def fit(self, X: np.ndarray, y: np.ndarray) -> _AnyClassifier:
        self.estimator.fit(X, y)
        self.classes_ = np.asarray(self.estimator.classes_)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def accuracy_coverage(confidences: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """``threshold, coverage, accuracy`` at every distinct confidence, highest first (tied confidences are
    accepted or refused together)."""
    confidence = np.asarray(confidences, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    if confidence.shape != right.shape:
        raise ValueError(f"{len(confidence)} confidences but {len(right)} correctness flags")
    order = np.argsort(-confidence, kind="stable")
    confidence, right = confidence[order], right[order]
    accepted = np.arange(1, len(confidence) + 1)
    hits = np.cumsum(right)
    last_of_tie = np.r_[confidence[1:] != confidence[:-1], True] if len(confidence) else np.zeros(0, bool)
    return pd.DataFrame({"threshold": confidence[last_of_tie],
                         "coverage": accepted[last_of_tie] / max(1, len(confidence)),
                         "accuracy": hits[last_of_tie] / accepted[last_of_tie]})


def choose_threshold(confidences: np.ndarray, correct: np.ndarray,
                     settings: AcceptanceSettings | None = None) -> AcceptanceThreshold:
    """The lowest threshold whose accepted verified images (out-of-sample ``confidences``; ``correct``: the
    prediction equals the verified label), at least ``settings.accepted_at_least`` of them, reach
    ``settings.precision``: the largest coverage at that precision."""
    settings = settings or AcceptanceSettings()
    curve = accuracy_coverage(confidences, correct)
    verified = len(np.asarray(confidences))
    target = settings.precision
    if verified < settings.min_verified:
        return AcceptanceThreshold(None, None, 0.0, target, verified, f"accepting nothing: {verified} verified "
                                   f"labels, fewer than the {settings.min_verified} needed to estimate precision",
                                   curve)
    # a float's rounding must not refuse an exact 98 %
    enough = curve["coverage"].to_numpy() * verified >= settings.accepted_at_least - 1e-9
    reaching = np.flatnonzero((curve["accuracy"].to_numpy() >= target - 1e-12) & enough)
    if not len(reaching):
        best = float(curve["accuracy"][enough].max()) if enough.any() else float("nan")
        return AcceptanceThreshold(None, None, 0.0, target, verified, f"accepting nothing: no confidence threshold "
                                   f"that accepts at least {settings.accepted_at_least} of the {verified} verified "
                                   f"labels reaches precision {target:g} (best {best:.3f})", curve)
    row = curve.iloc[int(reaching[-1])]
    threshold, coverage, precision = float(row["threshold"]), float(row["coverage"]), float(row["accuracy"])
    return AcceptanceThreshold(threshold, precision, coverage, target, verified,
                               f"confidence >= {threshold:.4f}: precision {precision:.3f} on {coverage:.1%} of "
                               f"{verified} verified labels (out of sample), target {target:g}", curve)


def threshold_from_probabilities(probabilities: np.ndarray, classes: Any, labels: Any,
                                 settings: AcceptanceSettings | None = None) -> AcceptanceThreshold:
    """:func:`choose_threshold` from out-of-sample ``probabilities`` (columns ``classes``) of the verified
    ``labels``: what the label model's cross-validation computed already."""
    p = np.asarray(probabilities, dtype=np.float64)
    names, y = np.asarray(classes), np.asarray(labels)
    if p.ndim != 2 or p.shape != (len(y), len(names)):
        raise ValueError(f"probabilities have shape {p.shape}, expected ({len(y)} labels, {len(names)} classes)")
    return choose_threshold(p.max(axis=1), names[np.argmax(p, axis=1)] == y, settings)


def acceptance_threshold(estimator: Any, vectors: np.ndarray, labels: Any,
                         settings: AcceptanceSettings | None = None) -> AcceptanceThreshold:
    """Cross-validate ``estimator`` (anything with ``fit``/``predict_proba``/``classes_``) on the verified
    ``vectors``/``labels`` with the label model's :func:`~cv_dataops.labels.model.out_of_sample_probabilities`
    (stratified folds; a class with one member is scored in sample) and :func:`choose_threshold`."""
    from cv_dataops.labels.model import out_of_sample_probabilities

    settings = settings or AcceptanceSettings()
    y = np.asarray(labels)
    empty = accuracy_coverage(np.zeros(0), np.zeros(0, dtype=bool))
    if len(y) < settings.min_verified:
        return AcceptanceThreshold(None, None, 0.0, settings.precision, len(y), f"accepting nothing: {len(y)} "
                                   f"verified labels, fewer than the {settings.min_verified} needed to estimate "
                                   f"precision", empty)
    classes = np.unique(y)
    if len(classes) < 2:
        return AcceptanceThreshold(None, None, 0.0, settings.precision, len(y), "accepting nothing: the verified "
                                   "labels hold fewer than two classes, nothing to cross-validate", empty)
    probabilities = out_of_sample_probabilities(_AnyClassifier(estimator), vectors, y, folds=settings.folds,
                                                seed=settings.seed)
    return threshold_from_probabilities(probabilities, classes, y, settings)


def apply_threshold(probabilities: np.ndarray, classes: Any, threshold: AcceptanceThreshold | float | None,
                    image_ids: Any = None) -> pd.DataFrame:
    """Per image (rows of ``probabilities``, columns ``classes``): ``image_id``, ``label`` (the most probable),
    ``confidence``, ``decision`` (``auto``: accepted as an auto-label; ``review``: to a human) and ``reason``."""
    p = np.asarray(probabilities, dtype=np.float64)
    names = np.asarray(classes)
    if p.ndim != 2 or p.shape[1] != len(names):
        raise ValueError(f"probabilities have shape {p.shape}, expected (images, {len(names)} classes)")
    ids = np.arange(len(p)) if image_ids is None else np.asarray(image_ids)
    if len(ids) != len(p):
        raise ValueError(f"{len(ids)} image ids but {len(p)} rows of probabilities")
    cut = threshold.threshold if isinstance(threshold, AcceptanceThreshold) else threshold
    confidence = p.max(axis=1) if len(p) else np.zeros(0)
    label = names[np.argmax(p, axis=1)] if len(p) else names[:0]
    if cut is None or not math.isfinite(cut):
        accepted = np.zeros(len(p), dtype=bool)
        why = (threshold.reason if isinstance(threshold, AcceptanceThreshold) else "no acceptance threshold")
        reasons = [why] * len(p)
    else:
        accepted = confidence >= cut
        reasons = [f"confidence {c:.3f} {'>=' if a else '<'} threshold {cut:.3f}"
                   for c, a in zip(confidence.tolist(), accepted.tolist(), strict=True)]
    return pd.DataFrame({"image_id": ids, "label": label, "confidence": confidence,
                         "decision": np.where(accepted, AUTO, REVIEW), "reason": reasons})
