"""Turning what lands in a landing zone into batches, exactly once.

A batch is a manifest (``batches/<batch_id>.json`` under the data root) that names the landed object versions it
holds. The manifest is written before anything else happens, so a batch always means the same objects however often
it is re-run, and an object version is assigned to one batch only. ``batches/_index.parquet`` caches the union of
all manifests; it is rebuilt from the manifests whenever they disagree, so a crash between the two writes loses
nothing and assigns nothing twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from cv_dataops.core.storage import ObjectInfo, Storage

BATCHES_PREFIX = "batches/"
INDEX_KEY = "batches/_index.parquet"
_INDEX_SCHEMA = pa.schema([("batch_id", pa.string()), ("uri", pa.string()), ("version", pa.string())])


@dataclass(frozen=True)
class BatchManifest:
    batch_id: str
    landing_uri: str
    created_at: str
    objects: tuple[ObjectInfo, ...]

    def to_json(self) -> str:
        return json.dumps({"batch_id": self.batch_id, "landing_uri": self.landing_uri, "created_at": self.created_at,
                           "objects": [asdict(o) for o in self.objects]}, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> BatchManifest:
        data = json.loads(text)
        return cls(data["batch_id"], data["landing_uri"], data["created_at"],
                   tuple(ObjectInfo(**o) for o in data["objects"]))


def make_batch_id(sequence: int, now: datetime, objects: list[ObjectInfo], landing_uri: str) -> str:
    """``00000042-20261126T164417Z-3fa2c1d0``: a sequence number first, so ids sort in the order batches were made
    (whatever the clock does), then the landing time and a fingerprint of the content, for people."""
    digest = hashlib.sha256(landing_uri.encode())
    for info in objects:
        digest.update(f"\0{info.key}\0{info.version}".encode())
    return f"{sequence:08d}-{now:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}"


class BatchLedger:
    """Which landed object versions belong to which batch, kept under the data root."""

    def __init__(self, data_root: Storage):
        self.data_root = data_root

    def batch_ids(self) -> list[str]:
        """Every batch ever created under this data root, oldest first."""
        return sorted(info.key[len(BATCHES_PREFIX):-len(".json")] for info in self.data_root.list(BATCHES_PREFIX)
                      if info.key.endswith(".json") and "/" not in info.key[len(BATCHES_PREFIX):])

    def manifest(self, batch_id: str) -> BatchManifest:
        try:
            return BatchManifest.from_json(self.data_root.read_text(f"{BATCHES_PREFIX}{batch_id}.json"))
        except FileNotFoundError:
            raise KeyError(f"no batch {batch_id!r} under {self.data_root.uri}") from None

    def assigned(self) -> set[tuple[str, str]]:
        """(uri, version) of every object version already in a batch, repairing the index if it is behind."""
        batch_ids = self.batch_ids()
        try:
            index = pq.read_table(io.BytesIO(self.data_root.read_bytes(INDEX_KEY)))
        except FileNotFoundError:
            index = _INDEX_SCHEMA.empty_table()
        indexed = set(index.column("batch_id").to_pylist())
        missing = [b for b in batch_ids if b not in indexed]
        if missing:
            rows = [{"batch_id": m.batch_id, "uri": self._uri(m, o.key), "version": o.version}
                    for m in map(self.manifest, missing) for o in m.objects]
            index = pa.concat_tables([index, pa.Table.from_pylist(rows, schema=_INDEX_SCHEMA)])
            self._write_index(index)
        return set(zip(index.column("uri").to_pylist(), index.column("version").to_pylist(), strict=True))

    def _uri(self, manifest: BatchManifest, key: str) -> str:
        return manifest.landing_uri.rstrip("/") + "/" + key

    def _write_index(self, index: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(index, buffer, compression="zstd")
        self.data_root.write_bytes(INDEX_KEY, buffer.getvalue())

    def plan(self, landing: Storage, now: datetime | None = None, min_age_seconds: float = 0.0,
             max_batch_size: int = 5000) -> list[BatchManifest]:
        """Assign every object version newly landed in ``landing`` to a new batch; return the new batches.

        Objects modified less than ``min_age_seconds`` ago are left for the next call: a file still being copied
        into a folder is not ingested half-written.
        """
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        landing.ensure_exists()
        now = now or datetime.now(UTC)
        assigned = self.assigned()
        landing_uri = landing.uri.rstrip("/")
        cutoff = time.time() - min_age_seconds
        fresh = sorted((info for info in landing.list()
                        if (f"{landing_uri}/{info.key}", info.version) not in assigned
                        and (min_age_seconds <= 0 or info.modified <= cutoff)),
                       key=lambda info: info.key)
        manifests = []
        existing = self.batch_ids()
        next_sequence = int(existing[-1].split("-", 1)[0]) + 1 if existing else 1
        for index, start in enumerate(range(0, len(fresh), max_batch_size)):
            chunk = fresh[start:start + max_batch_size]
            manifest = BatchManifest(make_batch_id(next_sequence + index, now, chunk, landing_uri), landing_uri,
                                     now.isoformat(), tuple(chunk))
            self.data_root.write_text(f"{BATCHES_PREFIX}{manifest.batch_id}.json", manifest.to_json())
            manifests.append(manifest)
        if manifests:
            self.assigned()  # folds the new manifests into the index
        return manifests
