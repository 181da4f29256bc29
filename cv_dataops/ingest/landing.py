"""Turning what lands in a landing zone into batches, exactly once.

A batch is a manifest (``batches/<batch_id>.json`` under the data root) that names the landed object versions it
holds. The manifest is written before anything else happens, so a batch always means the same objects however often
it is re-run, and an object version is assigned to one batch only. ``batches/_index.parquet`` caches the union of
all manifests; it is rebuilt from the manifests whenever they disagree, so a crash between the two writes loses
nothing and assigns nothing twice.

An object that could not be read for a reason that may pass (S3 down, throttled, a file gone for now) is deferred,
not refused: ``batches/_deferred/<batch_id>.json`` names it, and the next planning that still lists the same version
assigns it to a new batch (after a pause that doubles with each attempt). The batch that deferred it then keeps it
deferred, so it becomes an image once, in the later batch. After ``max_attempts`` batches deferred it, the next
planning assigns it to a new batch as a refusal (``unreadable_after_retries``, naming the last error): that batch
quarantines it unread, and it is retried no more.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from cv_dataops.core.storage import ObjectInfo, Storage

BATCHES_PREFIX = "batches/"
INDEX_KEY = "batches/_index.parquet"
DEFERRED_PREFIX = "batches/_deferred/"
RETRY_PAUSE_SECONDS = 60.0  # default pause before the second retry of a deferred object; doubled for each one after
MAX_RETRY_PAUSE_SECONDS = 6 * 3600.0
MAX_ATTEMPTS = 5  # default number of batches that try a deferred object before it is quarantined
GAVE_UP_REASON = "unreadable_after_retries"
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


def retry_pause(attempts: int, first_pause: float = RETRY_PAUSE_SECONDS) -> float:
    """Seconds to wait, after an object was deferred ``attempts`` times, before assigning it again: none after the
    first (an outage that has passed is retried by the very next run), then ``first_pause`` (1 min), doubled for each
    attempt after, up to 6 h."""
    if attempts <= 1:
        return 0.0
    return min(first_pause * 2 ** (attempts - 2), max(MAX_RETRY_PAUSE_SECONDS, first_pause))


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
        index = self._index()
        return set(zip(index.column("uri").to_pylist(), index.column("version").to_pylist(), strict=True))

    def holders(self) -> dict[tuple[str, str], list[str]]:
        """(uri, version) -> the batches it was assigned to, oldest first (more than one once it was deferred)."""
        index = self._index()
        found: dict[tuple[str, str], list[str]] = {}
        for batch_id, uri, version in zip(*(index.column(c).to_pylist() for c in ("batch_id", "uri", "version")),
                                          strict=True):
            found.setdefault((uri, version), []).append(batch_id)
        return {key: sorted(batches) for key, batches in found.items()}

    def handed_over(self, manifest: BatchManifest) -> dict[str, str]:
        """Key -> the later batch that this batch's deferred object was assigned to: ingesting this batch again
        must leave those deferred, or the image would be counted in both batches."""
        holders = self.holders()
        later = {}
        for info in manifest.objects:
            newest = holders.get((self._uri(manifest, info.key), info.version), [manifest.batch_id])[-1]
            if newest > manifest.batch_id:
                later[info.key] = newest
        return later

    def record_deferred(self, batch_id: str, deferred: dict[str, str], now: datetime | None = None) -> None:
        """Note which objects of ``batch_id`` were deferred (key -> why) for the next planning; written before the
        batch's tables, so a crash in between defers once more rather than never."""
        key = f"{DEFERRED_PREFIX}{batch_id}.json"
        if not deferred:
            if self.data_root.exists(key):
                self.data_root.delete(key)
            return
        manifest = self.manifest(batch_id)
        versions = {o.key: o.version for o in manifest.objects}
        self.data_root.write_text(key, json.dumps({
            "batch_id": batch_id, "deferred_at": (now or datetime.now(UTC)).isoformat(),
            "objects": [{"key": k, "version": versions[k], "reason": deferred[k]} for k in sorted(deferred)]},
            indent=1, ensure_ascii=False))

    def deferred_keys(self, batch_id: str) -> dict[str, str]:
        """Key -> why, for the objects ``batch_id``'s note says it deferred (empty without a note)."""
        try:
            note = json.loads(self.data_root.read_text(f"{DEFERRED_PREFIX}{batch_id}.json"))
        except FileNotFoundError:
            return {}
        return {entry["key"]: entry["reason"] for entry in note["objects"]}

    def deferred(self) -> dict[str, dict]:
        """batch_id -> its deferred note (``deferred_at`` and ``objects``: key, version, reason)."""
        notes = {}
        for info in self.data_root.list(DEFERRED_PREFIX):
            if info.key.endswith(".json"):
                note = json.loads(self.data_root.read_text(info.key))
                notes[note["batch_id"]] = note
        return notes

    def awaiting_retry(self) -> dict[str, dict[str, str]]:
        """batch_id -> {key: why} of the objects it deferred that no later batch has taken over yet: what a later
        planning retries (or, after ``max_attempts``, quarantines)."""
        holders = self.holders()
        waiting: dict[str, dict[str, str]] = {}
        for batch_id, manifest, entry in self._deferred_entries():
            batches = holders.get((self._uri(manifest, entry["key"]), entry["version"]), [])
            if batches and batches[-1] == batch_id:
                waiting.setdefault(batch_id, {})[entry["key"]] = entry["reason"]
        return waiting

    def _deferred_entries(self):
        """(batch_id, manifest, entry) for every object of every deferred note whose batch still exists."""
        for batch_id, note in sorted(self.deferred().items()):
            try:
                manifest = self.manifest(batch_id)
            except KeyError:
                continue
            for entry in note["objects"]:
                yield batch_id, manifest, {**entry, "deferred_at": note["deferred_at"]}

    def _retry_ready(self, holders: dict[tuple[str, str], list[str]], now: datetime, max_attempts: int,
                     retry_pause_seconds: float) -> dict[tuple[str, str], str | None]:
        """(uri, version) whose newest batch deferred it and whose pause before the next attempt is over ->
        None, or the last error when ``max_attempts`` batches have deferred it (then at once: it is given up)."""
        ready: dict[tuple[str, str], str | None] = {}
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        for batch_id, manifest, entry in self._deferred_entries():
            key = (self._uri(manifest, entry["key"]), entry["version"])
            batches = holders.get(key, [])
            if not batches or batches[-1] != batch_id:
                continue
            if len(batches) >= max_attempts:
                ready[key] = (f"could not be read by {len(batches)} batches (the retry limit); "
                              f"last error: {entry['reason']}")
                continue
            waited = (now - datetime.fromisoformat(entry["deferred_at"])).total_seconds()
            if waited >= retry_pause(len(batches), retry_pause_seconds):
                ready[key] = None
        return ready

    def _index(self) -> pa.Table:
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
        return index

    def _uri(self, manifest: BatchManifest, key: str) -> str:
        return manifest.landing_uri.rstrip("/") + "/" + key

    def _write_index(self, index: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(index, buffer, compression="zstd")
        self.data_root.write_bytes(INDEX_KEY, buffer.getvalue())

    def plan(self, landing: Storage, now: datetime | None = None, min_age_seconds: float = 0.0,
             max_batch_size: int = 5000, max_attempts: int = MAX_ATTEMPTS,
             retry_pause_seconds: float = RETRY_PAUSE_SECONDS) -> list[BatchManifest]:
        """Assign every object version newly landed in ``landing`` to a new batch; return the new batches.

        Objects modified less than ``min_age_seconds`` ago are left for the next call: a file still being copied
        into a folder is not ingested half-written. Deferred objects still listed with the same version are
        assigned again once their pause is over (:func:`retry_pause` with ``retry_pause_seconds``); once
        ``max_attempts`` batches have deferred one, it is assigned as a refusal (``unreadable_after_retries``).
        """
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        landing.ensure_exists()
        now = now or datetime.now(UTC)
        holders = self.holders()
        retry = self._retry_ready(holders, now, max_attempts, retry_pause_seconds) if holders else {}
        landing_uri = landing.uri.rstrip("/")
        cutoff = time.time() - min_age_seconds
        fresh = []
        for info in landing.list():
            key = (f"{landing_uri}/{info.key}", info.version)
            if (key in holders and key not in retry) or (min_age_seconds > 0 and info.modified > cutoff):
                continue
            fresh.append(_given_up(info, retry[key]) if retry.get(key) else info)
        fresh.sort(key=lambda info: info.key)
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


def _given_up(info: ObjectInfo, why: str) -> ObjectInfo:
    """``info`` as a refusal its batch quarantines unread: it was deferred by as many batches as are allowed."""
    return replace(info, unsafe_reason=why, refusal=GAVE_UP_REASON)
