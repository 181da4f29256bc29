"""The one nearest-neighbour engine over embeddings: k-nearest and radius queries by cosine distance.

Every consumer (embedding near duplicates, curation's near pairs and isolation, similarity search, the label
audit, active learning and drift) asks a :class:`NeighborIndex` built on the unit vectors of ONE embedder version
(:mod:`cv_dataops.embeddings.vectors`). Queries of given vectors are exact brute force (at the dimensions embedders
produce, 64 and more, trees do not help): k-nearest candidates from scikit-learn's brute-force search, radius
candidates from float32 matrix products in blocks of at most ``block`` scores (memory bounded, never n^2).
All-pairs questions about the index's own rows (``radius_pairs``, ``kneighbors(None, k)``) are n^2 that way; from
``approximate_from`` rows on (200,000) their candidates come from an HNSW graph instead (:class:`ApproximateIndex`,
faiss-cpu: chosen over usearch by ``bench/neighbour_index.py``), n log n, and a radius query falls back to the exact
search for every row whose candidates were all within the radius (a dense cluster), so only the graph's recall is
approximate, never a cluster's size. Every candidate's distance is then recomputed in float64, so every consumer
sees the same distance for the same pair, whatever the blocks or the path. Ties are broken by row number. Vectors
that are not finite (an undecodable image) or zero (no direction, so no cosine: a blank image some embedders map
to 0) are never anyone's neighbour.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

# Scores (query rows x index rows, float32) computed at once: 64 MB.
BLOCK = 1 << 24
# Slack on a radius for the float32 candidate pass; the float64 distances then decide.
_SLACK = 1e-5
# All-pairs questions over at least this many rows take their candidates from an HNSW graph built for them. Measured
# (bench/neighbour_index.py, every pair within 0.05, graph build included): the exact blocked search is faster up
# to 100,000 rows (2.0 against 11.0 CPU s at 20,000; 58 against 84 at 100,000) and slower at 200,000 (313 against
# 211). (The persisted graph of graph_store starts earlier: it is built once, not every run.)
APPROXIMATE_FROM = 200_000
# Candidates per row a radius query over the graph asks for; a row whose candidates are all within the radius is
# searched again exactly.
RADIUS_CANDIDATES = 32
# Pairs whose float64 distance is computed at once: 8,192 pairs of 512-d vectors are two 32 MB arrays. Converting
# every candidate at once cost 3.3 of a query's 4 s on 200,000 pairs (fresh pages for 2.5 GB), against 0.4 s so.
PAIR_CHUNK = 1 << 13

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array, got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def has_direction(vectors: np.ndarray) -> np.ndarray:
    """Per row: finite and not all zero, i.e. a row a cosine distance is defined for."""
    x = np.asarray(vectors)
    return np.isfinite(x).all(axis=1) & (x != 0).any(axis=1)


def _empty_pairs() -> Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)


class NeighborIndex:
    """Exact neighbours among ``vectors`` (rows of one embedder version; normalised here) by cosine distance,
    ``1 - cos`` (0 = same direction, 2 = opposite).

    ``kneighbors(queries, k)`` -> the k nearest rows of each query; ``query_radius(queries, radius)`` -> every
    (query, row) pair within ``radius``; ``radius_pairs(radius)`` -> every pair of the index's own rows within it.
    """

    def __init__(self, vectors: np.ndarray, *, block: int = BLOCK, approximate_from: int | None = APPROXIMATE_FROM):
        self.vectors_ = unit_rows(vectors)
        self._finite = has_direction(self.vectors_)  # the rows that can be neighbours
        self.block = max(1, int(block))
        self.approximate_from = approximate_from  # None: always exact
        self._graph: ApproximateIndex | None = None

    @property
    def approximate(self) -> bool:
        """Whether all-pairs questions about the index's own rows go through the HNSW graph."""
        return self.approximate_from is not None and len(self) >= self.approximate_from

    def graph(self) -> ApproximateIndex:
        """The HNSW graph over the index's rows, built on first use."""
        if self._graph is None:
            self._graph = ApproximateIndex(self.dimension)
            self._graph.add(self.vectors_, unit=True)
        return self._graph

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
        return pair_distances(lambda r: q[r], rows, lambda c: self.vectors_[c], columns)

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
        query_rows = np.flatnonzero(has_direction(q))
        want = min(k + 1 if own else k, len(fit_rows))
        if k <= 0 or want <= 0 or not len(query_rows):
            return distances, found
        def brute(rows: np.ndarray) -> np.ndarray:
            return fit_rows[NearestNeighbors(n_neighbors=want, algorithm="brute").fit(self.vectors_[fit_rows])
                            .kneighbors(q[rows], return_distance=False)]

        if own and self.approximate:
            candidates = self.graph().candidates(q[query_rows], want)
            short = np.flatnonzero((candidates < 0).any(axis=1))  # the graph found fewer: search those exactly
            if len(short):
                candidates[short] = brute(query_rows[short])
        else:
            candidates = brute(query_rows)
        step = max(1, self.block // max(1, want * self.dimension))
        for start in range(0, len(query_rows), step):
            rows, cand = query_rows[start:start + step], candidates[start:start + step]
            missing = cand < 0  # the graph found fewer than asked
            cand = np.where(missing, rows[:, None], cand)
            exact = self._exact(q, np.repeat(rows, want), cand.ravel()).reshape(cand.shape)
            exact[missing] = np.inf
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
        if self.approximate:
            return self._graph_pairs(radius, strict)
        return self._within(self.vectors_, radius, strict, own=True)

    def _graph_pairs(self, radius: float, strict: bool) -> Pairs:
        """:meth:`radius_pairs` from the graph's candidates (see :func:`graph_radius_pairs`)."""
        def exact(rows: np.ndarray) -> Pairs:
            q, r, d = self._within(self.vectors_[rows], radius, strict, own=False)
            return rows[q], r, d

        return graph_radius_pairs(self.graph(), np.flatnonzero(self._finite), radius, strict=strict, exact=exact)

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
        usable = self._finite[columns] & (self._finite if own else has_direction(q))[rows]
        rows, columns = rows[usable], columns[usable]
        distances = self._exact(q, rows, columns)
        close = distances < radius if strict else distances <= radius
        rows, columns, distances = rows[close], columns[close], distances[close]
        order = np.lexsort((columns, rows)) if own else np.lexsort((columns, distances, rows))
        return rows[order], columns[order], distances[order]


def graph_radius_pairs(graph: ApproximateIndex, rows: np.ndarray, radius: float, *, strict: bool = False,
                       exact: Callable[[np.ndarray], Pairs]) -> Pairs:
    """Every pair ``(low, high, distance)`` (``low < high``, graph row numbers, float64 distances, sorted) within
    ``radius`` that involves one of ``rows``, from the graph's :data:`RADIUS_CANDIDATES` candidates of each. A row
    whose candidates were all within the radius may have more neighbours than that: ``exact(those rows)`` searches
    them exactly (``(rows, other rows, distances)``), so only the graph's recall is approximate."""
    rows = np.asarray(rows, dtype=np.int64)
    want = min(RADIUS_CANDIDATES + 1, len(graph))
    if not len(rows) or want < 2:
        return _empty_pairs()
    candidates = graph.candidates(graph.vectors(rows), want)
    a, b = np.repeat(rows, want), candidates.ravel()
    usable = (b >= 0) & (b != a)
    a, b = a[usable], b[usable]
    distances = _pair_distances(graph, a, b)
    close = distances < radius if strict else distances <= radius
    within = np.zeros(len(graph), dtype=np.int64)
    np.add.at(within, a[close], 1)
    saturated = np.flatnonzero(within >= want - 1)
    pairs_a, pairs_b = [a[close]], [b[close]]
    if len(saturated):
        qa, qb, _ = exact(saturated)
        other = qa != qb
        pairs_a.append(qa[other])
        pairs_b.append(qb[other])
    a, b = np.concatenate(pairs_a), np.concatenate(pairs_b)
    if not len(a):
        return _empty_pairs()
    unique = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    low, high = unique[:, 0].astype(np.int64), unique[:, 1].astype(np.int64)
    return low, high, _pair_distances(graph, low, high)


def pair_distances(left: Callable[[np.ndarray], np.ndarray], rows: np.ndarray,
                   right: Callable[[np.ndarray], np.ndarray], columns: np.ndarray) -> np.ndarray:
    """``1 - left(rows[i]) . right(columns[i])`` in float64 from float32 unit vectors, :data:`PAIR_CHUNK` pairs at a
    time (``left``/``right`` give the vectors of row numbers): the one place every path computes a pair's distance,
    so the same pair gets the same distance, bit for bit, whichever path found it."""
    out = np.empty(len(rows), np.float64)
    for start in range(0, len(rows), PAIR_CHUNK):
        a = left(rows[start:start + PAIR_CHUNK]).astype(np.float64)
        b = right(columns[start:start + PAIR_CHUNK]).astype(np.float64)
        out[start:start + PAIR_CHUNK] = 1.0 - np.einsum("ij,ij->i", a, b)
    return out


def _pair_distances(graph: ApproximateIndex, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine distances of pairs of the graph's rows (see :func:`pair_distances`)."""
    return pair_distances(graph.vectors, a, graph.vectors, b)


class ApproximateIndex:
    """An HNSW graph over unit vectors (faiss-cpu's ``IndexHNSWFlat``, inner product): candidates for the nearest
    rows in about log n per query instead of n. Only candidates: :class:`NeighborIndex` recomputes their distances.
    Rows without a direction (not finite, or zero) are stored as zero vectors and never returned.
    ``to_bytes``/``from_bytes`` persist it; rows are numbered in the order they were added."""

    def __init__(self, dimension: int, *, links: int = 32, construction_breadth: int = 80,
                 search_breadth: int = 64):
        import faiss  # its OpenMP threads follow the process's policy (cv_dataops.core.threads)

        self.dimension = int(dimension)
        self.search_breadth = int(search_breadth)
        self._index = faiss.IndexHNSWFlat(self.dimension, int(links), faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = int(construction_breadth)
        self._index.hnsw.efSearch = self.search_breadth
        self._finite = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, vectors: np.ndarray, *, unit: bool = False) -> None:
        """Append rows (scaled to unit length here, unless ``unit`` says they already are: scaling twice would move
        the last bits, and every path must score a pair the same)."""
        x = np.asarray(vectors, dtype=np.float32) if unit else unit_rows(vectors)
        if len(x) and x.shape[1] != self.dimension:
            raise ValueError(f"vectors have {x.shape[1]} dimensions, the graph {self.dimension}")
        finite = has_direction(x)
        x = np.where(finite[:, None], x, 0.0).astype(np.float32)
        self._index.add(np.ascontiguousarray(x))
        self._finite = np.concatenate([self._finite, finite])

    def candidates(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(queries, k) row numbers, nearest first by the graph; -1 where it found fewer (or a row not finite)."""
        q = np.ascontiguousarray(unit_rows(queries))
        if not len(q) or not len(self):
            return np.full((len(q), max(0, k)), -1, dtype=np.int64)
        self._index.hnsw.efSearch = max(self.search_breadth, int(k))
        _, rows = self._index.search(q, int(k))
        rows = rows.astype(np.int64)
        valid = rows >= 0
        rows[valid & ~self._finite[np.where(valid, rows, 0)]] = -1
        return rows

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored unit vectors of ``rows`` (zero for rows that were not finite), to score candidates exactly."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros((0, self.dimension), np.float32)
        return self._index.reconstruct_batch(rows)

    def to_bytes(self) -> bytes:
        import faiss

        buffer = io.BytesIO()
        np.savez(buffer, graph=faiss.serialize_index(self._index), finite=self._finite,
                 search_breadth=np.int64(self.search_breadth))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ApproximateIndex:
        import faiss

        stored = np.load(io.BytesIO(data))
        graph = faiss.deserialize_index(stored["graph"])
        index = cls.__new__(cls)
        index._index, index._finite = graph, stored["finite"].astype(bool)
        index.dimension, index.search_breadth = int(graph.d), int(stored["search_breadth"])
        return index
