"""The append-only `labels` store: every label event, one Parquet file per appended version, never rewritten.

Version *n* is ``catalog/labels/<n, 8 digits>.parquet`` under the data root, created with the storage's atomic
create-if-absent, so an earlier version is never replaced and two appenders cannot both publish version *n* (the
loser retries as *n + 1*). Reading "as of" a version concatenates the files up to it: curation and the label model
read a fixed version while reviews keep arriving, which is how the labelling loop is cut for Dagster. Because the
files sit where the catalog keeps every table, ``cv-dataops table labels`` and SQL search see all events.

Appending is idempotent per source: an event whose ``source_digest`` (the SHA-256 of its file's bytes) is already
stored is not appended again, so re-dropping the same review file, under any name, changes nothing. Two processes
appending the same new file at the very same moment could both store it; the audit counts one vote per annotator,
so that could not change an audited label (the review sensor appends one file at a time anyway).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import pyarrow.parquet as pq

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import Storage
from cv_dataops.labels.sources import (
    ImageLookup,
    LabelEvent,
    SourceProblem,
    content_digest,
    read_label_file,
)
from cv_dataops.labels.tables import LABEL_SOURCES, LABELS
from cv_dataops.labels.taxonomy import Taxonomy

VERSION_DIGITS = 8
_ATTEMPTS = 20  # versions tried when other appenders keep publishing first


@dataclass(frozen=True)
class FileImport:
    """What appending one label file did: for the run's metadata and the review sensor."""

    name: str
    source_digest: str
    version: int  # the version holding the file's events (the latest, when nothing was appended)
    appended: int  # events appended by this call (0 when the file was stored before or had no good row)
    already_stored: bool
    problems: list[SourceProblem] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "source_digest": self.source_digest, "version": self.version,
                "appended": self.appended, "already_stored": self.already_stored,
                "problems": [str(problem) for problem in self.problems]}


def version_name(version: int) -> str:
    return f"{version:0{VERSION_DIGITS}d}"


class LabelStore:
    """The `labels` table under a data root: :meth:`append` events, :meth:`read` them as of a version."""

    def __init__(self, storage: Storage):
        self.catalog = Catalog(storage)

    def __repr__(self) -> str:
        return f"LabelStore({self.catalog.storage.uri!r})"

    def versions(self) -> list[int]:
        """Every stored version, oldest first (files not named like a version are not the store's)."""
        return sorted(int(name) for name in self.catalog.partitions(LABELS)
                      if name.isdigit() and len(name) == VERSION_DIGITS)

    def latest_version(self) -> int:
        """The newest version; 0 while nothing has been appended."""
        versions = self.versions()
        return versions[-1] if versions else 0

    def source_digests(self) -> set[str]:
        """The digests of every source already stored (what :meth:`append` will not add again)."""
        names = [version_name(version) for version in self.versions()]
        table = self.catalog.read(LABELS, partitions=names, columns=["source_digest"])
        return set(table.column("source_digest").to_pylist())

    def append(self, events: Iterable[LabelEvent], *, now: datetime | None = None) -> int:
        """Store the events whose source is not stored yet as a new version and return it; when there are none,
        nothing is written and the latest version is returned. An invalid event (unknown source, empty image id or
        label, confidence outside [0, 1]) raises ValueError and nothing is written."""
        events = list(events)
        for event in events:
            _check(event)
        recorded_at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        for _ in range(_ATTEMPTS):
            latest = self.latest_version()
            known = self.source_digests()
            rows, seen = [], set()
            for event in events:
                if event.source_digest in known or event.event_id in seen:
                    continue
                seen.add(event.event_id)
                rows.append(_row(event, latest + 1, recorded_at))
            if not rows:
                return latest
            buffer = io.BytesIO()
            pq.write_table(LABELS.from_rows(rows), buffer, compression="zstd")
            if self.catalog.storage.create_bytes(self.catalog.key(LABELS, version_name(latest + 1)),
                                                 buffer.getvalue()):
                return latest + 1
        raise RuntimeError(f"labels: could not append after {_ATTEMPTS} attempts; other appenders kept publishing "
                           f"first at {self.catalog.uri(LABELS, version_name(self.latest_version()))}")

    def append_file(self, data: bytes, name: str, *, taxonomy: Taxonomy, images: ImageLookup,
                    source: str = "import", now: datetime | None = None) -> FileImport:
        """Read a label file (:func:`cv_dataops.labels.sources.read_label_file`) and append its good rows. A file
        stored before is not read again (its problems were reported when it was)."""
        digest = content_digest(data)
        if digest in self.source_digests():
            return FileImport(name, digest, self.latest_version(), 0, True)
        events, problems = read_label_file(data, name, taxonomy=taxonomy, images=images, source=source)
        before = self.latest_version()
        version = self.append(events, now=now)
        return FileImport(name, digest, version, len({e.event_id for e in events}) if version != before else 0,
                          False, problems)

    def read(self, as_of: int | None = None) -> pd.DataFrame:
        """Every event stored up to version ``as_of`` (default: the latest), in the order appended."""
        versions = self.versions()
        if as_of is not None:
            if as_of < 0 or as_of > (versions[-1] if versions else 0):
                raise ValueError(f"labels has no version {as_of}: the latest is {versions[-1] if versions else 0}")
            versions = [version for version in versions if version <= as_of]
        table = self.catalog.read(LABELS, partitions=[version_name(version) for version in versions])
        return table.to_pandas()


def _check(event: LabelEvent) -> None:
    if event.source not in LABEL_SOURCES:
        raise ValueError(f"label event source must be one of {', '.join(LABEL_SOURCES)}, not {event.source!r} "
                         f"({event.origin})")
    if not event.image_id or not event.label:
        raise ValueError(f"label event without an image id or label ({event.origin})")
    if event.confidence is not None and not 0.0 <= event.confidence <= 1.0:
        raise ValueError(f"label event confidence {event.confidence} is outside [0, 1] ({event.origin})")
    if event.source == "auto" and not event.model_version:
        raise ValueError(f"an auto label event needs its model_version ({event.origin})")


def _row(event: LabelEvent, version: int, recorded_at: datetime) -> dict:
    row = event.as_dict()
    row.update(event_id=event.event_id, at=event.at or recorded_at, labels_version=version, recorded_at=recorded_at)
    return row
