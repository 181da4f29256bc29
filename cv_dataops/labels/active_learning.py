"""Active learning: which unlabelled images a human should label next, within a budget.

Two phases, because the best rule depends on how many labels there are (Hacohen, Dekel & Weinshall 2022, "Active
learning on a budget"): with few labels a model's uncertainty is noise, and what teaches most is *coverage*, the
typical image of each region of the embedding that no label covers yet; with many, the region boundaries are
what is left to learn, and *uncertainty* (the margin between the two most probable classes) pays, spread over
the embedding so that one batch does not spend itself on one confusing pair.

* coverage (TypiClust, Hacohen et al. 2022): the pool is cut by k-means into ``labelled + budget`` clusters (at
  most :attr:`ActiveLearningSettings.max_clusters`); each pick goes to the cluster with the fewest labels (ties:
  the largest), skipping clusters smaller than ``min_cluster_size`` (outliers) while others remain, and takes its
  most *typical* unlabelled image: the highest inverse mean cosine distance to its ``typicality_neighbours``
  nearest neighbours within the cluster.
* uncertainty within diversity (Zhdanov 2019, "Diverse mini-batch active learning"): the
  ``candidates_per_pick * budget`` unlabelled images of lowest margin are cut by k-means into ``budget`` clusters
  and each cluster gives its lowest-margin image.

The switch: uncertainty once ``probabilities`` are given and the labels per class (labelled images / the number
of probability columns, the classes the model knows) reach :attr:`ActiveLearningSettings.switch_labels_per_class`;
coverage before. The constant's origin is in its docstring. Neighbours come from the one kNN engine
(:class:`~cv_dataops.embeddings.neighbors.NeighborIndex`), clusters from the one k-means wrapper
(:func:`~cv_dataops.embeddings.clustering.kmeans_labels`). Any classifier gives the probabilities (scikit-learn's
``LogisticRegression``, the label domain's ``LabelModel``): only ``predict_proba``'s output is read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from cv_dataops.embeddings.clustering import kmeans_labels
from cv_dataops.embeddings.neighbors import NeighborIndex, unit_rows

COVERAGE = "coverage"
UNCERTAINTY = "uncertainty"


@dataclass(frozen=True)
class ActiveLearningSettings:
    """How :func:`choose_for_labelling` picks.

    ``typicality_neighbours`` (20), ``max_clusters`` (500) and ``min_cluster_size`` (5) are TypiClust's published
    values; ``candidates_per_pick`` (10) is Zhdanov's pre-filter factor beta. ``switch_labels_per_class`` was
    chosen by ``bench/fit_active_learning.py`` on digits with tuning seeds and a pool/test split that
    ``bench/active_learning.py``'s reported curves do not use (and never on the CIFAR-10 sample); see the
    ``active-learning`` section of docs/benchmarks.md.
    """

    switch_labels_per_class: float = 2.0
    typicality_neighbours: int = 20
    max_clusters: int = 500
    min_cluster_size: int = 5
    candidates_per_pick: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("typicality_neighbours", "max_clusters", "min_cluster_size", "candidates_per_pick"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ActiveLearningSettings.{name} must be at least 1, got {getattr(self, name)}")
        if not self.switch_labels_per_class >= 0:
            raise ValueError(f"ActiveLearningSettings.switch_labels_per_class must be >= 0, got "
                             f"{self.switch_labels_per_class}")


class LabellingChoice(NamedTuple):
    """Row indices to label, in pick order; why each was picked; the phase (``coverage`` or ``uncertainty``)."""

    indices: np.ndarray
    reasons: list[str]
    phase: str


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (1 with one column): small = the model hesitates between two
    classes."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape[1] < 2:
        return np.ones(len(p))
    top = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def phase_for(labelled: int, probabilities: np.ndarray | None, settings: ActiveLearningSettings) -> str:
    """The switch rule (see the module docstring)."""
    if probabilities is None or probabilities.shape[1] < 2:
        return COVERAGE
    return UNCERTAINTY if labelled / probabilities.shape[1] >= settings.switch_labels_per_class else COVERAGE


def choose_for_labelling(vectors: np.ndarray, labelled_mask: np.ndarray, budget: int,
                         probabilities: np.ndarray | None = None,
                         settings: ActiveLearningSettings | None = None) -> LabellingChoice:
    """The ``budget`` unlabelled rows of ``vectors`` (one embedder version) a human should label next.

    ``labelled_mask[i]``: row ``i`` has a human label already (never chosen again). ``probabilities``: a model's
    ``predict_proba`` on every row (rows aligned with ``vectors``), or None before there is a model. Rows whose
    vector is not finite (an undecodable image) are never chosen. Deterministic for ``settings.seed``.
    """
    settings = settings or ActiveLearningSettings()
    x = unit_rows(vectors)
    labelled = np.asarray(labelled_mask, dtype=bool)
    if labelled.shape != (len(x),):
        raise ValueError(f"labelled_mask has shape {labelled.shape}, expected ({len(x)},) like the vectors")
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or len(probabilities) != len(x):
            raise ValueError(f"probabilities have shape {probabilities.shape}, expected ({len(x)}, classes)")
    finite = np.isfinite(x).all(axis=1)
    open_rows = np.flatnonzero(~labelled & finite)
    budget = max(0, min(int(budget), len(open_rows)))
    phase = phase_for(int(labelled.sum()), probabilities, settings)
    if budget == 0:
        return LabellingChoice(np.zeros(0, dtype=np.int64), [], phase)
    if budget == len(open_rows):
        return LabellingChoice(open_rows, [f"every unlabelled image ({budget}) fits in the budget"] * budget, phase)
    if phase == UNCERTAINTY:
        indices, reasons = _uncertain_and_diverse(x, open_rows, budget, probabilities, settings)
    else:
        indices, reasons = _typical_of_uncovered(x, labelled & finite, finite, budget, settings)
    return LabellingChoice(indices, reasons, phase)


def typicality(vectors: np.ndarray, neighbours: int) -> np.ndarray:
    """TypiClust's typicality: 1 / mean cosine distance to the ``neighbours`` nearest other rows (capped at the
    rows there are); a single row scores 0. Large = in a dense region, a typical image."""
    if len(vectors) < 2:
        return np.zeros(len(vectors))
    distances, _ = NeighborIndex(vectors).kneighbors(k=min(neighbours, len(vectors) - 1))
    return 1.0 / np.maximum(distances.mean(axis=1), 1e-12)


def _typical_of_uncovered(x: np.ndarray, labelled: np.ndarray, finite: np.ndarray, budget: int,
                          settings: ActiveLearningSettings) -> tuple[np.ndarray, list[str]]:
    rows = np.flatnonzero(finite)
    count = min(int(labelled.sum()) + budget, settings.max_clusters, len(rows))
    cluster = np.full(len(x), -1, dtype=np.int64)
    cluster[rows] = kmeans_labels(x[rows], count, seed=settings.seed)
    sizes = np.bincount(cluster[rows], minlength=count)
    covered = np.bincount(cluster[labelled], minlength=count)
    open_left = np.bincount(cluster[rows[~labelled[rows]]], minlength=count)
    taken = labelled.copy()
    picks, reasons = [], []
    scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(budget):
        usable = open_left > 0
        if (usable & (sizes >= settings.min_cluster_size)).any():
            usable &= sizes >= settings.min_cluster_size
        candidates = np.flatnonzero(usable)
        # fewest labels first, then the largest cluster, then the lower cluster number
        best = int(candidates[np.lexsort((candidates, -sizes[candidates], covered[candidates]))[0]])
        if best not in scores:
            members = np.flatnonzero(cluster == best)
            scores[best] = (members, typicality(x[members], settings.typicality_neighbours))
        members, typical = scores[best]
        free = ~taken[members]
        position = int(np.flatnonzero(free)[np.argmax(typical[free])])
        pick = int(members[position])
        reasons.append(f"coverage: the most typical unlabelled image of cluster {best} ({sizes[best]} images, "
                       f"{covered[best]} labelled before this pick; {count} clusters of the pool)")
        picks.append(pick)
        taken[pick] = True
        covered[best] += 1
        open_left[best] -= 1
    return np.array(picks, dtype=np.int64), reasons


def _uncertain_and_diverse(x: np.ndarray, open_rows: np.ndarray, budget: int, probabilities: np.ndarray,
                           settings: ActiveLearningSettings) -> tuple[np.ndarray, list[str]]:
    margin = margins(probabilities[open_rows])
    order = np.lexsort((open_rows, margin))  # lowest margin first; ties to the lower row
    candidates = order[:min(len(order), settings.candidates_per_pick * budget)]
    cluster = kmeans_labels(x[open_rows[candidates]], budget, seed=settings.seed)
    picks: list[int] = []
    seen: set[int] = set()
    for position, c in zip(candidates.tolist(), cluster.tolist(), strict=True):
        if c not in seen:  # candidates are in margin order: the first of a cluster is its least certain
            seen.add(c)
            picks.append(position)
    if len(picks) < budget:  # empty clusters: the next least certain candidates
        chosen = set(picks)
        picks += [p for p in candidates.tolist() if p not in chosen][:budget - len(picks)]
    reasons = [f"uncertainty: margin {margin[p]:.3f}, the least certain of its cluster ({budget} clusters of the "
               f"{len(candidates)} least certain unlabelled images)" for p in picks]
    return open_rows[np.array(picks, dtype=np.int64)], reasons
