"""Selection: spending a budget on the most useful images (kernel herding or k-center greedy, balanced over
strata). Plain functions of numpy arrays, reusable beyond curation (active learning picks with them too)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cv_dataops.curation.rows import UNLABELLED, aligned_matrix, column_values, present
from cv_dataops.curation.settings import CurationSettings
from cv_dataops.embeddings.clustering import kmeans_labels
from cv_dataops.embeddings.neighbors import NeighborIndex

# At most this many k-means cells per stratum: bounds selection's cost on large strata (more picks per cell).
MAX_CELLS = 1024
# Kernel herding runs on at most this many rows at once; a larger stratum is herded inside k-means cells of about
# this size (each with its proportional share), which keeps the cost at O(HERD_ROWS * quota * d).
HERD_ROWS = 4096



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
    for label, scenario in zip(column_values(frame, "label"), column_values(frame, "scenario"), strict=True):
        if present(label):
            keys.append(f"label={label}")
        elif present(scenario):
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
    """Each row's distance to its ``neighbours``-th nearest other row (large = isolated, an outlier): the Euclidean
    distance between the rows as unit vectors, ``sqrt(2 * cosine distance)``.

    Above ``reference`` rows the neighbours are looked for in a random sample of that many rows instead, at the
    rank that keeps the same density (``neighbours * reference / n``, at least 1): O(n * reference * d), not n^2.
    """
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    if n <= 1:
        return np.zeros(n, dtype=np.float32)
    if n <= reference:
        m = min(neighbours, n - 1)
        cosine = NeighborIndex(x).kneighbors(k=m)[0][:, m - 1]
    else:
        sample = np.sort(np.random.default_rng(seed).choice(n, reference, replace=False))
        m = max(1, int(round(neighbours * reference / n)))
        distances = NeighborIndex(x[sample]).kneighbors(x, m + 1)[0]
        in_sample = np.zeros(n, dtype=bool)
        in_sample[sample] = True
        # a sampled row finds itself first: skip that one
        cosine = np.where(in_sample, distances[:, m], distances[:, m - 1])
    return np.sqrt(np.maximum(2.0 * cosine, 0.0)).astype(np.float32)


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


def shares_keeping_every_part(sizes: np.ndarray, quota: int) -> np.ndarray:
    """:func:`proportional` shares of ``quota``, except that while the quota allows every non-empty part gets at
    least one (taken from the part with the largest share, ties to the lower index): a rare scenario (night, fog, a
    new camera) is what a team curates for, and proportional rounding would give it nothing at small budgets."""
    sizes = np.asarray(sizes, dtype=np.int64)
    shares = proportional(sizes, quota)
    for part in np.flatnonzero((sizes > 0) & (shares == 0)).tolist():
        donor = int(np.argmax(np.where(shares > 1, shares, -1)))
        if shares[donor] <= 1:
            break  # fewer picks than parts: the largest parts keep theirs
        shares[donor] -= 1
        shares[part] += 1
    return shares


def _scenario_parts(scenarios: list, quota: int) -> list[tuple[np.ndarray, int, str]]:
    """A labelled stratum's rows by scenario, each with its share of ``quota`` (:func:`shares_keeping_every_part`)
    and its name; rows without a scenario form one part of their own."""
    names = [f"scenario={int(value)}" if present(value) else "no scenario" for value in scenarios]
    parts = sorted(set(names))
    rows = [np.flatnonzero(np.array(names, dtype=object) == part) for part in parts]
    shares = shares_keeping_every_part(np.array([len(r) for r in rows]), quota)
    return [(r, int(share), part) for r, share, part in zip(rows, shares.tolist(), parts, strict=True)]


def cells(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """k-means cells of equal-ish mass: each row's cell number (``count`` cells, some possibly empty)."""
    if count <= 1 or len(vectors) <= 1:
        return np.zeros(len(vectors), dtype=np.int64)
    return kmeans_labels(vectors, min(count, len(vectors)), seed=seed, n_init=1, max_iter=100)


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


_HOW_PICKED = {"typical": "the most typical image of its cell",
               "k-center": "k-center (farthest-point) pick within its cell",
               "herding": "kernel herding (brings the selection's distribution closest to the stratum's)"}


def _pick_part(x: np.ndarray, rows: np.ndarray, quota: int, name: str, settings: CurationSettings,
               reasons: dict[int, str]) -> None:
    """Pick ``quota`` of ``rows`` (a stratum, or one scenario of it) into ``reasons`` (row -> why picked)."""
    if quota <= 0:
        return
    if quota >= len(rows):
        for row in rows:
            reasons[int(row)] = f"all {len(rows)} eligible in {name} (within its share of the budget)"
        return
    picks, kinds = _pick_in_stratum(x[rows], quota, settings)
    for rank, (pick, kind) in enumerate(zip(picks.tolist(), kinds, strict=True), start=1):
        reasons[int(rows[pick])] = f"pick {rank} of {quota} in {name} ({len(rows)} eligible): {_HOW_PICKED[kind]}"


def select(eligible: pd.DataFrame, vectors: np.ndarray, settings: CurationSettings) -> pd.DataFrame:
    """The selected rows of ``eligible`` (index labels and row order kept) with a ``selection_reason`` column.

    With no budget (or one at least the pool), everything is selected. Otherwise images of batches that drifted
    (a true ``drifted_batch``) first take up to ``settings.drift_share`` of the budget, picked among themselves as
    below; the rest of the budget is spread over the remaining images' strata
    as evenly as their sizes allow (:func:`allocate`); a stratum is the label where known, else the scenario, else
    one ``unlabelled`` stratum. A labelled stratum's quota is shared over its scenarios in proportion to their
    sizes, every scenario it holds getting at least one pick while the quota allows
    (:func:`shares_keeping_every_part`): night, fog or a new camera stay in the selection. Within a stratum (or a
    scenario of one; ``settings.method``):

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
    x = aligned_matrix(vectors, n, "select")
    budget = settings.budget_for(n)
    out = eligible.copy()
    if budget >= n:
        reason = "all eligible (no budget)" if settings.budget is None else f"all eligible (budget {budget} >= {n})"
        out["selection_reason"] = pd.Series([reason] * n, index=out.index, dtype=object)
        return out
    reasons: dict[int, str] = {}
    drifted = np.flatnonzero([present(v) and bool(v) for v in column_values(eligible, "drifted_batch")])
    if len(drifted) and settings.drift_share > 0:
        _pick_part(x, drifted, min(len(drifted), int(budget * settings.drift_share)), "the batches that drifted",
                   settings, reasons)
    taken = np.zeros(n, dtype=bool)
    taken[list(reasons)] = True
    budget -= len(reasons)
    keys = np.array(_stratum_keys(eligible), dtype=object)
    strata = sorted(set(keys[~taken].tolist()))
    quotas = allocate({key: int(((keys == key) & ~taken).sum()) for key in strata}, budget)
    scenarios = np.array(column_values(eligible, "scenario"), dtype=object)
    for key in strata:
        rows = np.flatnonzero((keys == key) & ~taken)
        parts = [(rows, quotas[key], key)]
        if key.startswith("label=") and any(present(value) for value in scenarios[rows]):
            parts = [(rows[part], share, f"{key}, {name}")
                     for part, share, name in _scenario_parts(scenarios[rows].tolist(), quotas[key])]
        for part_rows, quota, name in parts:
            _pick_part(x, part_rows, quota, name, settings, reasons)
    chosen = np.array(sorted(reasons), dtype=np.int64)
    out = out.iloc[chosen].copy()
    out["selection_reason"] = pd.Series([reasons[int(i)] for i in chosen], index=out.index, dtype=object)
    return out

