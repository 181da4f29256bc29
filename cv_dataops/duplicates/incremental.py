"""Adding batches to the duplicate groups without comparing all pairs again: state in, state out.

:func:`update_duplicates` takes what the last run left (its :class:`DuplicateState`, pairs and groups), the
compact hash rows of every batch and, through a function, the vectors of the current embedder; it looks up only
the images of batches it has not looked up yet (or whose rows changed), keeps every pair found before, and returns
the new pairs, groups and state. The state names *batches* (with a fingerprint of what was read), never images, so
it stays a few bytes per batch.

:class:`HashRowStore` keeps, per batch, the few quality columns duplicates need (:data:`HASH_COLUMNS`, about 150
bytes an image) beside the catalog, each tagged with the fingerprint of the quality file it came from: a run reads
the new batches' quality rows once, and the compact rows of the others. What still grows with the catalog is
inherent to the lookups: the Hamming index is built over every image's two 64-bit hashes, and embedding pairs
compare the new vectors with every vector of the embedder (read only when some batch has new vectors).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cv_dataops.core.storage import Storage
from cv_dataops.duplicates.index import (
    GROUP_COLUMNS,
    DuplicatePair,
    DuplicateSettings,
    EmbeddingDuplicateSettings,
    find_embedding_pairs,
    find_pairs,
    group_duplicates,
)
from cv_dataops.quality.gating import blocked_batches

# The quality columns the duplicates stage needs: hashes to find pairs, size and sharpness to choose the member to
# keep, the unusable flag for the one "unusable batch" rule, the version for a full rebuild when metrics change.
HASH_COLUMNS = ["image_id", "batch_id", "pixel_hash", "phash", "dhash", "width", "height", "blurry_score",
                "is_unusable", "quality_version"]
STATE_KEY = "state/image_duplicates.json"
HASH_ROWS_PREFIX = "state/image_duplicates/hashes/"
_SOURCE = b"cv_dataops/source_fingerprint"


@dataclass(frozen=True)
class DuplicateState:
    """What the last run looked up, per batch: ``looked_up`` and ``embedding_looked_up`` map a batch to the
    fingerprint of the hash rows (and of the vectors) looked up; ``embedding_vectors`` counts each batch's vectors looked up.
    A change of quality versions or hash settings starts afresh; a change of embedder version or embedding
    settings drops the embedding pairs and looks every batch up by embedding again."""

    quality_versions: tuple[str, ...] = ()
    settings: str = ""
    looked_up: dict[str, str] = field(default_factory=dict)
    embedding: dict = field(default_factory=dict)
    embedding_looked_up: dict[str, str] = field(default_factory=dict)
    embedding_vectors: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["quality_versions"] = list(self.quality_versions)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DuplicateState:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "looked_up" not in data:  # a state of the per-image kind (before batches): start afresh
            return cls()
        known["quality_versions"] = tuple(known.get("quality_versions", ()))
        return cls(**known)


class VectorRows(Protocol):
    """Vectors of one embedder version (what :func:`cv_dataops.embeddings.vectors.read_vectors` returns)."""

    image_ids: list[str]
    batch_ids: list[str]
    matrix: np.ndarray


@dataclass(frozen=True)
class EmbeddingSource:
    """The current embedder's vectors: ``fingerprints`` per embeddings batch, ``read(batches)`` their vectors of
    ``embedder_version`` (called only when some batch has vectors not looked up yet)."""

    embedder_version: str | None
    fingerprints: Mapping[str, str]
    read: Callable[[list[str]], VectorRows]


@dataclass
class DuplicateUpdate:
    pairs: list[DuplicatePair]
    groups: pd.DataFrame
    state: DuplicateState
    images_indexed: int
    images_looked_up: int
    images_looked_up_by_embedding: int
    images_without_embedding: int
    full_rebuild: bool
    batches_left_out: list[str]


def _pairs_from(previous: pd.DataFrame | Sequence[DuplicatePair] | None) -> list[DuplicatePair]:
    if previous is None:
        return []
    if isinstance(previous, pd.DataFrame):
        rows = previous.to_dict("records")
        return [DuplicatePair(r["image_id_a"], r["image_id_b"], r["kind"], int(r["distance"]),
                              r.get("found_by") or "hash",
                              None if pd.isna(r.get("embedding_distance")) else r.get("embedding_distance"))
                for r in rows]
    return list(previous)


def update_duplicates(state: DuplicateState | None, hashes: pd.DataFrame, fingerprints: Mapping[str, str], *,
                      previous_pairs: pd.DataFrame | Sequence[DuplicatePair] | None = None,
                      previous_groups: pd.DataFrame | None = None,
                      settings: DuplicateSettings | None = None,
                      embedding_settings: EmbeddingDuplicateSettings | None = None,
                      max_unusable_rate: float = 0.5,
                      embeddings: EmbeddingSource | None = None) -> DuplicateUpdate:
    """The duplicate pairs and groups once the batches in ``hashes`` are all looked up.

    ``hashes`` has :data:`HASH_COLUMNS` for every batch's images; ``fingerprints`` says, per batch, which version
    of its rows that is (a batch whose fingerprint differs from the state's is looked up again). Batches the
    unusable-batch rule blocks are left out (their images are in no pair and no group). Only images of batches
    not looked up before are queried, against every image; earlier pairs are kept.
    """
    state = state or DuplicateState()
    settings = settings or DuplicateSettings()
    embedding_settings = embedding_settings or EmbeddingDuplicateSettings()
    blocked = blocked_batches(hashes, max_unusable_rate)
    hashes = hashes[~hashes.batch_id.isin(blocked)].reset_index(drop=True)
    present_batches = sorted(b for b in fingerprints if b not in blocked)
    versions = tuple(sorted(set(hashes.quality_version)))
    fresh_start = state.quality_versions != versions or state.settings != repr(settings)
    version = embeddings.embedder_version if embeddings is not None else None
    embedding_key = {"embedder_version": version, "settings": repr(embedding_settings)}
    embedding_fresh_start = fresh_start or state.embedding != embedding_key

    previous = [] if fresh_start else _pairs_from(previous_pairs)
    if embedding_fresh_start:
        previous = [p for p in previous if p.found_by == "hash"]
    looked_up = {} if fresh_start else state.looked_up
    new_batches = {b for b in present_batches if looked_up.get(b) != fingerprints[b]}
    new = hashes[hashes.batch_id.isin(new_batches)]
    pairs = {(p.a, p.b): p for p in previous}
    for pair in find_pairs(new, hashes, settings):
        pairs[(pair.a, pair.b)] = pair

    present = set(hashes.image_id)
    embedding_looked_up = {} if embedding_fresh_start else dict(state.embedding_looked_up)
    embedding_vectors = {} if embedding_fresh_start else dict(state.embedding_vectors)
    looked_up_by_embedding = 0
    embedded_batches = sorted(b for b in (embeddings.fingerprints if embeddings and version else {})
                              if b in fingerprints and b not in blocked)
    # a batch's vectors are looked up again when they change, or when its hash rows do (images measured since)
    seen_as = {b: f"{embeddings.fingerprints[b]}|{fingerprints[b]}" for b in embedded_batches}
    new_embedded = [b for b in embedded_batches if embedding_looked_up.get(b) != seen_as[b]]
    if new_embedded:
        vectors = embeddings.read(embedded_batches)
        ids = np.asarray(vectors.image_ids, dtype=object)
        batch_of = np.asarray(vectors.batch_ids, dtype=object)
        matrix = np.asarray(vectors.matrix, dtype=np.float32)
        known = np.fromiter((i in present for i in ids), dtype=bool, count=len(ids))
        if not known.all():  # vectors of images without hash rows (not measured yet): not looked up
            ids, batch_of, matrix = ids[known], batch_of[known], matrix[known]
        queries = np.isin(batch_of, new_embedded)
        looked_up_by_embedding = int(queries.sum())
        for pair in find_embedding_pairs(ids[queries].tolist(), matrix[queries], ids.tolist(), matrix, hashes,
                                         embedding_settings):
            if (pair.a, pair.b) not in pairs:  # what the hashes found stays theirs
                pairs[(pair.a, pair.b)] = pair
        counts = pd.Series(batch_of).value_counts().to_dict() if len(batch_of) else {}
        for b in new_embedded:
            embedding_vectors[b] = int(counts.get(b, 0))
    embedding_looked_up = seen_as
    embedding_vectors = {b: embedding_vectors.get(b, 0) for b in embedded_batches}

    kept = [p for _, p in sorted(pairs.items()) if p.a in present and p.b in present]
    groups = group_duplicates(kept, hashes, previous=None if fresh_start else previous_groups)
    new_state = DuplicateState(versions, repr(settings), {b: fingerprints[b] for b in present_batches},
                               embedding_key, embedding_looked_up, embedding_vectors)
    return DuplicateUpdate(kept, groups[GROUP_COLUMNS], new_state, len(hashes), len(new), looked_up_by_embedding,
                           len(present) - sum(embedding_vectors.values()), fresh_start, sorted(blocked))


def _empty_hash_rows() -> pd.DataFrame:
    return pd.DataFrame({"image_id": pd.Series(dtype=str), "batch_id": pd.Series(dtype=str),
                         "pixel_hash": pd.Series(dtype=str), "phash": np.empty(0, np.uint64),
                         "dhash": np.empty(0, np.uint64), "width": np.empty(0, np.int32),
                         "height": np.empty(0, np.int32), "blurry_score": np.empty(0, np.float64),
                         "is_unusable": np.empty(0, bool), "quality_version": pd.Series(dtype=str)})


class HashRowStore:
    """Each batch's :data:`HASH_COLUMNS` and the duplicates state, under the data root. A batch's file records the
    fingerprint of the quality file it was taken from; :meth:`rows` re-reads a batch's quality only when that
    fingerprint changed (or its file is missing)."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def state(self) -> DuplicateState | None:
        try:
            return DuplicateState.from_json(self.storage.read_text(STATE_KEY))
        except FileNotFoundError:
            return None

    def save_state(self, state: DuplicateState) -> None:
        self.storage.write_text(STATE_KEY, state.to_json())

    @staticmethod
    def key(batch_id: str) -> str:
        return f"{HASH_ROWS_PREFIX}{batch_id}.parquet"

    def _write(self, batch_id: str, rows: pd.DataFrame, fingerprint: str) -> None:
        table = pa.Table.from_pandas(rows[HASH_COLUMNS], preserve_index=False)
        table = table.replace_schema_metadata({_SOURCE: fingerprint.encode()})
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.storage.write_bytes(self.key(batch_id), buffer.getvalue())

    def _read(self, batch_id: str) -> tuple[pd.DataFrame, str | None]:
        table = pq.read_table(io.BytesIO(self.storage.read_bytes(self.key(batch_id))))
        source = (table.schema.metadata or {}).get(_SOURCE)
        return table.to_pandas(), source.decode() if source else None

    def rows(self, fingerprints: Mapping[str, str],
             read_quality: Callable[[str], pd.DataFrame]) -> tuple[pd.DataFrame, list[str]]:
        """Every batch's rows, and the batches whose quality rows were read (new or changed since stored)."""
        parts, refreshed = [], []
        for batch_id, fingerprint in sorted(fingerprints.items()):
            try:
                rows, source = self._read(batch_id)
            except FileNotFoundError:
                rows, source = None, None
            if source != fingerprint:
                rows = read_quality(batch_id)[HASH_COLUMNS]
                self._write(batch_id, rows, fingerprint)
                refreshed.append(batch_id)
            parts.append(rows)
        parts = [p for p in parts if len(p)]
        return (pd.concat(parts, ignore_index=True) if parts else _empty_hash_rows()), refreshed


def partition_fingerprints(catalog, table) -> dict[str, str]:
    """Each batch file of a catalog table and its version (S3 ETag, or size and mtime): a listing, no reads."""
    prefix = catalog.key(table, "_").rsplit("/", 1)[0] + "/"
    return {info.key[len(prefix):-len(".parquet")]: info.version for info in catalog.storage.list(prefix)
            if info.key.endswith(".parquet") and "/" not in info.key[len(prefix):]}
