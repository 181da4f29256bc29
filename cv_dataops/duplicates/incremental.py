"""Adding batches to the duplicate groups without comparing all pairs again: state in, state out, in two passes.

* The **hash pass** (:func:`update_hash_duplicates`, asset ``image_duplicates``) finds exact and perceptual-hash
  pairs. It needs only the quality stage's hashes, so it never waits for embeddings.
* The **embedding pass** (:func:`update_embedding_duplicates`, asset ``embedding_duplicates``) finds the pairs the
  hashes miss (flips, larger crops) by embedding distance, when the current embedder's vectors exist.

Each pass looks up only the images of batches it has not looked up yet (or whose rows changed), keeps every pair
it found before, and has its own state (:class:`DuplicateState`, :class:`EmbeddingDuplicateState`) naming
*batches* (with a fingerprint of what was read), never images, so it stays a few bytes per batch. The groups
(:func:`group_pairs`) are made from the pairs of both passes: those the embedding pass recorded so far join the
hash pairs (a pair both found stays the hashes').

:class:`HashRowStore` keeps, per batch, the few quality columns duplicates need (:data:`HASH_COLUMNS`) beside the
catalog as one uncompressed numpy file (about 210 bytes an image, read without decoding or a Python object per
image), tagged with the fingerprint of the quality file it came from: a run reads the new batches' quality rows
once. What a run still reads for the whole catalog is what exact lookups need: the hash rows (for the Hamming
index over every image's two 64-bit hashes) and, in the embedding pass, every vector of the current embedder,
one batch file at a time (memory holds the new batch's vectors and one other batch's).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from cv_dataops.core.storage import Storage
from cv_dataops.duplicates.index import (
    GROUP_COLUMNS,
    DuplicatePair,
    DuplicateSettings,
    EmbeddingDuplicateSettings,
    HashCodes,
    IdLookup,
    as_codes,
    as_ids,
    as_text,
    find_embedding_pairs_in_chunks,
    find_pairs,
    group_duplicates,
)
from cv_dataops.quality.gating import batch_is_usable

# The quality columns the duplicates stage needs: hashes to find pairs; size, JPEG quality, batch and sharpness to
# choose the member to keep; the unusable flag for the one "unusable batch" rule; the version for a full rebuild
# when metrics change.
HASH_COLUMNS = ["image_id", "batch_id", "pixel_hash", "phash", "dhash", "width", "height", "jpeg_quality",
                "blurry_score", "is_unusable", "quality_version"]
STATE_KEY = "state/image_duplicates.json"
EMBEDDING_STATE_KEY = "state/embedding_duplicates.json"
HASH_ROWS_PREFIX = "state/image_duplicates/hashes/"


def _json(data: dict) -> str:
    return json.dumps(data, sort_keys=True)


@dataclass(frozen=True)
class DuplicateState:
    """What the hash pass looked up: ``looked_up`` maps a batch to the fingerprint of its hash rows looked up. A
    change of quality versions or hash settings starts afresh."""

    quality_versions: tuple[str, ...] = ()
    settings: str = ""
    looked_up: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return _json({**asdict(self), "quality_versions": list(self.quality_versions)})

    @classmethod
    def from_json(cls, text: str) -> DuplicateState:
        data = json.loads(text)
        if "looked_up" not in data:  # a state of the per-image kind (before batches): start afresh
            return cls()
        return cls(tuple(data.get("quality_versions", ())), data.get("settings", ""), dict(data["looked_up"]))


@dataclass(frozen=True)
class EmbeddingDuplicateState:
    """What the embedding pass looked up: ``looked_up`` maps a batch to the fingerprints of its vectors and of
    its hash rows looked up, ``vectors`` counts each batch's vectors looked up. ``key`` (embedder version,
    embedding settings, quality versions) changing drops the embedding pairs and looks every batch up again."""

    key: dict = field(default_factory=dict)
    looked_up: dict[str, str] = field(default_factory=dict)
    vectors: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return _json(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EmbeddingDuplicateState:
        data = json.loads(text)
        return cls(dict(data.get("key", {})), dict(data.get("looked_up", {})),
                   {k: int(v) for k, v in data.get("vectors", {}).items()})


# ------------------------------------------------------------------------------------------------------------
# Hash rows: aligned numpy arrays, no Python object per image.

_NUMERIC = {"width": np.int32, "height": np.int32, "jpeg_quality": np.float32, "blurry_score": np.float64,
            "is_unusable": np.bool_}


@dataclass(frozen=True)
class HashRows:
    """:data:`HASH_COLUMNS` of many images as aligned arrays (ids, batch ids, pixel hashes and versions as numpy
    bytes; ``jpeg_quality`` NaN where the file is not a JPEG)."""

    batch_id: np.ndarray
    codes: HashCodes
    width: np.ndarray
    height: np.ndarray
    jpeg_quality: np.ndarray
    blurry_score: np.ndarray
    is_unusable: np.ndarray
    quality_version: np.ndarray

    def __len__(self) -> int:
        return len(self.batch_id)

    @property
    def image_id(self) -> np.ndarray:
        return self.codes.image_id

    @property
    def lookup(self) -> IdLookup:
        return self.codes.lookup

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> HashRows:
        if frame.empty:
            return cls.empty()
        codes = HashCodes(as_ids(frame["image_id"]), as_ids(frame["pixel_hash"]), as_codes(frame["phash"]),
                          as_codes(frame["dhash"]))
        return cls(as_ids(frame["batch_id"]), codes, **{name: _column(frame, name, dtype)
                                                          for name, dtype in _NUMERIC.items()},
                   quality_version=as_ids(frame["quality_version"]))

    @classmethod
    def empty(cls) -> HashRows:
        return cls(np.empty(0, "S1"), HashCodes.empty(), *(np.empty(0, t) for t in _NUMERIC.values()),
                   np.empty(0, "S1"))

    def take(self, rows) -> HashRows:
        return HashRows(self.batch_id[rows], self.codes.take(rows), self.width[rows], self.height[rows],
                        self.jpeg_quality[rows], self.blurry_score[rows], self.is_unusable[rows],
                        self.quality_version[rows])

    @staticmethod
    def concat(parts: Sequence[HashRows]) -> HashRows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return HashRows.empty()
        return HashRows(np.concatenate([p.batch_id for p in parts]), HashCodes.concat([p.codes for p in parts]),
                        *(np.concatenate([getattr(p, name) for p in parts]) for name in _NUMERIC),
                        np.concatenate([p.quality_version for p in parts]))

    def in_batches(self, batches) -> np.ndarray:
        return np.isin(self.batch_id, as_ids(sorted(batches))) if len(batches) else np.zeros(len(self), bool)

    def frame(self) -> pd.DataFrame:
        """The rows as a frame with :data:`HASH_COLUMNS` (hashes as uint64, text as str, ``jpeg_quality`` float,
        NaN where not a JPEG)."""
        text = {name: [as_text(v) for v in values.tolist()] for name, values in
                (("image_id", self.codes.image_id), ("batch_id", self.batch_id),
                 ("pixel_hash", self.codes.pixel_hash), ("quality_version", self.quality_version))}
        return pd.DataFrame({"image_id": text["image_id"], "batch_id": text["batch_id"],
                             "pixel_hash": text["pixel_hash"], "phash": self.codes.phash, "dhash": self.codes.dhash,
                             "width": self.width, "height": self.height, "jpeg_quality": self.jpeg_quality,
                             "blurry_score": self.blurry_score, "is_unusable": self.is_unusable,
                             "quality_version": text["quality_version"]})[HASH_COLUMNS]

    def to_bytes(self, fingerprint: str) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, fingerprint=np.array(fingerprint.encode()), batch_id=self.batch_id,
                 image_id=self.codes.image_id, pixel_hash=self.codes.pixel_hash, phash=self.codes.phash,
                 dhash=self.codes.dhash, quality_version=self.quality_version,
                 **{name: getattr(self, name) for name in _NUMERIC})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[HashRows, str]:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            rows = cls(arrays["batch_id"], HashCodes(arrays["image_id"], arrays["pixel_hash"], arrays["phash"],
                                                     arrays["dhash"]),
                       *(arrays[name] for name in _NUMERIC), arrays["quality_version"])
            return rows, arrays["fingerprint"].item().decode()


def _column(frame: pd.DataFrame, name: str, dtype) -> np.ndarray:
    floating = np.issubdtype(dtype, np.floating)
    if name not in frame.columns:
        return np.full(len(frame), np.nan if floating else 0, dtype)
    values = pd.to_numeric(frame[name])
    return values.astype("float64").to_numpy().astype(dtype) if floating else values.to_numpy(dtype=dtype)


def _as_rows(hashes: pd.DataFrame | HashRows) -> HashRows:
    return hashes if isinstance(hashes, HashRows) else HashRows.from_frame(hashes)


def _usable(rows: HashRows, fingerprints: Mapping[str, str], max_unusable_rate: float
            ) -> tuple[HashRows, set[str], list[str]]:
    """The rows of the batches the one unusable-batch rule lets in, the blocked batches, the batches present."""
    blocked = set()
    if len(rows):
        order = np.argsort(rows.batch_id, kind="stable")
        names, starts = np.unique(rows.batch_id[order], return_index=True)
        for name, flags in zip(names.tolist(), np.split(rows.is_unusable[order], starts[1:])):
            if not batch_is_usable(pd.Series(flags), max_unusable_rate):
                blocked.add(as_text(name))
    usable = rows.take(~rows.in_batches(blocked)) if blocked else rows
    return usable, blocked, sorted(b for b in fingerprints if b not in blocked)


def _versions(rows: HashRows) -> tuple[str, ...]:
    return tuple(sorted(as_text(v) for v in np.unique(rows.quality_version).tolist()))


# ------------------------------------------------------------------------------------------------------------
# The hash pass.

@dataclass
class HashUpdate:
    pairs: list[DuplicatePair]  # found by hash
    state: DuplicateState
    rows: HashRows  # the usable rows: what the pairs and groups may name
    images_indexed: int
    images_looked_up: int
    full_rebuild: bool
    batches_left_out: list[str]


def update_hash_duplicates(state: DuplicateState | None, hashes: pd.DataFrame | HashRows,
                           fingerprints: Mapping[str, str], *,
                           previous_pairs: pd.DataFrame | Sequence[DuplicatePair] | None = None,
                           settings: DuplicateSettings | None = None,
                           max_unusable_rate: float = 0.5) -> HashUpdate:
    """The exact and perceptual-hash pairs once the batches in ``hashes`` are all looked up.

    ``hashes`` has :data:`HASH_COLUMNS` for every batch's images; ``fingerprints`` says, per batch, which version
    of its rows that is (a batch whose fingerprint differs from the state's is looked up again). Batches the
    unusable-batch rule blocks are left out. Only images of batches not looked up before are queried, against
    every image; earlier pairs found by hash (``previous_pairs``) are kept.
    """
    state = state or DuplicateState()
    settings = settings or DuplicateSettings()
    rows, blocked, present_batches = _usable(_as_rows(hashes), fingerprints, max_unusable_rate)
    versions = _versions(rows)
    fresh_start = state.quality_versions != versions or state.settings != repr(settings)
    previous = [] if fresh_start else [p for p in pairs_from(previous_pairs) if p.found_by == "hash"]
    looked_up = {} if fresh_start else state.looked_up
    new_batches = {b for b in present_batches if looked_up.get(b) != fingerprints[b]}
    new = rows.take(rows.in_batches(new_batches))
    pairs = {(p.a, p.b): p for p in previous}
    for pair in find_pairs(new.codes, rows.codes, settings):
        pairs[(pair.a, pair.b)] = pair
    kept = _between(rows, [p for _, p in sorted(pairs.items())])
    new_state = DuplicateState(versions, repr(settings), {b: fingerprints[b] for b in present_batches})
    return HashUpdate(kept, new_state, rows, len(rows), len(new), fresh_start, sorted(blocked))


# ------------------------------------------------------------------------------------------------------------
# The embedding pass.

class VectorRows(Protocol):
    """Vectors of one embedder version (what :func:`cv_dataops.embeddings.vectors.read_vectors` returns)."""

    image_ids: list[str]
    batch_ids: list[str]
    matrix: np.ndarray


@dataclass(frozen=True)
class EmbeddingSource:
    """The current embedder's vectors: ``fingerprints`` per embeddings batch, ``read([batch])`` the vectors of
    ``embedder_version`` in one batch (called one batch at a time, and only when some batch has vectors not looked
    up yet)."""

    embedder_version: str | None
    fingerprints: Mapping[str, str]
    read: Callable[[list[str]], VectorRows]


@dataclass
class EmbeddingUpdate:
    pairs: list[DuplicatePair]  # found by embedding
    state: EmbeddingDuplicateState
    images_looked_up: int
    images_without_embedding: int
    fresh_start: bool
    batches_read: int


def update_embedding_duplicates(state: EmbeddingDuplicateState | None, hashes: pd.DataFrame | HashRows,
                                fingerprints: Mapping[str, str], embeddings: EmbeddingSource | None, *,
                                previous_pairs: pd.DataFrame | Sequence[DuplicatePair] | None = None,
                                settings: EmbeddingDuplicateSettings | None = None,
                                max_unusable_rate: float = 0.5) -> EmbeddingUpdate:
    """The pairs found by embedding distance once every batch with vectors of the current embedder is looked up.

    A batch is looked up (its vectors against every vector of the embedder, one batch file at a time) when its
    vectors or its hash rows changed since (images measured after their vectors were read). ``previous_pairs``
    (found by embedding) are kept unless the embedder version, the settings or the quality versions changed.
    """
    state = state or EmbeddingDuplicateState()
    settings = settings or EmbeddingDuplicateSettings()
    rows, blocked, _ = _usable(_as_rows(hashes), fingerprints, max_unusable_rate)
    version = embeddings.embedder_version if embeddings is not None else None
    key = {"embedder_version": version, "settings": repr(settings), "quality_versions": list(_versions(rows))}
    fresh_start = state.key != key
    previous = [] if fresh_start else [p for p in pairs_from(previous_pairs) if p.found_by == "embedding"]
    looked_up = {} if fresh_start else dict(state.looked_up)
    vectors = {} if fresh_start else dict(state.vectors)
    embedded = sorted(b for b in (embeddings.fingerprints if embeddings and version else {})
                      if b in fingerprints and b not in blocked)
    seen_as = {b: f"{embeddings.fingerprints[b]}|{fingerprints[b]}" for b in embedded}
    new_batches = [b for b in embedded if looked_up.get(b) != seen_as[b]]
    pairs = {(p.a, p.b): p for p in previous}
    images_looked_up, batches_read = 0, 0
    if new_batches:
        known = rows.lookup
        new_vectors = {b: _known_vectors(embeddings.read([b]), known) for b in new_batches}
        batches_read = len(new_batches)
        with_vectors = [v for v in new_vectors.values() if len(v[0])]  # (a batch may hold another version's only)
        query_ids = np.concatenate([v[0] for v in with_vectors]) if with_vectors else np.empty(0, "S1")
        query_matrix = np.concatenate([v[1] for v in with_vectors]) if with_vectors else np.empty((0, 0), np.float32)
        images_looked_up = len(query_ids)
        counts: dict[str, int] = {}

        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            nonlocal batches_read
            for b in embedded:
                if b in new_vectors:
                    ids, matrix = new_vectors[b]
                else:
                    ids, matrix = _known_vectors(embeddings.read([b]), known)
                    batches_read += 1
                counts[b] = len(ids)
                yield ids, matrix

        for pair in find_embedding_pairs_in_chunks(query_ids, query_matrix, chunks(), rows.codes, settings):
            pairs.setdefault((pair.a, pair.b), pair)
        for b in new_batches:
            vectors[b] = counts.get(b, 0)
    vectors = {b: vectors.get(b, 0) for b in embedded}
    kept = _between(rows, [p for _, p in sorted(pairs.items())])
    return EmbeddingUpdate(kept, EmbeddingDuplicateState(key, seen_as, vectors), images_looked_up,
                           len(rows) - sum(vectors.values()), fresh_start, batches_read)


def _known_vectors(vectors: VectorRows, known: IdLookup) -> tuple[np.ndarray, np.ndarray]:
    """A batch's ids (bytes) and vectors, without the images that have no (usable) hash rows."""
    ids = as_ids(vectors.image_ids)
    matrix = np.asarray(vectors.matrix, dtype=np.float32)
    if not len(ids):
        return ids, matrix.reshape(0, matrix.shape[1] if matrix.ndim == 2 else 0)
    mine = known.positions(ids) >= 0
    return (ids, matrix) if mine.all() else (ids[mine], matrix[mine])


# ------------------------------------------------------------------------------------------------------------
# Both passes' pairs, and the groups.

def pairs_from(previous: pd.DataFrame | Sequence[DuplicatePair] | None) -> list[DuplicatePair]:
    """DuplicatePairs from a ``duplicate_pairs`` frame (or a list of them)."""
    if previous is None:
        return []
    if isinstance(previous, pd.DataFrame):
        if previous.empty:
            return []
        found_by = previous["found_by"] if "found_by" in previous.columns else pd.Series("hash", index=previous.index)
        embedding = previous["embedding_distance"] if "embedding_distance" in previous.columns else \
            pd.Series(np.nan, index=previous.index)
        return [DuplicatePair(a, b, kind, int(distance), by or "hash", None if pd.isna(e) else float(e))
                for a, b, kind, distance, by, e in zip(previous.image_id_a.tolist(), previous.image_id_b.tolist(),
                                                       previous.kind.tolist(), previous.distance.tolist(),
                                                       found_by.tolist(), embedding.tolist())]
    return list(previous)


def embeddingpairs_from(table: pd.DataFrame) -> list[DuplicatePair]:
    """The pairs of the ``embedding_duplicate_pairs`` table as DuplicatePairs."""
    return [DuplicatePair(a, b, "near", int(d), "embedding", float(e)) for a, b, d, e in
            zip(table.image_id_a.tolist(), table.image_id_b.tolist(), table.distance.tolist(),
                table.embedding_distance.tolist())]


def _between(rows: HashRows, pairs: list[DuplicatePair]) -> list[DuplicatePair]:
    """The pairs whose two images both have (usable) rows."""
    if not pairs:
        return []
    known = rows.lookup
    ok = (known.positions([p.a for p in pairs]) >= 0) & (known.positions([p.b for p in pairs]) >= 0)
    return [p for p, keep in zip(pairs, ok.tolist()) if keep]


def group_pairs(hash_pairs: Sequence[DuplicatePair], embedding_pairs: Sequence[DuplicatePair], rows: HashRows,
                previous_groups: pd.DataFrame | None = None) -> tuple[list[DuplicatePair], pd.DataFrame]:
    """Every pair (a pair both passes found stays the hashes') between images of ``rows``, and their groups,
    reading the rows of only the images in a pair."""
    pairs = {(p.a, p.b): p for p in hash_pairs}
    for pair in embedding_pairs:
        pairs.setdefault((pair.a, pair.b), pair)
    kept = _between(rows, [p for _, p in sorted(pairs.items())])
    members = sorted({i for p in kept for i in (p.a, p.b)})
    positions = rows.lookup.positions(members)
    groups = group_duplicates(kept, rows.take(positions[positions >= 0]).frame(), previous=previous_groups)
    return kept, groups[GROUP_COLUMNS]


@dataclass
class DuplicateUpdate:
    pairs: list[DuplicatePair]
    groups: pd.DataFrame
    state: DuplicateState
    embedding_state: EmbeddingDuplicateState
    images_indexed: int
    images_looked_up: int
    images_looked_up_by_embedding: int
    images_without_embedding: int
    full_rebuild: bool
    batches_left_out: list[str]


def update_duplicates(state: DuplicateState | None, hashes: pd.DataFrame | HashRows, fingerprints: Mapping[str, str],
                      *, embedding_state: EmbeddingDuplicateState | None = None,
                      previous_pairs: pd.DataFrame | Sequence[DuplicatePair] | None = None,
                      previous_groups: pd.DataFrame | None = None,
                      settings: DuplicateSettings | None = None,
                      embedding_settings: EmbeddingDuplicateSettings | None = None,
                      max_unusable_rate: float = 0.5,
                      embeddings: EmbeddingSource | None = None) -> DuplicateUpdate:
    """Both passes and the groups, as when ``image_duplicates`` and ``embedding_duplicates`` run together:
    ``previous_pairs`` (as in ``duplicate_pairs``) is split by ``found_by`` between the passes."""
    rows = _as_rows(hashes)
    previous = pairs_from(previous_pairs)
    by_embedding = update_embedding_duplicates(embedding_state, rows, fingerprints, embeddings,
                                               previous_pairs=previous, settings=embedding_settings,
                                               max_unusable_rate=max_unusable_rate)
    by_hash = update_hash_duplicates(state, rows, fingerprints, previous_pairs=previous, settings=settings,
                                     max_unusable_rate=max_unusable_rate)
    pairs, groups = group_pairs(by_hash.pairs, by_embedding.pairs, by_hash.rows,
                                None if by_hash.full_rebuild else previous_groups)
    return DuplicateUpdate(pairs, groups, by_hash.state, by_embedding.state, by_hash.images_indexed,
                           by_hash.images_looked_up, by_embedding.images_looked_up,
                           by_embedding.images_without_embedding, by_hash.full_rebuild, by_hash.batches_left_out)


# ------------------------------------------------------------------------------------------------------------
# Where the state lives.

class HashRowStore:
    """Each batch's :data:`HASH_COLUMNS` and the two passes' states, under the data root. A batch's file records
    the fingerprint of the quality file it was taken from; :meth:`rows` re-reads a batch's quality only when that
    fingerprint changed (or its file is missing). Only the new batches' files are written."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def _read_state(self, key: str, kind):
        try:
            return kind.from_json(self.storage.read_text(key))
        except FileNotFoundError:
            return None

    def state(self) -> DuplicateState | None:
        return self._read_state(STATE_KEY, DuplicateState)

    def save_state(self, state: DuplicateState) -> None:
        self.storage.write_text(STATE_KEY, state.to_json())

    def embedding_state(self) -> EmbeddingDuplicateState | None:
        return self._read_state(EMBEDDING_STATE_KEY, EmbeddingDuplicateState)

    def save_embedding_state(self, state: EmbeddingDuplicateState) -> None:
        self.storage.write_text(EMBEDDING_STATE_KEY, state.to_json())

    @staticmethod
    def key(batch_id: str) -> str:
        return f"{HASH_ROWS_PREFIX}{batch_id}.npz"

    def rows(self, fingerprints: Mapping[str, str],
             read_quality: Callable[[str], pd.DataFrame]) -> tuple[HashRows, list[str]]:
        """Every batch's rows, and the batches whose quality rows were read (new or changed since stored)."""
        parts, refreshed = [], []
        for batch_id, fingerprint in sorted(fingerprints.items()):
            try:
                rows, source = HashRows.from_bytes(self.storage.read_bytes(self.key(batch_id)))
            except (FileNotFoundError, ValueError, KeyError, OSError):  # missing, or not of this format
                rows, source = None, None
            if source != fingerprint:
                frame = read_quality(batch_id)
                rows = HashRows.from_frame(frame[[c for c in HASH_COLUMNS if c in frame.columns]])
                self.storage.write_bytes(self.key(batch_id), rows.to_bytes(fingerprint))
                refreshed.append(batch_id)
            parts.append(rows)
        return HashRows.concat(parts), refreshed


def partition_fingerprints(catalog, table) -> dict[str, str]:
    """Each batch file of a catalog table and its version (S3 ETag, or size and mtime): a listing, no reads."""
    return catalog.partition_versions(table)
