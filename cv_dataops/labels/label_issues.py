"""Probable label errors: cleanlab's confident learning on classifier AND neighbour evidence, ranked for review.

cleanlab (``cleanlab.filter.find_label_issues``) flags a label when out-of-sample probabilities put the item
confidently in another class. Its probabilities usually come from one classifier; a linear model on embeddings
misses local structure (a class in two clusters, a wrong label among its look-alikes). So the audit combines two
out-of-sample views of every item:

1. the label model's cross-validated probabilities (:func:`cv_dataops.labels.model.out_of_sample_probabilities`);
2. the given labels of its ``neighbors`` nearest images in the embedding space (the item itself left out), from
   the one kNN engine :class:`cv_dataops.embeddings.neighbors.NeighborIndex`, smoothed toward uniform;

and runs cleanlab on their weighted average. ``score`` is cleanlab's label quality score of the given label under
the average (0..1, lower = more likely wrong), ``rank`` orders by it (1 = look first), ``suggested_label`` is the
average's most likely class, ``is_issue`` is cleanlab's verdict on the average. The knobs' defaults were chosen
by ``bench/fit_label_issues.py`` on data and seeds the benchmark does not report on.

When the features are weak (low cross-validated accuracy) confident learning flags a large part of the catalog:
the result then carries ``needs_budget`` and a one-line warning: the ranking is still useful, the flags are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cv_dataops.embeddings.neighbors import NeighborIndex
from cv_dataops.labels.model import (
    LabelModel,
    check_vectors,
    out_of_sample_probabilities,
)

FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_normalized_margin", "low_self_confidence")
SCORES = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
COLUMNS = ["image_id", "given_label", "suggested_label", "score", "rank", "is_issue", "method", "detail"]


@dataclass(frozen=True)
class LabelIssueSettings:
    """Knobs of the audit (defaults fitted by bench/fit_label_issues.py).

    ``neighbors``: k of the neighbour vote; ``classifier_weight``: the classifier's share of the averaged
    probabilities (1 = cleanlab on the classifier alone, 0 = neighbours alone); ``smoothing``: pseudo-count
    spread over the classes in the neighbour vote; ``filter_by`` / ``score_method``: cleanlab's; ``max_score``: a
    flag also needs a score below it (1 = off: on weak features confident learning flags far more labels than are
    wrong, and this asks for a clear margin); ``C``, ``folds``: the label model's regularisation and cross-validation folds; ``min_accuracy`` /
    ``max_flag_share``: below / above these the flags are not to be trusted, only the ranking."""

    neighbors: int = 10
    classifier_weight: float = 0.6
    smoothing: float = 1.0
    filter_by: str = "prune_by_noise_rate"
    score_method: str = "normalized_margin"
    max_score: float = 0.4
    C: float = 0.01
    folds: int = 5
    seed: int = 0
    min_accuracy: float = 0.6
    max_flag_share: float = 0.3

    def __post_init__(self):
        if self.neighbors < 1:
            raise ValueError(f"neighbors must be at least 1, got {self.neighbors}")
        if not 0.0 <= self.classifier_weight <= 1.0:
            raise ValueError(f"classifier_weight must be in [0, 1], got {self.classifier_weight}")
        if self.smoothing < 0:
            raise ValueError(f"smoothing must not be negative, got {self.smoothing}")
        if self.filter_by not in FILTERS:
            raise ValueError(f"filter_by must be one of {FILTERS}, got {self.filter_by!r}")
        if not 0.0 < self.max_score <= 1.0:
            raise ValueError(f"max_score must be in (0, 1], got {self.max_score}")
        if self.score_method not in SCORES:
            raise ValueError(f"score_method must be one of {SCORES}, got {self.score_method!r}")

    def label_model(self) -> LabelModel:
        return LabelModel(C=self.C, seed=self.seed)


@dataclass(frozen=True)
class LabelIssueResult:
    """The ``label_issues`` rows and the figures a check reports: ``cv_accuracy`` (the classifier's
    out-of-sample accuracy against the given labels), ``flag_share`` (share of rows with ``is_issue``).
    ``probabilities`` (the average) and ``classifier_probabilities`` (the label model's, out-of-sample) are in
    row order, columns ``classes``."""

    frame: pd.DataFrame
    cv_accuracy: float
    flag_share: float
    settings: LabelIssueSettings
    probabilities: np.ndarray = field(repr=False, compare=False)
    classes: np.ndarray = field(repr=False, compare=False)
    classifier_probabilities: np.ndarray = field(repr=False, compare=False)

    @property
    def needs_budget(self) -> bool:
        """True when the flags cannot be trusted (weak features): rank and rely on the review budget."""
        return self.cv_accuracy < self.settings.min_accuracy or self.flag_share > self.settings.max_flag_share

    @property
    def warning(self) -> str | None:
        if not self.needs_budget:
            return None
        return (f"cross-validated accuracy {self.cv_accuracy:.2f} and {self.flag_share:.0%} of labels flagged: "
                f"the flags are not reliable on these features; ranked; rely on the review budget")

    def to_table(self, labels_version: int | None = None, model_version: str | None = None):
        """The frame as the ``label_issues`` table (:data:`cv_dataops.labels.tables.LABEL_ISSUES`)."""
        import pyarrow as pa

        from cv_dataops.labels.tables import LABEL_ISSUES

        frame = self.frame.astype({"image_id": str, "given_label": str, "suggested_label": str})
        frame = frame.assign(labels_version=pd.array([labels_version] * len(frame), dtype="Int64"),
                             model_version=pd.array([model_version] * len(frame), dtype="string"))
        return LABEL_ISSUES.conform(pa.Table.from_pandas(frame, preserve_index=False))


def neighbor_probabilities(vectors: np.ndarray, label_index: np.ndarray, n_classes: int, neighbors: int,
                           smoothing: float = 1.0, neighbor_rows: np.ndarray | None = None) -> np.ndarray:
    """Per row, the share of each class among the given labels of its ``neighbors`` nearest other rows (cosine,
    :class:`NeighborIndex`, the row itself left out: out-of-sample), with ``smoothing`` pseudo-counts spread evenly
    so that no class is impossible. ``neighbor_rows``: the rows of an earlier ``kneighbors(None, k >= neighbors)``
    to reuse."""
    if neighbor_rows is None:
        _, neighbor_rows = NeighborIndex(vectors).kneighbors(None, k=neighbors)
    rows = neighbor_rows[:, :neighbors]
    counts = np.zeros((len(label_index), n_classes))
    np.add.at(counts, (np.repeat(np.arange(len(label_index)), rows.shape[1]), label_index[rows].ravel()), 1.0)
    counts += smoothing / n_classes
    return counts / counts.sum(axis=1, keepdims=True)


def issues_from_probabilities(probabilities: np.ndarray, label_index: np.ndarray, filter_by: str,
                              score_method: str) -> tuple[np.ndarray, np.ndarray]:
    """``(is_issue, score)`` from cleanlab: its filter's verdict and its label quality score (0..1, lower = more
    likely wrong) of each given label under ``probabilities``."""
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues
    from cleanlab.rank import get_label_quality_scores

    p = np.clip(probabilities, 0.0, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    is_issue = cleanlab_find_label_issues(label_index, p, filter_by=filter_by, n_jobs=1)
    score = get_label_quality_scores(label_index, p, method=score_method)
    return np.asarray(is_issue, dtype=bool), np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)


def audit_probabilities(vectors: np.ndarray, label_index: np.ndarray, n_classes: int,
                        classifier_probabilities: np.ndarray, settings: LabelIssueSettings,
                        neighbor_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(is_issue, score, averaged probabilities)`` given the classifier's out-of-sample probabilities (columns
    = classes in ``label_index``'s order). Split out so that a benchmark can reuse one cross-validation."""
    w = settings.classifier_weight
    if w < 1.0:
        knn = neighbor_probabilities(vectors, label_index, n_classes, settings.neighbors, settings.smoothing,
                                     neighbor_rows)
        averaged = w * classifier_probabilities + (1.0 - w) * knn
    else:
        averaged = classifier_probabilities
    is_issue, score = issues_from_probabilities(averaged, label_index, settings.filter_by, settings.score_method)
    if settings.max_score < 1.0:
        is_issue &= score < settings.max_score
    return is_issue, score, averaged


def find_label_issues(vectors, given_labels, settings: LabelIssueSettings | None = None,
                      image_ids=None) -> LabelIssueResult:
    """The ``label_issues`` rows of ``given_labels`` (one per row of ``vectors``; ``image_ids`` default to the row
    numbers), ranked: rank 1 is the label most likely wrong. Ties in score keep row order."""
    settings = settings or LabelIssueSettings()
    x, labels = check_vectors(vectors, given_labels)
    ids = np.arange(len(x)).astype(str) if image_ids is None else np.asarray(image_ids)
    if len(ids) != len(x):
        raise ValueError(f"{len(ids)} image ids for {len(x)} vectors")
    classes, label_index = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"a label audit needs at least two classes, got {list(classes)}")
    if len(x) <= settings.neighbors:
        raise ValueError(f"{len(x)} labelled images are too few for a {settings.neighbors}-neighbour vote")
    classifier = out_of_sample_probabilities(settings.label_model(), x, labels, settings.folds, settings.seed)
    accuracy = float(np.mean(classifier.argmax(axis=1) == label_index))
    _, neighbor_rows = NeighborIndex(x).kneighbors(None, k=settings.neighbors)
    is_issue, score, averaged = audit_probabilities(x, label_index, len(classes), classifier, settings,
                                                    neighbor_rows)
    agreeing = (label_index[neighbor_rows] == label_index[:, None]).sum(axis=1)
    rows = np.arange(len(x))
    method = (f"cleanlab {settings.filter_by} / {settings.score_method} on {settings.classifier_weight:g} x "
              f"label model + {1 - settings.classifier_weight:g} x {settings.neighbors}-neighbour vote")
    detail = [f"label model {classifier[i, label_index[i]]:.2f} for the given label "
              f"(best: {classes[classifier[i].argmax()]} {classifier[i].max():.2f}); "
              f"{agreeing[i]} of {neighbor_rows.shape[1]} nearest images share it" for i in rows]
    order = np.lexsort((np.arange(len(x)), score))
    rank = np.empty(len(x), dtype=np.int64)
    rank[order] = np.arange(1, len(x) + 1)
    frame = pd.DataFrame({"image_id": ids, "given_label": labels, "suggested_label": classes[averaged.argmax(1)],
                          "score": score, "rank": rank, "is_issue": is_issue, "method": method,
                          "detail": detail})
    frame = frame.iloc[order].reset_index(drop=True)
    return LabelIssueResult(frame=frame, cv_accuracy=accuracy, flag_share=float(is_issue.mean()),
                            settings=settings, probabilities=averaged, classes=classes,
                            classifier_probabilities=classifier)
