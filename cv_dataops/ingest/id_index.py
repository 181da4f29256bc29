"""Which image ids each batch holds, kept beside the catalog so that a new batch never reads the earlier batches.

Ingesting a batch asks "which of these ids do earlier batches hold?" and its checks ask "does another batch hold one
of mine?". Reading the ``image_id`` column of every earlier ``images`` file answers both, but each Parquet file is
read whole and every id becomes a Python string: over a catalog's life that is quadratic. Instead each batch's ids
are kept sorted in one small file (``state/ingest/image_ids/<batch_id>.ids``: an 8-byte integer prefix and the
fixed-width id, about 72 bytes an id), written by the batch itself right after its ``images`` rows, and a lookup is
a binary search of the new ids' prefixes in each file: no Python object and no parsing per catalog image, one small
file per batch, nothing rewritten when a batch is added.
(Measured against one merged file rewritten per batch and a key per id in ``bench/batch_cost.py``.)

The files are a cache of the ``images`` table: a batch's file older than its ``images`` file (a crash between the
two writes, or a catalog made before this index existed) is rebuilt from that one file when it is next read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cv_dataops.core.catalog import Catalog
from cv_dataops.ingest.tables import IMAGES

ID_INDEX_PREFIX = "state/ingest/image_ids/"


_MAGIC = b"cvid"
_SUFFIX = ".ids"


def _as_array(ids: Iterable[str]) -> np.ndarray:
    """Sorted unique ids as fixed-width bytes (``S<n>``, at least 8 wide): compact, and searchable with numpy."""
    encoded = [str(i).encode() for i in ids]
    width = max(8, max((len(e) for e in encoded), default=8))
    return np.unique(np.array(encoded, dtype=f"S{width}"))


def _prefixes(ids: np.ndarray) -> np.ndarray:
    """Each id's first 8 bytes as a big-endian integer: sorted ids have sorted prefixes, and integers compare
    an order of magnitude faster than 64-byte strings."""
    head = ids.view(np.uint8).reshape(len(ids), ids.dtype.itemsize)[:, :8]
    return np.ascontiguousarray(head).view(">u8").ravel().astype(np.uint64)


def _encode(ids: np.ndarray) -> bytes:
    """``cvid``, the id width (uint32), the prefixes (uint64), the ids: read back without parsing or copying."""
    return _MAGIC + struct.pack("<I", ids.dtype.itemsize) + _prefixes(ids).tobytes() + ids.tobytes()


def _decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    if data[:4] != _MAGIC:
        raise ValueError("not an image-id index file")
    (width,) = struct.unpack("<I", data[4:8])
    count = (len(data) - 8) // (8 + width)
    prefixes = np.frombuffer(data, np.uint64, count, 8).copy()  # aligned (bytes objects' data is not): fast search
    return prefixes, np.frombuffer(data, f"S{width}", count, 8 + 8 * count)


@dataclass(frozen=True)
class Holders:
    """For each looked-up id held by at least one batch, the batches holding it (sorted); and how many ids the
    batches searched hold in all."""

    by_id: dict[str, list[str]]
    ids_searched: int


class ImageIdIndex:
    """The ids of every batch's ``images`` rows, one sorted file per batch under the catalog's storage."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.storage = catalog.storage

    @staticmethod
    def key(batch_id: str) -> str:
        return f"{ID_INDEX_PREFIX}{batch_id}{_SUFFIX}"

    def write(self, batch_id: str, ids: Iterable[str]) -> None:
        """Record the ids a batch holds (after its ``images`` rows are written: the index never leads the table)."""
        self.storage.write_bytes(self.key(batch_id), _encode(_as_array(ids)))

    def _modified(self, prefix: str, suffix: str) -> dict[str, float]:
        return {info.key[len(prefix):-len(suffix)]: info.modified for info in self.storage.list(prefix)
                if info.key.endswith(suffix) and "/" not in info.key[len(prefix):]}

    def batches(self) -> list[str]:
        """The batches that hold images (those with an ``images`` file)."""
        return self.catalog.partitions(IMAGES)

    def segments(self, batches: Sequence[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each batch's (prefixes, sorted ids) (every batch with an ``images`` file, or ``batches``); a missing or
        stale file is rebuilt from that batch's ``images`` file."""
        table_prefix = self.catalog.key(IMAGES, "_").rsplit("/", 1)[0] + "/"
        tables = self._modified(table_prefix, ".parquet")
        indexed = self._modified(ID_INDEX_PREFIX, _SUFFIX)
        wanted = sorted(tables) if batches is None else [b for b in batches if b in tables]
        out = {}
        for batch_id in wanted:
            if batch_id in indexed and indexed[batch_id] >= tables[batch_id]:
                try:
                    out[batch_id] = _decode(self.storage.read_bytes(self.key(batch_id)))
                    continue
                except (FileNotFoundError, ValueError):
                    pass
            ids = _as_array(self.catalog.read(IMAGES, [batch_id], columns=["image_id"]).column("image_id").to_pylist())
            self.storage.write_bytes(self.key(batch_id), _encode(ids))
            out[batch_id] = (_prefixes(ids), ids)
        return out

    def holders(self, ids: Iterable[str], batches: Sequence[str] | None = None) -> Holders:
        """Which of ``ids`` the batches (all, or ``batches``) hold, and which batches hold each."""
        queries = _as_array(ids)
        query_prefixes = _prefixes(queries)
        by_id: dict[str, list[str]] = {}
        searched = 0
        for batch_id, (prefixes, segment) in self.segments(batches).items():
            searched += len(segment)
            if not len(segment) or not len(queries):
                continue
            low = np.searchsorted(prefixes, query_prefixes, side="left")
            high = np.searchsorted(prefixes, query_prefixes, side="right")
            for position in np.flatnonzero(high > low).tolist():  # the same first 8 bytes: compare whole ids
                query = queries[position]
                if any(query == other for other in segment[low[position]:high[position]]):
                    by_id.setdefault(query.decode(), []).append(batch_id)
        return Holders(by_id, searched)

    def known_before(self, batch_id: str, ids: Iterable[str]) -> set[str]:
        """The ids of ``ids`` that batches made before ``batch_id`` hold (batch ids sort in the order made)."""
        return set(self.holders(ids, [b for b in self.batches() if b < batch_id]).by_id)


@dataclass(frozen=True)
class Uniqueness:
    """A batch's ids against the rest of the catalog: ids repeated within the batch or held by another batch."""

    repeated: list[str]
    other_batches: dict[str, list[str]]
    images_in_catalog: int


def batch_uniqueness(catalog: Catalog, batch_id: str) -> Uniqueness:
    """Whether the batch's ``images`` ids are unique in the whole catalog, reading only the batch's own rows and
    the other batches' id files."""
    ids = catalog.read(IMAGES, [batch_id], columns=["image_id"]).column("image_id").to_pylist()
    index = ImageIdIndex(catalog)
    others = index.holders(ids, [b for b in index.batches() if b != batch_id])
    seen: set[str] = set()
    repeated = sorted({i for i in ids if i in seen or seen.add(i)} | set(others.by_id))
    return Uniqueness(repeated, others.by_id, others.ids_searched + len(seen))
