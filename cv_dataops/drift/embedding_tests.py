"""Tests on the embeddings (MMD, a domain classifier), on scenario shares and novel images (the one kNN engine),
and on the label model's outputs (predicted labels, confidence, an accuracy estimate).

Both embedding tests are permutation tests with p = (1 + k) / (B + 1), k the permutations at least as extreme
as the observed statistic, seeded, so they keep their level at any batch size (a Mann-Whitney p-value on
cross-validated scores does not: the folds' scores are not independent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from cv_dataops.curation.selection import median_bandwidth
from cv_dataops.drift.statistics import DriftTest, chi_squared_test, ks_test
from cv_dataops.embeddings.neighbors import NeighborIndex, unit_rows


def _finite_rows(vectors: np.ndarray) -> np.ndarray:
    x = unit_rows(np.asarray(vectors, dtype=np.float64))
    return x[np.isfinite(x).all(axis=1)].astype(np.float64)


def _permutation_p(observed: float, permuted: np.ndarray) -> float:
    return float((1 + int(np.sum(permuted >= observed - 1e-12))) / (len(permuted) + 1))


def _indicators(n_reference: int, n_batch: int, permutations: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 1 + B) 0/1 batch membership: column 0 the observed split, then ``permutations`` random relabellings."""
    n = n_reference + n_batch
    columns = np.zeros((n, permutations + 1))
    columns[n_reference:, 0] = 1.0
    for b in range(1, permutations + 1):
        columns[rng.permutation(n)[:n_batch], b] = 1.0
    return columns


def mmd_test(reference: np.ndarray, batch: np.ndarray, *, permutations: int = 500, seed: int = 0) -> DriftTest:
    """Unbiased MMD^2 with a Gaussian kernel on the unit vectors, bandwidth the median squared distance of the
    pooled rows (:func:`~cv_dataops.curation.selection.median_bandwidth`), permutation p-value. Effect size MMD
    (the square root, 0 when the unbiased estimate is negative)."""
    r, b = _finite_rows(reference), _finite_rows(batch)
    result = DriftTest("embedding", "mmd", "embedding", None, None, None, "mmd", "embedding", len(r), len(b),
                       len(reference) - len(r), len(batch) - len(b))
    if len(r) < 5 or len(b) < 5:
        result.note = f"not run: {len(r)} reference and {len(b)} batch vectors"
        return result
    z = np.vstack([r, b])
    bandwidth = median_bandwidth(z)
    squared = np.einsum("ij,ij->i", z, z)
    kernel = np.exp(-np.maximum(squared[:, None] - 2.0 * z @ z.T + squared[None, :], 0.0) / bandwidth)
    np.fill_diagonal(kernel, 0.0)
    n, m = len(r), len(b)
    batch_side = _indicators(n, m, permutations, np.random.default_rng(seed))
    row_sums, total = kernel.sum(axis=1), kernel.sum()
    within_batch = np.einsum("ib,ib->b", batch_side, kernel @ batch_side)
    across = batch_side.T @ row_sums - within_batch
    within_reference = total - 2.0 * across - within_batch
    mmd2 = within_reference / (n * (n - 1)) + within_batch / (m * (m - 1)) - 2.0 * across / (n * m)
    result.statistic = float(mmd2[0])
    result.p_value = _permutation_p(mmd2[0], mmd2[1:])
    result.effect_size = float(np.sqrt(max(mmd2[0], 0.0)))
    result.details = {"bandwidth": bandwidth, "permutations": permutations}
    return result


def _auc_columns(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUC of each column of ``scores`` for the 0/1 labels in the same column of ``positive`` (ties count half)."""
    ranks = stats.rankdata(scores, axis=0)
    n_pos = positive.sum(axis=0)
    n_neg = len(positive) - n_pos
    return ((ranks * positive).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def domain_classifier_test(reference: np.ndarray, batch: np.ndarray, *, permutations: int = 500, ridge: float = 1.0,
                           seed: int = 0) -> DriftTest:
    """Can a linear classifier tell batch from reference? Leave-one-out AUC of a ridge-regression classifier on the
    unit vectors, with a permutation p-value. Ridge because its leave-one-out predictions have a closed form
    (``(yhat - h y) / (1 - h)``, the identity scikit-learn's RidgeClassifierCV uses): the hat matrix does not depend
    on the labels, so B permutations cost B matrix products instead of B x folds refits. ``ridge`` is the penalty
    relative to the mean eigenvalue of the centred Gram matrix. Effect size the AUC (0.5 = indistinguishable)."""
    r, b = _finite_rows(reference), _finite_rows(batch)
    result = DriftTest("embedding", "domain_classifier", "embedding", None, None, None, "auc", "embedding", len(r),
                       len(b), len(reference) - len(r), len(batch) - len(b))
    if len(r) < 5 or len(b) < 5:
        result.note = f"not run: {len(r)} reference and {len(b)} batch vectors"
        return result
    z = np.vstack([r, b])
    z = z - z.mean(axis=0)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    eigen = s ** 2
    keep = eigen > eigen.max() * 1e-10 if len(eigen) and eigen.max() > 0 else np.zeros(len(eigen), bool)
    u, eigen = u[:, keep], eigen[keep]
    penalty = ridge * (eigen.mean() if len(eigen) else 1.0)
    shrink = eigen / (eigen + penalty)
    labels = _indicators(len(r), len(b), permutations, np.random.default_rng(seed))
    n = len(z)
    # with an intercept: H = 1 1' / n + U diag(shrink) U'
    fitted = labels.mean(axis=0, keepdims=True) + u @ (shrink[:, None] * (u.T @ labels))
    leverage = 1.0 / n + np.einsum("ij,j,ij->i", u, shrink, u)
    leave_one_out = (fitted - leverage[:, None] * labels) / (1.0 - leverage[:, None])
    auc = _auc_columns(leave_one_out, labels)
    result.statistic = result.effect_size = float(auc[0])
    result.p_value = _permutation_p(auc[0], auc[1:])
    result.details = {"permutations": permutations, "ridge": ridge}
    return result


@dataclass
class NeighbourPicture:
    """Where each batch image lies among the reference (one kNN pass, shared by the scenario tests, atypicality and
    the report)."""

    batch_nearest: np.ndarray          # (m,) cosine distance to the nearest reference image (inf: no finite vector)
    batch_neighbour: np.ndarray        # (m,) its row in the reference
    reference_nearest: np.ndarray      # (n,) each reference image's distance to its nearest other reference image
    reference_neighbour: np.ndarray    # (n,)
    radius: float                      # "far from every reference neighbour" beyond this distance

    def embedding_atypicality(self) -> np.ndarray:
        """Share of reference images whose own nearest neighbour is closer than the batch image's nearest reference
        image: scale-free (Datalab's rule), so it holds on any embedder. NaN for images without a vector."""
        own = np.sort(self.reference_nearest[np.isfinite(self.reference_nearest)])
        if not len(own):
            return np.full(len(self.batch_nearest), np.nan)
        share = np.searchsorted(own, self.batch_nearest, side="left") / len(own)
        return np.where(np.isfinite(self.batch_nearest), share, np.nan)


def neighbour_picture(reference: np.ndarray, batch: np.ndarray, *, novel_quantile: float = 0.95) -> NeighbourPicture:
    """The nearest reference image of every batch image and of every reference image (itself left out); the radius
    beyond which a batch image is novel is the ``novel_quantile`` of the reference's own nearest distances."""
    index = NeighborIndex(reference)
    own_distance, own_row = index.kneighbors(None, 1)
    distance, row = index.kneighbors(batch, 1)
    own_distance = own_distance[:, 0] if own_distance.shape[1] else np.full(len(index), np.inf)
    own_row = own_row[:, 0] if own_row.shape[1] else np.zeros(len(index), np.int64)
    distance = distance[:, 0] if distance.shape[1] else np.full(len(batch), np.inf)
    row = row[:, 0] if row.shape[1] else np.zeros(len(batch), np.int64)
    finite = own_distance[np.isfinite(own_distance)]
    radius = float(np.quantile(finite, novel_quantile)) if len(finite) else np.inf
    return NeighbourPicture(distance, row, own_distance, own_row, radius)


def scenario_tests(picture: NeighbourPicture, reference_scenarios: np.ndarray) -> list[DriftTest]:
    """Scenario shares: every image within the radius takes the scenario of its nearest reference image (reference
    images their nearest other one, so both sides follow one rule), compared by chi-squared; then the novel share, images farther
    than the radius from every reference image, against the reference's own rate by a one-sided Fisher exact test
    (effect size: the increase of the share)."""
    scenarios = np.asarray(reference_scenarios)
    finite_r, finite_b = np.isfinite(picture.reference_nearest), np.isfinite(picture.batch_nearest)
    # novel images belong to no reference scenario: the shares are of the images within the radius, on both sides
    near_r = finite_r & (picture.reference_nearest <= picture.radius)
    near_b = finite_b & (picture.batch_nearest <= picture.radius)
    ref_assigned = pd.Series(scenarios[picture.reference_neighbour[near_r]]).astype(str)
    batch_assigned = pd.Series(scenarios[picture.batch_neighbour[near_b]]).astype(str)
    shares = chi_squared_test(ref_assigned, batch_assigned, feature="scenario_shares", family="scenarios",
                              cause="scenario")
    shares.missing_batch = int((~finite_b).sum())
    ref_novel = int((picture.reference_nearest[finite_r] > picture.radius).sum())
    batch_novel = int((picture.batch_nearest[finite_b] > picture.radius).sum())
    n, m = int(finite_r.sum()), int(finite_b.sum())
    novel = DriftTest("scenarios", "fisher", "novel_share", None, None, None, "share_increase", "novel", n, m,
                      int((~finite_r).sum()), int((~finite_b).sum()))
    if n >= 5 and m >= 5:
        table = [[batch_novel, m - batch_novel], [ref_novel, n - ref_novel]]
        novel.p_value = float(stats.fisher_exact(table, alternative="greater").pvalue)
        novel.statistic = batch_novel / m
        novel.effect_size = batch_novel / m - ref_novel / n
        novel.details = {"reference_share": ref_novel / n, "batch_share": batch_novel / m, "radius": picture.radius}
    else:
        novel.note = f"not run: {n} reference and {m} batch vectors"
    return [shares, novel]


@dataclass(frozen=True)
class AccuracyEstimate:
    """Average thresholded confidence (Garg et al. 2022): the threshold at which the share of reference images above
    it equals the reference's out-of-sample accuracy; the batch's estimated accuracy is its share above it. An
    estimate: it is right when the batch's images are as hard as the reference's, and it errs low when harder
    images come in that a calibrated model is still right on (then ``average_confidence``, the batch's mean top
    probability, is closer); on real shifts models grow overconfident and ATC errs less (Garg et al.)."""

    threshold: float
    reference_accuracy: float
    batch_accuracy: float
    average_confidence: float


def accuracy_estimate(reference_probabilities: np.ndarray, reference_labels: np.ndarray,
                      batch_probabilities: np.ndarray) -> AccuracyEstimate | None:
    """ATC from out-of-sample reference probabilities (never in-sample: they are overconfident) and the reference
    labels as column indices (-1 or NaN: unknown, left out). None when nothing is labelled."""
    p = np.asarray(reference_probabilities, dtype=float)
    labels = pd.to_numeric(pd.Series(np.asarray(reference_labels).ravel()), errors="coerce").to_numpy(float)
    known = np.isfinite(labels) & (labels >= 0) & np.isfinite(p).all(axis=1)
    if not known.any() or not len(batch_probabilities):
        return None
    confidence = p[known].max(axis=1)
    accuracy = float(np.mean(p[known].argmax(axis=1) == labels[known].astype(int)))
    threshold = float(np.quantile(confidence, 1.0 - accuracy))
    batch_confidence = np.asarray(batch_probabilities, dtype=float).max(axis=1)
    return AccuracyEstimate(threshold, accuracy, float(np.mean(batch_confidence > threshold)),
                            float(np.mean(batch_confidence)))


def model_tests(reference_probabilities: np.ndarray, batch_probabilities: np.ndarray,
                classes: list[str] | None = None) -> list[DriftTest]:
    """Black-box shift detection ("Failing Loudly", Rabanser et al. 2019): the predicted-label distribution by
    chi-squared and the top confidence by KS."""
    p, q = np.asarray(reference_probabilities, dtype=float), np.asarray(batch_probabilities, dtype=float)
    names = np.asarray(classes if classes is not None else [str(c) for c in range(p.shape[1])], dtype=object)
    labels = chi_squared_test(pd.Series(names[p.argmax(axis=1)]), pd.Series(names[q.argmax(axis=1)]),
                              feature="predicted_label", family="model", cause="predicted_label")
    confidence = ks_test(pd.Series(p.max(axis=1)), pd.Series(q.max(axis=1)), feature="confidence", family="model",
                         cause="confidence")
    return [labels, confidence]
