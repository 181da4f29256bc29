"""One call per batch: every drift test against the reference, one decision that keeps false alarms at alpha,
severity, causes and per-image atypicality.

The decision: the tests are grouped in families, each family gets an equal share of alpha and each test of a
family an equal share of the family's, and weighted Holm (Holm 1979) runs over every test with those weights.
The batch drifted when any test is rejected, so the batch-wide false-alarm rate is at most alpha under any
dependence between the tests. Families (only those with a test that ran count):

- ``properties``: one KS or chi-squared test per image property;
- ``embedding``: MMD and the domain classifier;
- ``scenarios``: scenario shares and the novel share;
- ``model``: predicted labels and confidence (when label-model probabilities are given).

Equal family shares keep the two embedding tests from drowning among a dozen property tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cv_dataops.drift.embedding_tests import (
    AccuracyEstimate,
    accuracy_estimate,
    domain_classifier_test,
    mmd_test,
    model_tests,
    neighbour_picture,
    scenario_tests,
)
from cv_dataops.drift.explain import UNKNOWN, Cause, explain
from cv_dataops.drift.statistics import (
    PROPERTIES,
    DriftTest,
    property_tests,
    tail_atypicality,
)
from cv_dataops.drift.tables import DRIFT, DRIFT_ATYPICALITY, DRIFT_SUMMARY

FAMILIES = ("properties", "embedding", "scenarios", "model")


@dataclass(frozen=True)
class DriftSettings:
    alpha: float = 0.05
    permutations: int = 500            # per embedding test; p-values no smaller than 1 / (permutations + 1)
    max_reference: int = 1000          # reference rows for MMD and the classifier (evenly sampled, seeded)
    max_neighbour_reference: int = 5000  # reference rows for novelty, scenario shares and atypicality (sampled
    #                                      likewise beyond it: the reference's own nearest neighbours cost n^2)
    novel_quantile: float = 0.95       # novel: farther than this quantile of the reference's own nearest distances
    classifier_ridge: float = 1.0
    scenario_count: int = 8            # k-means scenarios of the reference when none are given
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.max_reference < 5 or self.max_neighbour_reference < 5:
            raise ValueError("max_reference and max_neighbour_reference must be at least 5")
        if self.permutations < 1 or 1 / (self.permutations + 1) > self.alpha / 16:
            raise ValueError(f"{self.permutations} permutations cannot reach alpha {self.alpha} after the correction; "
                             f"use at least {int(16 / self.alpha)}")


@dataclass
class DriftSample:
    """One side of the comparison, rows aligned: ``properties`` (image_id and the columns of
    :func:`~cv_dataops.drift.statistics.property_frame`), optional ``vectors`` (one embedder version),
    ``probabilities`` of the promoted label model (for the reference: out-of-sample; a row of NaN takes no part),
    and for the reference optional ``labels`` (column index of the known label, -1 unknown) and ``scenarios``."""

    properties: pd.DataFrame
    vectors: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None
    scenarios: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.properties)
        for name in ("vectors", "probabilities", "labels", "scenarios"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} rows, properties {n}: rows must be aligned")


@dataclass
class DriftResult:
    batch_id: str
    reference_id: str | None
    tests: list[DriftTest] = field(default_factory=list)
    causes: list[Cause] = field(default_factory=list)
    atypicality: pd.DataFrame = field(default_factory=DRIFT_ATYPICALITY.empty().to_pandas)
    accuracy: AccuracyEstimate | None = None
    alpha: float = 0.05
    note: str = ""

    @property
    def drifted(self) -> bool:
        return any(t.drifted for t in self.tests)

    @property
    def severity(self) -> str:
        if not self.drifted:
            return "none"
        return "large" if any(t.drifted and t.large for t in self.tests) else "small"

    @property
    def top_cause(self) -> str | None:
        return self.causes[0].text if self.causes else None

    @property
    def unknown(self) -> bool:
        return bool(self.causes) and self.causes[0].cause == UNKNOWN

    def drift_table(self):
        return DRIFT.from_rows([{"batch_id": self.batch_id, "reference_id": self.reference_id or "", "test": t.test,
                                 "feature": t.feature, "statistic": t.statistic, "p_value": t.p_value,
                                 "effect_size": t.effect_size, "drifted": t.drifted} for t in self.tests])

    def summary_table(self, report_uri: str | None = None):
        return DRIFT_SUMMARY.from_rows([{"batch_id": self.batch_id, "reference_id": self.reference_id,
                                         "drifted": self.drifted, "severity": self.severity,
                                         "top_cause": self.top_cause,
                                         "causes": "\n".join(c.text for c in self.causes) or None,
                                         "report_uri": report_uri,
                                         "estimated_accuracy": None if self.accuracy is None
                                         else self.accuracy.batch_accuracy,
                                         "reference_accuracy": None if self.accuracy is None
                                         else self.accuracy.reference_accuracy}])

    def atypicality_table(self):
        """The rows for `drift_atypicality` (a part that could not be measured is null, not NaN)."""
        frame = self.atypicality.astype(object).where(self.atypicality.notna(), None)
        return DRIFT_ATYPICALITY.from_rows(frame.to_dict("records"))

    def metadata(self) -> dict:
        """Plain values for the asset's metadata."""
        return {"reference_id": self.reference_id or "none", "drifted": self.drifted, "severity": self.severity,
                "top_cause": self.top_cause or "none", "causes": [c.text for c in self.causes],
                "tests_run": sum(t.ran for t in self.tests), "tests_drifted": sum(t.drifted for t in self.tests),
                "smallest_adjusted_p": min((t.adjusted_p_value for t in self.tests
                                            if t.adjusted_p_value is not None), default=None),
                "estimated_accuracy": None if self.accuracy is None else self.accuracy.batch_accuracy,
                "reference_accuracy": None if self.accuracy is None else self.accuracy.reference_accuracy,
                "note": self.note}


def weighted_holm(tests: list[DriftTest], alpha: float) -> None:
    """Set ``adjusted_p_value`` and ``drifted`` on every test that ran (see the module docstring)."""
    ran = [t for t in tests if t.ran]
    families = sorted({t.family for t in ran})
    if not ran:
        return
    size = {f: sum(t.family == f for t in ran) for f in families}
    weights = np.array([1.0 / (len(families) * size[t.family]) for t in ran])
    p = np.array([min(max(t.p_value, 0.0), 1.0) for t in ran])
    order = np.lexsort((np.arange(len(ran)), p / weights))
    remaining = weights[order][::-1].cumsum()[::-1]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] / weights[order] * remaining))
    for position, row in enumerate(order):
        ran[row].adjusted_p_value = float(adjusted[position])
        ran[row].drifted = bool(adjusted[position] <= alpha)


def _reference_rows(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def reference_scenarios(vectors: np.ndarray, settings: DriftSettings = DriftSettings()) -> np.ndarray:
    """Scenarios of a reference that has none from the scenarios table: k-means on its unit vectors, at most
    ``scenario_count`` and at least 20 images each on average; -1 for rows without a finite vector. Compute once
    per reference and pass it as ``DriftSample.scenarios`` when many batches share one reference."""
    from cv_dataops.embeddings.clustering import kmeans_labels
    from cv_dataops.embeddings.neighbors import unit_rows

    vectors = unit_rows(vectors)
    finite = np.isfinite(vectors).all(axis=1)
    k = max(1, min(settings.scenario_count, int(finite.sum()) // 20))
    labels = np.full(len(vectors), -1)
    if k > 1:
        labels[finite] = kmeans_labels(vectors[finite], k, seed=settings.seed, n_init=2)
    else:
        labels[finite] = 0
    return labels


def atypicality_rows(batch_id: str, image_ids: list[str], embedding: np.ndarray | None,
                     properties: np.ndarray | None, nearest: np.ndarray | None) -> pd.DataFrame:
    n = len(image_ids)
    embedding = np.full(n, np.nan) if embedding is None else embedding
    properties = np.full(n, np.nan) if properties is None else properties
    nearest = np.full(n, np.nan) if nearest is None else np.where(np.isfinite(nearest), nearest, np.nan)
    score = np.fmax(embedding, properties)
    frame = pd.DataFrame({"batch_id": batch_id, "image_id": image_ids, "atypicality": np.nan_to_num(score, nan=0.0),
                          "embedding_atypicality": embedding, "property_atypicality": properties,
                          "nearest_reference_distance": nearest})
    frame = frame.sort_values(["atypicality", "embedding_atypicality", "property_atypicality",
                               "nearest_reference_distance", "image_id"],
                              ascending=[False, False, False, False, True], na_position="last", kind="stable")
    frame["rank"] = np.arange(1, n + 1, dtype=np.int32)
    return frame.reset_index(drop=True)


def detect_drift(batch_id: str, batch: DriftSample, reference: DriftSample | None, reference_id: str | None,
                 settings: DriftSettings = DriftSettings(), classes: list[str] | None = None,
                 no_reference_reason: str = "no reference yet") -> DriftResult:
    """Every test of ``batch`` against ``reference``; with no reference, a result that says so and flags nothing."""
    image_ids = [str(i) for i in batch.properties.get("image_id", pd.Series(range(len(batch.properties))))]
    if reference is None or reference_id is None or not len(reference.properties):
        result = DriftResult(batch_id, None, alpha=settings.alpha, note=no_reference_reason)
        result.atypicality = atypicality_rows(batch_id, image_ids, None, None, None)
        return result
    result = DriftResult(batch_id, reference_id, alpha=settings.alpha)
    tests = property_tests(reference.properties, batch.properties)
    embedding = nearest = None
    if reference.vectors is not None and batch.vectors is not None:
        rows = _reference_rows(len(reference.vectors), settings.max_reference, settings.seed)
        tests.append(mmd_test(reference.vectors[rows], batch.vectors, permutations=settings.permutations,
                              seed=settings.seed))
        tests.append(domain_classifier_test(reference.vectors[rows], batch.vectors, ridge=settings.classifier_ridge,
                                            permutations=settings.permutations, seed=settings.seed + 1))
        near = _reference_rows(len(reference.vectors), settings.max_neighbour_reference, settings.seed)
        picture = neighbour_picture(reference.vectors[near], batch.vectors, novel_quantile=settings.novel_quantile)
        scenarios = np.asarray(reference.scenarios)[near] if reference.scenarios is not None else \
            reference_scenarios(reference.vectors[near], settings)
        tests += scenario_tests(picture, scenarios)
        embedding, nearest = picture.embedding_atypicality(), picture.batch_nearest
    if reference.probabilities is not None and batch.probabilities is not None:
        # rows without probabilities (NaN: e.g. reference images the model was trained on) take no part
        known_reference = np.isfinite(reference.probabilities).all(axis=1)
        known_batch = np.isfinite(batch.probabilities).all(axis=1)
        tests += model_tests(reference.probabilities[known_reference], batch.probabilities[known_batch], classes)
        if reference.labels is not None:
            result.accuracy = accuracy_estimate(reference.probabilities, reference.labels,
                                                batch.probabilities[known_batch])
    weighted_holm(tests, settings.alpha)
    result.tests = tests
    result.causes = explain(tests, result.accuracy)
    result.atypicality = atypicality_rows(batch_id, image_ids, embedding,
                                          tail_atypicality(reference.properties, batch.properties, PROPERTIES),
                                          nearest)
    return result
