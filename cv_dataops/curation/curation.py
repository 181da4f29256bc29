"""Curation: which images go to labelling and training, split without leakage, as a content-addressed version.

The steps, each a plain function of data frames and numpy arrays (no Dagster here):

1. :func:`eligible` drops images that must never be used: unusable ones (``is_unusable``) and every member of a
   duplicate group but the one to keep.
2. :func:`select` spends a budget: it spreads the budget over strata (the label where known, else the scenario)
   as evenly as their sizes allow, and within a stratum picks by kernel herding (:func:`kernel_herding`): each
   pick brings the picked set's distribution in embedding space closest to the stratum's, so the first picks are
   its most typical images and later ones spread over the rest, in proportion to where the images are. The other
   method, ``k-center``, is farthest-point (k-center greedy) selection inside k-means cells.
3. :func:`leak_free_split` assigns ``train``/``val``/``test`` by whole clusters (duplicate groups and connected
   near-neighbour clusters in embedding space), stratified by label; :func:`leakage` counts what crosses splits.
4. :func:`snapshot_manifest` gives the canonical manifest and its content-addressed ``snapshot_id``.
5. Exports: ImageFolder (:func:`export_imagefolder`), CSV safe for spreadsheets (:func:`export_csv`), COCO
   (:func:`export_coco`) and Label Studio tasks (:func:`export_label_studio`).

**Alignment.** Every function that takes ``vectors`` alongside a frame reads ``vectors[i]`` as the embedding of the
frame's *i*-th row (by position, not by index label). :func:`eligible` and :func:`select` keep the index labels of
their input, so with a catalog frame on a default ``RangeIndex`` and its vector matrix ``V``,
``V[frame.index.to_numpy()]`` are the vectors of any frame derived from it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cv_dataops.exports.files import neutralize_formula

SPLITS = ("train", "val", "test")
# At most this many k-means cells per stratum: bounds selection's cost on large strata (more picks per cell).
MAX_CELLS = 1024
# Kernel herding runs on at most this many rows at once; a larger stratum is herded inside k-means cells of about
# this size (each with its proportional share), which keeps the cost at O(HERD_ROWS * quota * d).
HERD_ROWS = 4096
SELECTION_METHODS = ("herding", "k-center")
MANIFEST_VERSION = 1
UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class CurationSettings:
    """How to curate.

    ``budget``: the most images to select, as a count (``int``) or a fraction of the eligible images (``float`` in
    ``(0, 1]``); ``None`` selects every eligible image.
    ``split_fractions``: the targets for train, val and test (normalised to sum to 1; a zero leaves a split empty).
    ``neighbour_radius``: cosine distance under which two images are near neighbours; connected near neighbours
    form a cluster that is never spread across splits.
    ``method``: how to pick within a stratum: ``herding`` (the default, :func:`kernel_herding`) or ``k-center``
    (farthest-point picks inside k-means cells, tuned by the next three settings); see :func:`select` for the
    measurements behind the default.
    ``cell_size`` (``k-center``): within a stratum of ``n`` images with a quota of ``q``, selection cuts it into
    ``min(q, n // cell_size, MAX_CELLS)`` k-means cells (so about ``cell_size`` images or more per cell) and gives
    each cell a share of ``q`` in proportion to its size.
    ``outlier_fraction`` (``k-center``): in a cell of ``n`` images with a share of ``q``, the picks pass over its
    ``outlier_fraction * (n - 2q)`` most isolated images (largest distance to their ``outlier_neighbours``-th
    nearest neighbour in the stratum), none once ``q`` reaches half the cell. ``0`` turns this off.
    ``seed``: makes selection tie-breaks and split assignment reproducible.
    """

    budget: int | float | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    neighbour_radius: float = 0.05
    seed: int = 0
    outlier_fraction: float = 0.2
    outlier_neighbours: int = 5
    cell_size: int = 8
    method: str = "herding"

    def __post_init__(self) -> None:
        if self.method not in SELECTION_METHODS:
            raise ValueError(f"method must be one of {', '.join(SELECTION_METHODS)}, not {self.method!r}")
        budget = self.budget
        if isinstance(budget, bool) or not (budget is None or isinstance(budget, (int, float, np.integer,
                                                                                  np.floating))):
            raise ValueError(f"budget must be an int, a float fraction or None, not {budget!r}")
        if isinstance(budget, (float, np.floating)) and not 0.0 < budget <= 1.0:
            raise ValueError(f"a fractional budget must be in (0, 1], not {budget}")
        if isinstance(budget, (int, np.integer)) and budget < 0:
            raise ValueError(f"budget must not be negative, not {budget}")
        fractions = tuple(float(f) for f in self.split_fractions)
        if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions) or sum(fractions) <= 0:
            raise ValueError(f"split_fractions must be three non-negative numbers with a positive sum, not "
                             f"{self.split_fractions!r}")
        if not 0.0 <= self.neighbour_radius < 2.0:
            raise ValueError(f"neighbour_radius is a cosine distance in [0, 2), not {self.neighbour_radius}")
        if not 0.0 <= self.outlier_fraction < 1.0:
            raise ValueError(f"outlier_fraction must be in [0, 1), not {self.outlier_fraction}")
        if self.cell_size < 1:
            raise ValueError(f"cell_size must be at least 1, not {self.cell_size}")
        if self.outlier_neighbours < 1:
            raise ValueError(f"outlier_neighbours must be at least 1, not {self.outlier_neighbours}")

    def budget_for(self, n_eligible: int) -> int:
        """The number of images to select from ``n_eligible``."""
        if self.budget is None:
            return n_eligible
        if isinstance(self.budget, (float, np.floating)):
            return min(n_eligible, int(round(float(self.budget) * n_eligible)))
        return min(n_eligible, int(self.budget))


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _present(value: object) -> bool:
    """False for None, NaN and pandas' NA (and empty strings, which carry no label either)."""
    if value is None:
        return False
    try:
        if pd.isna(value):
            return False
    except (TypeError, ValueError):  # arrays and the like are values
        return True
    return not (isinstance(value, str) and value == "")


def _clean(value: object) -> object:
    """A JSON-ready scalar: numpy scalars to Python, missing to None."""
    if not _present(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _column(frame: pd.DataFrame, name: str) -> list:
    return frame[name].tolist() if name in frame.columns else [None] * len(frame)


def _as_matrix(vectors: np.ndarray | None, n: int, what: str) -> np.ndarray:
    if vectors is None:
        raise ValueError(f"{what}: vectors are required")
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) != n:
        raise ValueError(f"{what}: expected vectors of shape ({n}, d) aligned with the rows, got {matrix.shape}")
    return matrix


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------------------------
# 1. Eligibility


def eligible(images: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``images`` into ``(eligible, excluded)``.

    Excluded are images with ``is_unusable`` true (reason ``"unusable"``) and the members of a duplicate group
    (``group_id`` not null) other than its ``keep`` member (reason ``"duplicate of <image_id of the kept member>"``).
    An unusable image gets the reason ``"unusable"`` whatever its group. When a group's ``keep`` member is unusable
    (or no row of the group is marked ``keep``), its usable member with the smallest ``image_id`` is kept instead,
    so a picture is never lost for want of its keep row. Missing columns mean nothing to drop (no ``is_unusable``:
    all usable; a null flag: not measured yet, usable). Both frames keep ``images``' index labels and row order;
    ``excluded`` has an extra ``reason`` column.
    """
    n = len(images)
    unusable = np.zeros(n, dtype=bool)
    if "is_unusable" in images.columns:
        unusable = images["is_unusable"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    reasons: list[str | None] = ["unusable" if u else None for u in unusable]
    if "group_id" in images.columns:
        ids = images["image_id"].astype(str).tolist()
        groups = images["group_id"].tolist()
        keeps = (images["keep"].astype("boolean").fillna(False).to_numpy(dtype=bool) if "keep" in images.columns
                 else np.zeros(n, dtype=bool))
        members: dict[object, list[int]] = {}
        for row, group in enumerate(groups):
            if _present(group):
                members.setdefault(group, []).append(row)
        for rows in members.values():
            usable = [r for r in rows if not unusable[r]]
            if not usable:
                continue
            marked = [r for r in usable if keeps[r]]
            keeper = min(marked or usable, key=lambda r: ids[r])
            for row in usable:
                if row != keeper:
                    reasons[row] = f"duplicate of {ids[keeper]}"
    drop = np.array([r is not None for r in reasons], dtype=bool)
    excluded = images[drop].copy()
    excluded["reason"] = pd.Series([r for r in reasons if r is not None], index=excluded.index, dtype=object)
    return images[~drop].copy(), excluded


# ---------------------------------------------------------------------------------------------------------------
# 2. Selection


def k_center_greedy(vectors: np.ndarray, k: int, *, already_selected: np.ndarray | None = None,
                    seed: int = 0) -> np.ndarray:
    """Farthest-point (k-center greedy) selection, Sener & Savarese 2018: ``k`` row indices in selection order.

    Each pick is the row farthest (Euclidean; for L2-normalised vectors the same order as cosine distance) from
    everything selected so far, ``already_selected`` included (those are never returned). With nothing selected
    yet, the first pick is a row drawn with ``seed``. Ties go to the lowest index. ``k`` is capped at the number of
    rows not already selected. O(n * k * d) time, O(n) extra memory: one distance update per pick.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array, got shape {x.shape}")
    n = len(x)
    chosen = (np.zeros(0, dtype=np.int64) if already_selected is None
              else np.unique(np.asarray(already_selected, dtype=np.int64)))
    if len(chosen) and (chosen.min() < 0 or chosen.max() >= n):
        raise ValueError("already_selected holds indices outside the rows")
    k = max(0, min(int(k), n - len(chosen)))
    picks = np.empty(k, dtype=np.int64)
    if k == 0:
        return picks
    squared = np.einsum("ij,ij->i", x, x)

    def distance_to(i: int) -> np.ndarray:
        return np.maximum(squared - 2.0 * (x @ x[i]) + squared[i], 0.0)

    nearest = np.full(n, np.inf, dtype=np.float32)
    for i in chosen:
        np.minimum(nearest, distance_to(int(i)), out=nearest)
    nearest[chosen] = -1.0
    start = 0
    if not len(chosen):
        first = int(np.random.default_rng(seed).integers(n))
        picks[0] = first
        nearest = distance_to(first).astype(np.float32)
        nearest[first] = -1.0
        start = 1
    for step in range(start, k):
        pick = int(np.argmax(nearest))
        picks[step] = pick
        np.minimum(nearest, distance_to(pick), out=nearest)
        nearest[pick] = -1.0
    return picks


def _stratum_keys(frame: pd.DataFrame) -> list[str]:
    """``label=<label>`` where the label is known, else ``scenario=<n>`` where known, else ``unlabelled``."""
    keys = []
    for label, scenario in zip(_column(frame, "label"), _column(frame, "scenario"), strict=True):
        if _present(label):
            keys.append(f"label={label}")
        elif _present(scenario):
            keys.append(f"scenario={int(scenario)}")
        else:
            keys.append(UNLABELLED)
    return keys


def allocate(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Spread ``budget`` over strata as evenly as their sizes allow (water-filling).

    A stratum smaller than its even share is taken whole and the rest is shared again among the others; the last
    few units that do not divide evenly go to the largest strata (ties by name).
    """
    allocation = {key: 0 for key in sizes}
    remaining = min(int(budget), sum(sizes.values()))
    open_keys = sorted((k for k, size in sizes.items() if size > 0), key=lambda k: (-sizes[k], k))
    while open_keys and remaining > 0:
        share = remaining // len(open_keys)
        small = [k for k in open_keys if sizes[k] <= share]
        if small:
            for key in small:
                allocation[key] = sizes[key]
                remaining -= sizes[key]
            open_keys = [k for k in open_keys if k not in set(small)]
            continue
        for key in open_keys:
            allocation[key] = share
        remaining -= share * len(open_keys)
        for key in open_keys[:remaining]:
            allocation[key] += 1
        remaining = 0
    return allocation


def isolation(vectors: np.ndarray, neighbours: int, *, reference: int = 4096, seed: int = 0) -> np.ndarray:
    """Each row's Euclidean distance to its ``neighbours``-th nearest other row (large = isolated, an outlier).

    Above ``reference`` rows the neighbours are looked for in a random sample of that many rows instead, at the
    rank that keeps the same density (``neighbours * reference / n``, at least 1): O(n * reference * d), not n^2.
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    if n <= 1:
        return np.zeros(n, dtype=np.float32)
    if n <= reference:
        m = min(neighbours, n - 1)
        distances, _ = NearestNeighbors(n_neighbors=m + 1).fit(x).kneighbors(x)
        return distances[:, m].astype(np.float32)
    sample = np.sort(np.random.default_rng(seed).choice(n, reference, replace=False))
    m = max(1, int(round(neighbours * reference / n)))
    distances, found = NearestNeighbors(n_neighbors=m + 1).fit(x[sample]).kneighbors(x)
    in_sample = np.zeros(n, dtype=bool)
    in_sample[sample] = True
    # a sampled row finds itself first: skip that one
    return np.where(in_sample, distances[:, m], distances[:, m - 1]).astype(np.float32)


def proportional(sizes: np.ndarray, quota: int) -> np.ndarray:
    """``quota`` spread over cells in proportion to their sizes (largest remainder; ties to the lower index), never
    more than a cell holds."""
    sizes = np.asarray(sizes, dtype=np.int64)
    quota = min(int(quota), int(sizes.sum()))
    if quota <= 0 or not len(sizes):
        return np.zeros(len(sizes), dtype=np.int64)
    raw = sizes * (quota / sizes.sum())
    shares = np.minimum(np.floor(raw).astype(np.int64), sizes)
    for cell in np.lexsort((np.arange(len(sizes)), -(raw - shares))).tolist() * 2:
        if shares.sum() >= quota:
            break
        if shares[cell] < sizes[cell]:
            shares[cell] += 1
    return shares


def cells(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """k-means cells of equal-ish mass: each row's cell number (``count`` cells, some possibly empty)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if count <= 1 or len(vectors) <= 1:
        return np.zeros(len(vectors), dtype=np.int64)
    count = min(count, len(vectors))
    model = (KMeans(count, n_init=1, max_iter=100, random_state=seed) if len(vectors) <= 20_000
             else MiniBatchKMeans(count, n_init=3, batch_size=4096, random_state=seed))
    return model.fit_predict(vectors).astype(np.int64)


def _pick_in_cell(x: np.ndarray, quota: int, isolated: np.ndarray | None, settings: CurationSettings) -> np.ndarray:
    """``quota`` positions of ``x``'s rows: the most typical first (nearest the mean), then farthest-point picks
    over all but the cell's most isolated rows (see :class:`CurationSettings`)."""
    n = len(x)
    if quota >= n:
        return np.arange(n)
    outliers = int(math.floor(settings.outlier_fraction * max(0, n - 2 * quota)))
    typical = np.arange(n)
    if outliers and isolated is not None:
        typical = np.sort(np.argsort(-isolated, kind="stable")[outliers:])
    core = x[typical]
    centre = core.mean(axis=0)
    start = int(np.argmin(np.einsum("ij,ij->i", core - centre, core - centre)))
    rest = k_center_greedy(core, min(quota, len(core)) - 1, already_selected=np.array([start]), seed=settings.seed)
    return typical[np.concatenate([[start], rest]).astype(np.int64)]


def median_bandwidth(vectors: np.ndarray, reference: int = 2048) -> float:
    """The median squared Euclidean distance between distinct rows (over at most ``reference`` evenly spaced rows):
    the usual bandwidth of a Gaussian kernel when nothing else is known. 1.0 when all rows coincide."""
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) > reference:
        x = x[np.linspace(0, len(x) - 1, reference).astype(np.int64)]
    if len(x) < 2:
        return 1.0
    squared = np.einsum("ij,ij->i", x, x)
    distances = np.maximum(squared[:, None] - 2.0 * (x @ x.T) + squared[None, :], 0.0)
    median = float(np.median(distances[np.triu_indices(len(x), 1)]))
    return median if median > 0 else 1.0


def kernel_herding(vectors: np.ndarray, k: int, *, bandwidth: float | None = None) -> np.ndarray:
    """Kernel herding (Chen, Welling & Smola 2010): ``k`` row indices in pick order, each the row that brings the
    picked set's kernel mean embedding closest to that of all rows.

    Pick ``t + 1`` maximises ``mean_j K(x, x_j) - sum_{s <= t} K(x, x_s) / (t + 1)``: the first term draws picks to
    where the rows are dense (typical images first, outliers last), the second pushes them away from what is
    picked already (diversity). Unlike farthest-point selection, which spends small budgets on the sparse edges of
    the embedding, the picks follow the distribution at every budget. Gaussian kernel ``exp(-|a - b|^2 / h)`` with
    ``h`` = ``bandwidth`` or :func:`median_bandwidth`. Deterministic (ties to the lowest index). O(n^2 d) for the
    kernel means (in blocks, O(n) memory) plus O(n k d) for the picks.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array, got shape {x.shape}")
    n = len(x)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    h = float(bandwidth) if bandwidth is not None else median_bandwidth(x)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive, not {h}")
    squared = np.einsum("ij,ij->i", x, x)
    density = np.empty(n)
    for start in range(0, n, 1024):
        block = x[start:start + 1024]
        distances = np.maximum(squared[start:start + 1024, None] - 2.0 * (block @ x.T) + squared[None, :], 0.0)
        density[start:start + 1024] = np.exp(-distances / h).mean(axis=1)
    attraction = np.zeros(n)
    taken = np.zeros(n, dtype=bool)
    picks = np.empty(k, dtype=np.int64)
    for t in range(k):
        score = density - attraction / (t + 1)
        score[taken] = -np.inf
        pick = int(np.argmax(score))
        picks[t] = pick
        taken[pick] = True
        attraction += np.exp(-np.maximum(squared - 2.0 * (x @ x[pick]) + squared[pick], 0.0) / h)
    return picks


def _interleave(per_cell: list[np.ndarray]) -> np.ndarray:
    """Every cell's first pick, then every cell's second, and so on: a prefix of the order is spread over cells."""
    longest = max((len(p) for p in per_cell), default=0)
    return np.array([p[r] for r in range(longest) for p in per_cell if r < len(p)], dtype=np.int64)


def _herd_in_stratum(x: np.ndarray, quota: int, settings: CurationSettings) -> tuple[np.ndarray, list[str]]:
    n = len(x)
    if quota >= n:
        return np.arange(n), ["all"] * n
    bandwidth = median_bandwidth(x)
    if n <= HERD_ROWS:
        return kernel_herding(x, quota, bandwidth=bandwidth), ["herding"] * quota
    count = min(math.ceil(n / HERD_ROWS), MAX_CELLS)
    cell = cells(x, count, settings.seed)
    shares = proportional(np.bincount(cell, minlength=count), quota)
    per_cell = []
    for c in np.flatnonzero(shares).tolist():
        rows = np.flatnonzero(cell == c)
        per_cell.append(rows[kernel_herding(x[rows], int(shares[c]), bandwidth=bandwidth)])
    return _interleave(per_cell), ["herding"] * quota


def _pick_in_stratum(x: np.ndarray, quota: int, settings: CurationSettings) -> tuple[np.ndarray, list[str]]:
    """``quota`` positions of ``x``'s rows in pick order, and for each how it was picked (see :func:`select`)."""
    if settings.method == "herding":
        return _herd_in_stratum(x, quota, settings)
    n = len(x)
    if quota >= n:
        return np.arange(n), ["all"] * n
    count = min(quota, max(1, n // settings.cell_size), MAX_CELLS)
    cell = cells(x, count, settings.seed)
    sizes = np.bincount(cell, minlength=count)
    shares = proportional(sizes, quota)
    needs_isolation = any(settings.outlier_fraction * (size - 2 * share) >= 1
                          for size, share in zip(sizes.tolist(), shares.tolist(), strict=True) if share)
    isolated = isolation(x, settings.outlier_neighbours, seed=settings.seed) if needs_isolation else None
    rounds: list[list[int]] = []
    for c in np.flatnonzero(shares).tolist():
        rows = np.flatnonzero(cell == c)
        picks = rows[_pick_in_cell(x[rows], int(shares[c]), None if isolated is None else isolated[rows],
                                   settings)]
        for rank, pick in enumerate(picks.tolist()):
            if rank == len(rounds):
                rounds.append([])
            rounds[rank].append(pick)
    # pick order: every cell's typical image, then every cell's first farthest-point pick, and so on
    order = [pick for picks in rounds for pick in picks]
    kinds = ["typical" if rank == 0 else "k-center" for rank, picks in enumerate(rounds) for _ in picks]
    return np.array(order, dtype=np.int64), kinds


def select(eligible: pd.DataFrame, vectors: np.ndarray, settings: CurationSettings) -> pd.DataFrame:
    """The selected rows of ``eligible`` (index labels and row order kept) with a ``selection_reason`` column.

    With no budget (or one at least the pool), everything is selected. Otherwise the budget is spread over strata
    as evenly as their sizes allow (:func:`allocate`); a stratum is the label where known, else the scenario, else
    one ``unlabelled`` stratum. Within a stratum (``settings.method``):

    * ``herding`` (default): :func:`kernel_herding` on the stratum's vectors (inside k-means cells of about
      :data:`HERD_ROWS` images, each with its proportional share, when the stratum is larger);
    * ``k-center``: the stratum is cut into k-means cells (:func:`cells`, ``CurationSettings.cell_size``) with the
      quota spread over them in proportion to their sizes (:func:`proportional`); in each cell the first pick is
      its most typical image, the rest farthest-point picks (:func:`k_center_greedy`) that keep off its most
      isolated images while the share is under half the cell.

    Why herding: ``bench/curation_benchmark.py`` (docs/benchmarks.md) trains a classifier on the subset and scores
    it on a fixed test set, against random subsets of the same size, over several seeds. Farthest-point selection
    over a stratum spends its picks on the sparse edges of the embedding and loses to random where the embedding
    is weak; inside k-means cells it beats random at 10 % but only ties it at 50 %; herding beats random at every
    budget on every data set measured. ``vectors[i]`` is the embedding of ``eligible``'s *i*-th row.
    """
    n = len(eligible)
    x = _as_matrix(vectors, n, "select")
    budget = settings.budget_for(n)
    out = eligible.copy()
    if budget >= n:
        reason = "all eligible (no budget)" if settings.budget is None else f"all eligible (budget {budget} >= {n})"
        out["selection_reason"] = pd.Series([reason] * n, index=out.index, dtype=object)
        return out
    keys = np.array(_stratum_keys(eligible), dtype=object)
    strata = sorted(set(keys.tolist()))
    quotas = allocate({key: int((keys == key).sum()) for key in strata}, budget)
    reasons: dict[int, str] = {}
    for key in strata:
        rows = np.flatnonzero(keys == key)
        quota = quotas[key]
        if quota == 0:
            continue
        if quota >= len(rows):
            for row in rows:
                reasons[int(row)] = f"all {len(rows)} eligible in {key} (within its share of the budget)"
            continue
        picks, kinds = _pick_in_stratum(x[rows], quota, settings)
        for rank, (pick, kind) in enumerate(zip(picks.tolist(), kinds, strict=True), start=1):
            how = {"typical": "the most typical image of its cell",
                   "k-center": "k-center (farthest-point) pick within its cell",
                   "herding": "kernel herding (brings the selection's distribution closest to the stratum's)"}[kind]
            reasons[int(rows[pick])] = f"pick {rank} of {quota} in {key} ({len(rows)} eligible): {how}"
    chosen = np.array(sorted(reasons), dtype=np.int64)
    out = out.iloc[chosen].copy()
    out["selection_reason"] = pd.Series([reasons[int(i)] for i in chosen], index=out.index, dtype=object)
    return out


# ---------------------------------------------------------------------------------------------------------------
# 3. Leak-free splits


def near_pairs(vectors: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``(i, j)``, ``i < j``, of rows whose cosine distance is below ``radius``, with the distance.

    Radius queries with scikit-learn's ``NearestNeighbors`` on the L2-normalised vectors (chunked: memory grows
    with the pairs found, never with n^2); the cosine distance of each candidate is then recomputed exactly and
    compared strictly, so the splitter and :func:`leakage` agree on every pair.
    """
    from sklearn.neighbors import NearestNeighbors

    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    x = _unit(vectors)
    if len(x) < 2 or radius <= 0:
        return empty
    euclidean = math.sqrt(2.0 * radius) * (1 + 1e-4) + 1e-6  # |a - b|^2 = 2 (1 - cos) on the unit sphere
    index = NearestNeighbors(radius=euclidean).fit(x)
    found = index.radius_neighbors(x, return_distance=False)
    counts = np.fromiter((len(f) for f in found), dtype=np.int64, count=len(found))
    if counts.sum() == 0:
        return empty
    i = np.repeat(np.arange(len(x), dtype=np.int64), counts)
    j = np.concatenate(found).astype(np.int64)
    keep = i < j
    i, j = i[keep], j[keep]
    cosine = 1.0 - np.einsum("ij,ij->i", x[i].astype(np.float64), x[j].astype(np.float64))
    close = cosine < radius
    return i[close], j[close], cosine[close]


def _components(n: int, edges_a: np.ndarray, edges_b: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(edges_a), np.int8), (edges_a, edges_b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def _group_edges(groups: list) -> tuple[np.ndarray, np.ndarray]:
    first: dict[object, int] = {}
    a, b = [], []
    for row, group in enumerate(groups):
        if _present(group):
            if group in first:
                a.append(first[group])
                b.append(row)
            else:
                first[group] = row
    return np.array(a, np.int64), np.array(b, np.int64)


def _aligned_groups(groups: pd.Series | None, index: pd.Index, n: int) -> list:
    if groups is None:
        return [None] * n
    if isinstance(groups, pd.Series):
        if groups.index.equals(index):
            return groups.tolist()
        if index.is_unique and groups.index.is_unique:
            return groups.reindex(index).tolist()
    values = list(groups)
    if len(values) != n:
        raise ValueError(f"duplicate groups: {len(values)} values for {n} rows")
    return values


def leak_free_split(selected: pd.DataFrame, vectors: np.ndarray, settings: CurationSettings,
                    duplicate_groups: pd.Series | None = None) -> pd.Series:
    """``train``/``val``/``test`` for each row of ``selected`` (a Series on its index, named ``split``).

    Rows are first joined into clusters: connected components of the graph whose edges are pairs closer than
    ``settings.neighbour_radius`` (cosine; :func:`near_pairs`) and pairs in the same duplicate group
    (``duplicate_groups``, aligned on ``selected``'s index or by position; when omitted, ``selected["group_id"]``
    if there is one). Whole clusters are then assigned, largest first (equal sizes in an order drawn with
    ``settings.seed``), each to the split furthest below its target for the cluster's labels (target = the split's
    fraction of that label's rows; unlabelled rows are one more label). A single cluster larger than a split's
    target still goes to one split: leakage is never traded for fractions.
    """
    n = len(selected)
    if n == 0:
        return pd.Series([], index=selected.index, name="split", dtype=object)
    x = _as_matrix(vectors, n, "leak_free_split")
    if duplicate_groups is None and "group_id" in selected.columns:
        duplicate_groups = selected["group_id"]
    groups = _aligned_groups(duplicate_groups, selected.index, n)
    i, j, _ = near_pairs(x, settings.neighbour_radius)
    ga, gb = _group_edges(groups)
    component = _components(n, np.concatenate([i, ga]), np.concatenate([j, gb]))

    labels = [str(v) if _present(v) else None for v in _column(selected, "label")]
    fractions = np.array(settings.split_fractions, dtype=np.float64)
    fractions = fractions / fractions.sum()
    active = [s for s in range(3) if fractions[s] > 0]
    totals = Counter(labels)
    target = {label: fractions * count for label, count in totals.items()}
    current = {label: np.zeros(3) for label in totals}
    overall_target, overall = fractions * n, np.zeros(3)

    members: dict[int, list[int]] = {}
    for row, c in enumerate(component.tolist()):
        members.setdefault(c, []).append(row)
    clusters = list(members.values())
    tiebreak = np.random.default_rng(settings.seed).permutation(len(clusters))
    order = np.lexsort((tiebreak, -np.array([len(c) for c in clusters], dtype=np.int64)))
    assignment = np.empty(n, dtype=object)
    for c in order.tolist():
        rows = clusters[c]
        counts = Counter(labels[r] for r in rows)
        deficit = np.zeros(3)
        for label, count in counts.items():
            deficit += count * (target[label] - current[label])
        deficit += 1e-6 * (overall_target - overall)  # labels' deficits equal: the overall one decides
        split = max(active, key=lambda s: (round(float(deficit[s]), 9), fractions[s], -s))
        for label, count in counts.items():
            current[label][split] += count
        overall[split] += len(rows)
        for r in rows:
            assignment[r] = SPLITS[split]
    return pd.Series(assignment, index=selected.index, name="split", dtype=object)


def leakage(split: pd.Series, vectors: np.ndarray, groups: pd.Series | None, radius: float) -> dict:
    """What crosses splits: 0 in both counts means leak-free.

    ``duplicate_groups_across_splits``: duplicate groups with members in more than one split;
    ``near_pairs_across_splits``: pairs closer than ``radius`` (cosine) in different splits, out of
    ``near_pairs`` such pairs in all. ``examples``: up to five crossing pairs of index labels (as strings).
    ``groups`` is aligned on ``split``'s index (or by position), ``vectors`` by position.
    """
    n = len(split)
    values = split.tolist()
    cross_groups = 0
    examples: list[list[str]] = []
    seen: dict[object, set] = {}
    for group, value in zip(_aligned_groups(groups, split.index, n), values, strict=True):
        if _present(group):
            seen.setdefault(group, set()).add(value)
    cross_groups = sum(1 for s in seen.values() if len(s) > 1)
    crossing = 0
    pairs = 0
    if vectors is not None and n > 1:
        i, j, _ = near_pairs(_as_matrix(vectors, n, "leakage"), radius)
        pairs = len(i)
        labels = np.array(values, dtype=object)
        across = labels[i] != labels[j]
        crossing = int(across.sum())
        names = split.index
        examples = [[str(names[a]), str(names[b])] for a, b in zip(i[across][:5], j[across][:5], strict=True)]
    return {"duplicate_groups_across_splits": int(cross_groups), "near_pairs_across_splits": crossing,
            "near_pairs": int(pairs), "leak_free": cross_groups == 0 and crossing == 0, "examples": examples}


# ---------------------------------------------------------------------------------------------------------------
# 4. Snapshots


def _manifest_rows(rows: pd.DataFrame) -> list[dict]:
    for column in ("image_id", "uri", "split"):
        if column not in rows.columns:
            raise ValueError(f"a snapshot needs a {column!r} column")
    ids = [str(v) for v in rows["image_id"].tolist()]
    repeated = [k for k, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"image_id must be unique in a snapshot; repeated: {repeated[:3]}")
    entries = [{"image_id": image_id, "uri": str(uri), "sha256": image_id,
                "label": None if not _present(label) else str(label), "split": str(split)}
               for image_id, uri, label, split in zip(ids, rows["uri"].tolist(), _column(rows, "label"),
                                                      rows["split"].tolist(), strict=True)]
    return sorted(entries, key=lambda e: e["image_id"])


def snapshot_manifest(rows: pd.DataFrame) -> tuple[str, bytes]:
    """``(snapshot_id, manifest_bytes)``: the canonical JSON manifest of a dataset version and its address.

    The manifest lists, sorted by ``image_id``, each image's ``image_id``, ``uri``, ``sha256`` (= ``image_id``),
    ``label`` (null when unknown) and ``split``, as UTF-8 JSON with sorted keys and no whitespace or timestamps.
    ``snapshot_id`` is ``"snap-"`` + the first 16 hex digits of the SHA-256 of those bytes: the same images, uris,
    labels and splits give the same id whatever the row order; any change gives another.
    """
    manifest = {"manifest_version": MANIFEST_VERSION, "images": _manifest_rows(rows)}
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return "snap-" + hashlib.sha256(data).hexdigest()[:16], data


# ---------------------------------------------------------------------------------------------------------------
# 5. Exports

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


def safe_folder_name(label: object) -> str:
    """A label as one folder name: path separators and characters Windows refuses become ``_``; never ``.``,
    ``..`` or empty (so a label can never escape its split's folder)."""
    if not _present(label):
        return UNLABELLED
    name = _UNSAFE.sub("_", str(label)).strip().rstrip(".")
    if name in ("", ".", ".."):
        name = "_" + name
    return name[:200]


def _extension(uri: str) -> str:
    name = str(uri).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or not re.fullmatch(r"[A-Za-z0-9]{1,8}", ext):
        return ""
    return "." + ext


def export_path(image_id: str, uri: str, label: object, split: str) -> str:
    """Where :func:`export_imagefolder` puts an image: ``<split>/<label or unlabelled>/<image_id[:16]><ext>``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for image {image_id}: expected one of {SPLITS}")
    return f"{split}/{safe_folder_name(label)}/{str(image_id)[:16]}{_extension(uri)}"


def export_imagefolder(rows: pd.DataFrame, read_bytes: Callable[[str], bytes],
                       write_bytes: Callable[[str, bytes], None], *, verify: bool = True) -> None:
    """Write each row's image to ``<split>/<label or "unlabelled">/<image_id[:16]><original extension>``.

    ``read_bytes(uri)`` fetches an image, ``write_bytes(relative_path, data)`` stores it (paths use ``/``; labels
    are made safe folder names by :func:`safe_folder_name`). With ``verify`` (the default) the bytes read must
    hash to the image's id (its SHA-256): an image changed since ingestion raises ``ValueError`` instead of
    silently entering the dataset version. Rows are written in ``image_id`` order.
    """
    entries = _manifest_rows(rows)
    for entry in entries:
        path = export_path(entry["image_id"], entry["uri"], entry["label"], entry["split"])
        data = read_bytes(entry["uri"])
        if verify and hashlib.sha256(data).hexdigest() != entry["image_id"].lower():
            raise ValueError(f"the bytes at {entry['uri']} no longer hash to image {entry['image_id']}")
        write_bytes(path, data)


CSV_COLUMNS = ("image_id", "uri", "label", "scenario", "split", "snapshot_id", "selection_reason")


def _scalar_columns(rows: pd.DataFrame) -> list[str]:
    first = [c for c in CSV_COLUMNS if c in rows.columns]
    rest = []
    for column in rows.columns:
        if column in first:
            continue
        sample = next((v for v in rows[column].tolist() if v is not None), None)
        if not isinstance(sample, (list, tuple, dict, set, np.ndarray, bytes, bytearray)):
            rest.append(column)
    return first + [str(c) for c in rest]


def export_csv(rows: pd.DataFrame) -> bytes:
    """The rows as UTF-8 CSV (RFC 4180: ``\\r\\n`` line ends, fields holding line breaks quoted).

    Columns: the curated ones first (``image_id, uri, label, scenario, split, snapshot_id, selection_reason`` where
    present), then any other scalar column (vectors and other arrays are left out). Missing values are empty
    cells. Text starting with ``= + - @``, a tab or a carriage return gets a leading ``'`` so a spreadsheet shows
    it instead of running it (formula injection); numbers are written as numbers.
    """
    columns = _scalar_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180; quotes fields holding \r or \n
    writer.writerow([neutralize_formula(c) for c in columns])
    for values in zip(*(rows[c].tolist() for c in columns), strict=True) if columns else []:
        writer.writerow(["" if not _present(v) else neutralize_formula(_clean(v) if not isinstance(v, str)
                                                                       else v) for v in values])
    return buffer.getvalue().encode("utf-8")


def coco_id(image_id: str) -> int:
    """A stable positive integer id for an image: the first 52 bits of the SHA-256 of its ``image_id`` (exact in
    JavaScript's doubles too), the same in every export and every version."""
    return int(hashlib.sha256(str(image_id).encode()).hexdigest()[:13], 16) or 1


def export_coco(rows: pd.DataFrame, width_height: pd.DataFrame) -> dict:
    """A COCO dataset: ``images``, ``categories`` and one image-level classification annotation per labelled image.

    Image ids come from :func:`coco_id` (stable across exports and versions); each image carries ``file_name`` (its
    :func:`export_imagefolder` path), ``width``/``height`` (from ``width_height``: ``image_id, width, height``),
    ``split``, ``uri`` and ``sha256``. Categories are the sorted labels, numbered from 1. An annotation has the id
    of its image, ``bbox = [0, 0, width, height]`` (the full image), its ``area``, ``iscrowd: 0``, the full image
    as its polygon and ``attributes: {"annotation_type": "classification"}``. No timestamps: the same rows give the
    same dict.
    """
    entries = _manifest_rows(rows)
    sizes = width_height.drop_duplicates("image_id", keep="last")
    size_of = {str(i): (int(w), int(h)) for i, w, h in zip(sizes["image_id"].tolist(), sizes["width"].tolist(),
                                                            sizes["height"].tolist(), strict=True)}
    missing = [e["image_id"] for e in entries if e["image_id"] not in size_of]
    if missing:
        raise ValueError(f"no width and height for {len(missing)} image(s), e.g. {missing[0]}")
    labels = sorted({e["label"] for e in entries if e["label"] is not None})
    category = {label: number for number, label in enumerate(labels, start=1)}
    images, annotations, used = [], [], {}
    for entry in entries:
        number = coco_id(entry["image_id"])
        if number in used:
            raise ValueError(f"COCO id collision between {used[number]} and {entry['image_id']}")
        used[number] = entry["image_id"]
        width, height = size_of[entry["image_id"]]
        images.append({"id": number, "file_name": export_path(entry["image_id"], entry["uri"], entry["label"],
                                                              entry["split"]),
                       "width": width, "height": height, "split": entry["split"], "uri": entry["uri"],
                       "sha256": entry["sha256"]})
        if entry["label"] is not None:
            annotations.append({"id": number, "image_id": number, "category_id": category[entry["label"]],
                                "bbox": [0, 0, width, height], "area": width * height, "iscrowd": 0,
                                "segmentation": [[0, 0, width, 0, width, height, 0, height]],
                                "attributes": {"annotation_type": "classification"}})
    snapshot = snapshot_manifest(rows)[0]
    return {"info": {"description": "cv-dataops curated dataset", "version": snapshot},
            "licenses": [], "images": images,
            "categories": [{"id": number, "name": label, "supercategory": ""} for label, number in category.items()],
            "annotations": annotations}


def label_studio_config(labels: Iterable[str]) -> str:
    """A Label Studio labelling config matching :func:`export_label_studio`'s results (one choice per image)."""
    from xml.sax.saxutils import quoteattr

    choices = "".join(f'\n    <Choice value={quoteattr(str(label))}/>' for label in sorted(set(labels)))
    return (f'<View>\n  <Image name="image" value="$image"/>\n  <Choices name="choice" toName="image" '
            f'choice="single">{choices}\n  </Choices>\n</View>\n')


def export_label_studio(rows: pd.DataFrame, *, as_annotations: bool = False,
                        image_url: Callable[[str], str] | None = None) -> list[dict]:
    """Label Studio tasks, one per row, in ``image_id`` order.

    ``data`` holds ``image`` (the uri, or ``image_url(uri)``: Label Studio serves local files only through its
    local-files storage, so pass a function that maps paths to what your instance serves), ``image_id``,
    ``split`` and ``uri``. A row with a known label gets a ``choices`` result (``from_name="choice"``,
    ``to_name="image"``, matching :func:`label_studio_config`) under ``predictions`` (to review; the default) or,
    with ``as_annotations``, under ``annotations`` (to import as ground truth).
    """
    tasks = []
    for entry in _manifest_rows(rows):
        image = image_url(entry["uri"]) if image_url else entry["uri"]
        task: dict = {"data": {"image": image, "image_id": entry["image_id"], "split": entry["split"],
                               "uri": entry["uri"]}}
        if entry["label"] is not None:
            result = [{"from_name": "choice", "to_name": "image", "type": "choices",
                       "value": {"choices": [entry["label"]]}}]
            if as_annotations:
                task["annotations"] = [{"result": result}]
            else:
                task["predictions"] = [{"model_version": "cv-dataops", "result": result}]
        tasks.append(task)
    return tasks
