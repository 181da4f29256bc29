"""The one nearest-neighbour engine over embeddings: exact k-nearest and radius queries by cosine distance.

Every consumer (embedding near duplicates, curation's near pairs and isolation, similarity search, and next the
label audit, active learning and drift) asks a :class:`NeighborIndex` built on the unit vectors of ONE embedder
version (:mod:`cv_dataops.embeddings.vectors`). Exact brute force (at the dimensions embedders
produce, 64 and more, trees do not help): k-nearest candidates from scikit-learn's multi-threaded brute-force search,
radius candidates from float32 matrix products in blocks of at most ``block`` scores (memory bounded, never n^2).
Every candidate's distance is then recomputed in float64, so every consumer sees the same distance for the same
pair, whatever the blocks. Ties are broken by row number. Vectors that are not finite (an
undecodable image) are never anyone's neighbour.
"""

from __future__ import annotations

import numpy as np

# Scores (query rows x index rows, float32) computed at once: 64 MB.
BLOCK = 1 << 24
# Slack on a radius for the float32 candidate pass; the float64 distances then decide.
_SLACK = 1e-5

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array, got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _empty_pairs() -> Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)


class NeighborIndex:
    """Exact neighbours among ``vectors`` (rows of one embedder version; normalised here) by cosine distance,
    ``1 - cos`` (0 = same direction, 2 = opposite).

    ``kneighbors(queries, k)`` -> the k nearest rows of each query; ``query_radius(queries, radius)`` -> every
    (query, row) pair within ``radius``; ``radius_pairs(radius)`` -> every pair of the index's own rows within it.
    """

    def __init__(self, vectors: np.ndarray, *, block: int = BLOCK):
        self.vectors_ = unit_rows(vectors)
        self._finite = np.isfinite(self.vectors_).all(axis=1)
        self.block = max(1, int(block))

    def __len__(self) -> int:
        return len(self.vectors_)

    @property
    def dimension(self) -> int:
        return int(self.vectors_.shape[1])

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        q = unit_rows(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if len(q) and q.shape[1] != self.dimension:
            raise ValueError(f"queries have {q.shape[1]} dimensions, the index {self.dimension}: vectors of two "
                             f"embedder versions do not compare")
        return q

    def _exact(self, q: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return 1.0 - np.einsum("ij,ij->i", q[rows].astype(np.float64), self.vectors_[columns].astype(np.float64))

    def kneighbors(self, queries: np.ndarray | None = None, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, rows)``, each (queries, k'), nearest first (ties: the lower row), with ``k' = min(k,
        candidates)``. ``queries=None`` asks for the index's own rows, each leaving itself out (as scikit-learn's
        ``kneighbors()``). A neighbour that is not finite has distance ``inf``.

        Candidates come from scikit-learn's brute-force k-nearest search (its multi-threaded ``ArgKmin``, on the
        unit vectors: Euclidean order is cosine order there), then are ranked by their float64 cosine distance."""
        from sklearn.neighbors import NearestNeighbors

        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        own = queries is None
        q = self.vectors_ if own else self._queries(queries)
        k = min(int(k), len(self) - 1 if own else len(self))
        distances = np.full((len(q), max(k, 0)), np.inf)
        found = np.zeros((len(q), max(k, 0)), dtype=np.int64)
        fit_rows = np.flatnonzero(self._finite)
        query_rows = np.flatnonzero(np.isfinite(q).all(axis=1))
        want = min(k + 1 if own else k, len(fit_rows))
        if k <= 0 or want <= 0 or not len(query_rows):
            return distances, found
        candidates = fit_rows[NearestNeighbors(n_neighbors=want, algorithm="brute").fit(self.vectors_[fit_rows])
                              .kneighbors(q[query_rows], return_distance=False)]
        step = max(1, self.block // max(1, want * self.dimension))
        for start in range(0, len(query_rows), step):
            rows, cand = query_rows[start:start + step], candidates[start:start + step]
            exact = self._exact(q, np.repeat(rows, want), cand.ravel()).reshape(cand.shape)
            if own:
                exact[cand == rows[:, None]] = np.inf
            order = np.lexsort((cand, exact), axis=1)[:, :k]
            width = order.shape[1]
            distances[rows, :width] = np.take_along_axis(exact, order, axis=1)
            found[rows, :width] = np.take_along_axis(cand, order, axis=1)
        return distances, found

    def query_radius(self, queries: np.ndarray, radius: float, *, strict: bool = False) -> Pairs:
        """``(query_rows, rows, distances)`` of every pair at distance ``<= radius`` (``< radius`` with
        ``strict``), sorted by query row, then distance, then row."""
        q = self._queries(queries)
        if not len(q) or not len(self) or radius < 0 or (strict and radius <= 0):
            return _empty_pairs()
        return self._within(q, radius, strict, own=False)

    def radius_pairs(self, radius: float, *, strict: bool = False) -> Pairs:
        """``(i, j, distances)`` of every pair of the index's own rows, ``i < j``, at distance ``<= radius``
        (``< radius`` with ``strict``), sorted by ``i`` then ``j``. Memory grows with the pairs found, not n^2."""
        if len(self) < 2 or radius < 0 or (strict and radius <= 0):
            return _empty_pairs()
        return self._within(self.vectors_, radius, strict, own=True)

    def _within(self, q: np.ndarray, radius: float, strict: bool, own: bool) -> Pairs:
        n = len(self)
        step = max(1, self.block // max(1, n))
        found_q, found_r = [], []
        for start in range(0, len(q), step):
            first = start if own else 0  # own pairs: only the upper triangle (j > i)
            scores = 1.0 - q[start:start + step] @ self.vectors_[first:].T
            rows, columns = np.nonzero(scores <= radius + _SLACK)
            rows, columns = rows + start, columns + first
            if own:
                keep = rows < columns
                rows, columns = rows[keep], columns[keep]
            found_q.append(rows)
            found_r.append(columns)
        rows, columns = np.concatenate(found_q).astype(np.int64), np.concatenate(found_r).astype(np.int64)
        distances = self._exact(q, rows, columns)
        close = distances < radius if strict else distances <= radius
        rows, columns, distances = rows[close], columns[close], distances[close]
        order = np.lexsort((columns, rows)) if own else np.lexsort((columns, distances, rows))
        return rows[order], columns[order], distances[order]
