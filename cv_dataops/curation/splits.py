"""Leak-free splits: train/val/test by whole clusters (duplicate groups and connected near neighbours), and the
leakage count that checks it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np
import pandas as pd

from cv_dataops.core.graph import connected_components
from cv_dataops.curation.rows import aligned_matrix, column_values, present
from cv_dataops.curation.settings import SPLITS, CurationSettings
from cv_dataops.embeddings.neighbors import NeighborIndex


def near_pairs(vectors: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``(i, j)``, ``i < j``, of rows whose cosine distance is below ``radius`` (strictly), with the
    distance: the neighbour engine's radius pairs, so the splitter and :func:`leakage` agree on every pair."""
    if len(vectors) < 2 or radius <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    return NeighborIndex(vectors).radius_pairs(radius, strict=True)


def _group_edges(groups: list) -> tuple[np.ndarray, np.ndarray]:
    first: dict[object, int] = {}
    a, b = [], []
    for row, group in enumerate(groups):
        if present(group):
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
                    duplicate_groups: pd.Series | None = None,
                    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                    previous: Mapping[str, str] | None = None) -> pd.Series:
    """``train``/``val``/``test`` for each row of ``selected`` (a Series on its index, named ``split``).

    Rows are first joined into clusters: connected components of the graph whose edges are pairs closer than
    ``settings.neighbour_radius`` (cosine; :func:`near_pairs`) and pairs in the same duplicate group
    (``duplicate_groups``, aligned on ``selected``'s index or by position; when omitted, ``selected["group_id"]``
    if there is one). Whole clusters are then assigned, largest first (equal sizes in an order drawn with
    ``settings.seed``), each to the split furthest below its target for the cluster's labels (target = the split's
    fraction of that label's rows; unlabelled rows are one more label). A single cluster larger than a split's
    target still goes to one split: leakage is never traded for fractions. ``pairs``: the near pairs (positions
    ``i < j`` in ``selected``) when they are known already (the neighbour graph's kept edges), instead of
    :func:`near_pairs` on ``vectors``. ``previous``: image id -> the split it had in the last version; with it,
    a cluster holding such images takes the split most of them had (ties: the one furthest below its target), and
    only the other clusters are assigned as above, on top of those.
    """
    n = len(selected)
    if n == 0:
        return pd.Series([], index=selected.index, name="split", dtype=object)
    x = aligned_matrix(vectors, n, "leak_free_split")
    if duplicate_groups is None and "group_id" in selected.columns:
        duplicate_groups = selected["group_id"]
    groups = _aligned_groups(duplicate_groups, selected.index, n)
    i, j, _ = pairs if pairs is not None else near_pairs(x, settings.neighbour_radius)
    ga, gb = _group_edges(groups)
    component = connected_components(np.concatenate([i, ga]), np.concatenate([j, gb]), n)

    labels = [str(v) if present(v) else None for v in column_values(selected, "label")]
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
    earlier = _earlier_splits(selected, previous, active, n)
    # clusters holding earlier images first (stable: each part keeps its order), so the new ones fill the targets
    order = sorted(order.tolist(), key=lambda c: all(earlier[r] is None for r in clusters[c]))
    assignment = np.empty(n, dtype=object)
    for c in order:
        rows = clusters[c]
        counts = Counter(labels[r] for r in rows)
        deficit = np.zeros(3)
        for label, count in counts.items():
            deficit += count * (target[label] - current[label])
        deficit += 1e-6 * (overall_target - overall)  # labels' deficits equal: the overall one decides
        votes = Counter(earlier[r] for r in rows if earlier[r] is not None)
        candidates = [s for s in active if votes and votes[s] == max(votes.values())] or active
        split = max(candidates, key=lambda s: (round(float(deficit[s]), 9), fractions[s], -s))
        for label, count in counts.items():
            current[label][split] += count
        overall[split] += len(rows)
        for r in rows:
            assignment[r] = SPLITS[split]
    return pd.Series(assignment, index=selected.index, name="split", dtype=object)


def _earlier_splits(selected: pd.DataFrame, previous: Mapping[str, str] | None, active: list[int],
                    n: int) -> list[int | None]:
    """Per row, the number of the split its image had before (None: new, unknown, or a split now left empty)."""
    if not previous or "image_id" not in selected.columns:
        return [None] * n
    number = {name: s for s, name in enumerate(SPLITS) if s in active}
    return [number.get(previous.get(str(image_id))) for image_id in selected["image_id"].tolist()]


def leakage(split: pd.Series, vectors: np.ndarray, groups: pd.Series | None, radius: float,
            pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict:
    """What crosses splits: 0 in both counts means leak-free.

    ``duplicate_groups_across_splits``: duplicate groups with members in more than one split;
    ``near_pairs_across_splits``: pairs closer than ``radius`` (cosine) in different splits, out of
    ``near_pairs`` such pairs in all. ``examples``: up to five crossing pairs of index labels (as strings).
    ``groups`` is aligned on ``split``'s index (or by position), ``vectors`` by position; ``pairs``, when given,
    are the near pairs (positions) already known, as in :func:`leak_free_split`.
    """
    n = len(split)
    values = split.tolist()
    cross_groups = 0
    examples: list[list[str]] = []
    seen: dict[object, set] = {}
    for group, value in zip(_aligned_groups(groups, split.index, n), values, strict=True):
        if present(group):
            seen.setdefault(group, set()).add(value)
    cross_groups = sum(1 for s in seen.values() if len(s) > 1)
    crossing = 0
    pair_count = 0
    if (vectors is not None or pairs is not None) and n > 1:
        i, j, _ = pairs if pairs is not None else near_pairs(aligned_matrix(vectors, n, "leakage"), radius)
        pair_count = len(i)
        labels = np.array(values, dtype=object)
        across = labels[i] != labels[j]
        crossing = int(across.sum())
        names = split.index
        examples = [[str(names[a]), str(names[b])] for a, b in zip(i[across][:5], j[across][:5], strict=True)]
    return {"duplicate_groups_across_splits": int(cross_groups), "near_pairs_across_splits": crossing,
            "near_pairs": int(pair_count), "leak_free": cross_groups == 0 and crossing == 0, "examples": examples}

