"""The current embedder's vectors as a persisted HNSW graph under the data root, kept in step batch by batch.

A similarity search that scans every vector costs O(n) per query (seconds at a million images); the graph answers
in about log n once loaded. The ``neighbour_index`` asset calls :func:`update_graph` after new batches are embedded:
it adds the vectors of batches the graph does not hold yet (O(batch log n)) and builds the graph again only when a
batch it holds changed (re-embedded) or vanished. Each embedder version has its own graph, one file
(``models/neighbours/<version>.npz``: the graph, the image and batch id of each row, and the fingerprint of each
batch file it was built from), written atomically, so a reader sees a whole graph or the one before; a small
``<version>.batches.json`` beside it, written after it, lets a run with nothing new skip reading the graph.

Readers (:func:`load_graph`) get the graph and which batches it holds as they are now: a batch added or changed
since is not in it, and the search scans those exactly, so an out-of-date graph is slower, never wrong about what
it holds. Deleting ``models/neighbours/`` is always safe: the next run builds it again.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from cv_dataops.embeddings.neighbors import (
    ApproximateIndex,
    NeighborIndex,
    Pairs,
    graph_radius_pairs,
)
from cv_dataops.embeddings.vectors import Vectors

GRAPH_PREFIX = "models/neighbours"
GRAPH_FORMAT = "1"
# Pairs closer than this are kept as edges when their later image is added: the leak-free split reads them
# instead of searching the whole catalog (its radius, 0.05 by default, must not exceed this).
EDGE_RADIUS = 0.1
# A graph is kept from this many vectors on: a batch added costs about what the exact search of every pair did at
# 20,000 (3.1 against 2.8 CPU s), and less beyond (4.3 against 15.4 at 50,000: bench/neighbour_index.py).
GRAPH_FROM = 20_000
_EXACT_CHUNK = 65_536


def graph_key(embedder_version: str) -> str:
    """Where the graph of ``embedder_version`` is kept (the version made safe as a file name)."""
    return f"{GRAPH_PREFIX}/{re.sub(r'[^A-Za-z0-9._-]', '_', embedder_version)}.npz"


@dataclass
class NeighbourGraph:
    """The graph of one embedder version: ``graph`` row *i* is image ``image_ids[i]`` of batch ``batch_ids[i]``;
    ``batches`` maps each batch it holds to the fingerprint of the embeddings file it was read from. ``graph`` is
    None when it was loaded for its kept edges only (``load_graph(..., with_index=False)``)."""

    embedder_version: str
    graph: ApproximateIndex | None
    image_ids: list[str]
    batch_ids: list[str]
    batches: dict[str, str]
    edges: Pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        low, high, distance = self.edges
        np.savez(buffer, graph=np.frombuffer(self.graph.to_bytes(), dtype=np.uint8),
                 image_ids=np.array(self.image_ids, dtype=object).astype(str),
                 batch_ids=np.array(self.batch_ids, dtype=object).astype(str),
                 edge_low=low, edge_high=high, edge_distance=distance,
                 about=np.array(json.dumps({"format": GRAPH_FORMAT, "embedder_version": self.embedder_version,
                                            "batches": self.batches})))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, with_index: bool = True) -> NeighbourGraph | None:
        """None for a file of another format or a torn one (the next update builds it again). Without
        ``with_index`` the HNSW graph itself is not deserialized (most of the time at 100,000 images)."""
        try:
            stored = np.load(io.BytesIO(data), allow_pickle=False)
            about = json.loads(str(stored["about"]))
            if not isinstance(about, dict) or about.get("format") != GRAPH_FORMAT:
                return None
            version, batches = str(about["embedder_version"]), dict(about["batches"])
            graph = ApproximateIndex.from_bytes(stored["graph"].tobytes()) if with_index else None
            image_ids, batch_ids = stored["image_ids"].tolist(), stored["batch_ids"].tolist()
            edges = (stored["edge_low"].astype(np.int64), stored["edge_high"].astype(np.int64),
                     stored["edge_distance"].astype(np.float64))
        except Exception:  # noqa: BLE001 - a torn, foreign or corrupt file (zip, JSON, faiss errors alike) is no graph
            return None
        if len(image_ids) != len(batch_ids) or graph is not None and len(graph) != len(image_ids):
            return None
        return cls(version, graph, image_ids, batch_ids, batches, edges)

    def pairs_among(self, image_ids: list[str], radius: float, *, strict: bool = True) -> Pairs | None:
        """The kept edges among ``image_ids`` closer than ``radius`` (``<=`` unless ``strict``), as positions in
        ``image_ids`` (``i < j``, sorted): what the engine's ``radius_pairs`` on their vectors answers. None when
        the edges cannot answer: a radius above :data:`EDGE_RADIUS`, or an image the graph does not hold."""
        if radius > EDGE_RADIUS:
            return None
        if radius < 0 or (strict and radius <= 0):  # as the engine answers: no pair
            empty = np.zeros(0, np.int64)
            return empty, empty.copy(), np.zeros(0, np.float64)
        rows = dict(zip(self.image_ids, range(len(self.image_ids)), strict=True))
        try:
            row_of = np.array([rows[i] for i in image_ids], dtype=np.int64)
        except KeyError:
            return None
        position = np.full(len(self.image_ids), -1, dtype=np.int64)
        position[row_of] = np.arange(len(row_of))
        low, high, distance = self.edges
        a, b = position[low], position[high]
        keep = (a >= 0) & (b >= 0) & ((distance < radius) if strict else (distance <= radius))
        a, b, distance = a[keep], b[keep], distance[keep]
        i, j = np.minimum(a, b), np.maximum(a, b)
        order = np.lexsort((j, i))
        return i[order], j[order], distance[order]

    def current_batches(self, fingerprints: Mapping[str, str]) -> set[str]:
        """The batches the graph holds as their files are now (``fingerprints``): a search can trust its rows."""
        return {b for b, f in self.batches.items() if fingerprints.get(b) == f}


def _summary_key(embedder_version: str) -> str:
    """A small file beside the graph naming the batches it holds: a run with nothing new reads only this."""
    return graph_key(embedder_version)[:-len(".npz")] + ".batches.json"


def _summary(seen: Mapping[str, str], rows: int) -> str:
    """The embeddings files (as they were) the last update looked at, held or not, and the graph's rows."""
    return json.dumps({"format": GRAPH_FORMAT, "seen": dict(seen), "rows": rows})


def load_graph(storage, embedder_version: str, *, with_index: bool = True) -> NeighbourGraph | None:
    try:
        data = storage.read_bytes(graph_key(embedder_version))
    except FileNotFoundError:
        return None
    graph = NeighbourGraph.from_bytes(data, with_index=with_index)
    return graph if graph is not None and graph.embedder_version == embedder_version else None


@dataclass(frozen=True)
class GraphUpdate:
    """What :func:`update_graph` did: ``rebuilt`` (and why), the batches added, the rows now and added."""

    embedder_version: str | None
    rebuilt: bool
    reason: str
    batches_added: list[str]
    rows: int
    rows_added: int


def update_graph(storage, embedder_version: str | None, fingerprints: Mapping[str, str],
                 read_batch: Callable[[str], Vectors], *, catalog_rows: int,
                 min_rows: int = GRAPH_FROM) -> GraphUpdate:
    """Bring the graph of ``embedder_version`` in step with the embeddings files (``fingerprints``: batch ->
    version of its file), reading a batch's vectors of that version with ``read_batch`` only when the graph
    lacks it. Nothing is written when nothing changed. No graph is started while the catalog holds fewer than
    ``min_rows`` vectors of the version (``catalog_rows``): below that the engine's exact search is as fast."""
    if embedder_version is None:
        return GraphUpdate(None, False, "nothing is embedded yet", [], 0, 0)
    try:  # advisory (written after the graph): when it names exactly these files, nothing needs reading
        summary = json.loads(storage.read_text(_summary_key(embedder_version)))
        if summary.get("format") == GRAPH_FORMAT and summary.get("seen") == dict(fingerprints):
            return GraphUpdate(embedder_version, False, "", [], int(summary["rows"]), 0)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        pass
    graph = load_graph(storage, embedder_version)
    if graph is None and catalog_rows < min_rows:
        return GraphUpdate(embedder_version, False, f"no graph below {min_rows:,} vectors ({catalog_rows:,} now): "
                           f"searches are exact", [], 0, 0)
    changed = [] if graph is None else sorted(b for b, f in graph.batches.items() if fingerprints.get(b) != f)
    reason = ""
    if graph is None:
        reason = "no graph of this embedder version yet"
    elif changed:
        reason = f"{len(changed)} batch(es) changed or vanished since they were added (e.g. {changed[0]})"
    if reason:
        graph = None
    todo = sorted(fingerprints) if graph is None else sorted(set(fingerprints) - set(graph.batches))
    added_rows, added = 0, []
    first_new = 0 if graph is None else len(graph.image_ids)
    for batch in todo:
        vectors = read_batch(batch)
        if not len(vectors):
            continue  # no vector of this version (yet): not held, and looked at again once it is re-embedded
        if graph is None:
            graph = NeighbourGraph(embedder_version, ApproximateIndex(vectors.dimension), [], [], {})
        graph.graph.add(vectors.matrix)
        graph.image_ids.extend(vectors.image_ids)
        graph.batch_ids.extend(vectors.batch_ids)
        graph.batches[batch] = fingerprints[batch]
        added_rows += len(vectors)
        added.append(batch)
    if graph is None:
        return GraphUpdate(embedder_version, bool(reason), reason or "no vectors of this version", [], 0, 0)
    if added or reason:
        graph.edges = _merge(graph.edges, _new_edges(graph.graph, np.arange(first_new, len(graph.image_ids))))
        storage.write_bytes(graph_key(embedder_version), graph.to_bytes())
    storage.write_text(_summary_key(embedder_version), _summary(fingerprints, len(graph.image_ids)))
    return GraphUpdate(embedder_version, bool(reason), reason, added, len(graph.image_ids), added_rows)


def _new_edges(graph: ApproximateIndex, rows: np.ndarray) -> Pairs:
    """The pairs within :data:`EDGE_RADIUS` that involve ``rows`` (just added): each pair is found when its later
    image is added, so the edges of earlier rows stand. A dense neighbourhood is searched exactly, a block of the
    stored vectors at a time."""
    def exact(saturated: np.ndarray) -> Pairs:
        queries = graph.vectors(saturated)
        found_a, found_b, found_d = [], [], []
        for start in range(0, len(graph), _EXACT_CHUNK):
            block = graph.vectors(np.arange(start, min(len(graph), start + _EXACT_CHUNK)))
            q, r, d = NeighborIndex(block, approximate_from=None).query_radius(queries, EDGE_RADIUS)
            found_a.append(saturated[q])
            found_b.append(r + start)
            found_d.append(d)
        return np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_d)

    return graph_radius_pairs(graph, rows, EDGE_RADIUS, exact=exact)


def _merge(old: Pairs, new: Pairs) -> Pairs:
    low = np.concatenate([old[0], new[0]])
    high = np.concatenate([old[1], new[1]])
    distance = np.concatenate([old[2], new[2]])
    if not len(low):
        return low.astype(np.int64), high.astype(np.int64), distance.astype(np.float64)
    _, first = np.unique(np.stack([low, high], axis=1), axis=0, return_index=True)
    return low[first], high[first], distance[first]


@dataclass
class KeptPairs:
    """The near pairs a stage can take from the graph's kept edges instead of searching: call it with image ids
    and a radius (None: the edges cannot answer, search instead). ``used`` says, after the calls, where the pairs
    of the last call came from, in words (for the asset's metadata)."""

    graph: NeighbourGraph | None
    why_not: str = ""
    used: str = ""

    def __call__(self, image_ids: list, radius: float) -> Pairs | None:
        pairs = self.graph.pairs_among(image_ids, radius) if self.graph is not None else None
        if pairs is None:
            self.used = "searched by the neighbour engine: " + (self.why_not or (
                f"the radius {radius} is above the kept edges' {EDGE_RADIUS}" if radius > EDGE_RADIUS
                else "some images are not in the neighbour graph"))
        else:
            self.used = f"the neighbour graph's kept edges ({len(self.graph.image_ids):,} images)"
        return pairs


def kept_pairs(storage, embedder_version: str | None, fingerprints: Mapping[str, str]) -> KeptPairs:
    """The graph's edges, unless a batch it holds changed since (its edges may be stale): then the reason."""
    graph = load_graph(storage, embedder_version, with_index=False) if embedder_version else None
    if graph is None:
        return KeptPairs(None, f"no neighbour graph (one is kept from {GRAPH_FROM:,} vectors)")
    stale = set(graph.batches) - graph.current_batches(fingerprints)
    if stale:
        return KeptPairs(None, f"{len(stale)} batch(es) in the neighbour graph changed since it was updated "
                               f"(neighbour_index has not run since)")
    return KeptPairs(graph)  # images of batches it does not hold yet make it answer None (then the engine searches)
