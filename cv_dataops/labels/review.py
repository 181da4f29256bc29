"""Label files dropped under the data root (``imports/`` for a team's own files, ``reviews/`` for review decisions)
and appending them to the `labels` store.

A file is known by its name and the SHA-256 of its bytes (:func:`file_key`): the review sensor's cursor keeps those
keys, so a file is picked up once, and an edited file (same name, new bytes) is picked up again. Appending is
idempotent by content as well (:meth:`~cv_dataops.labels.store.LabelStore.append_file`), so a file that reaches
the store twice (a repeated run, a copy under another name) adds nothing. Files are never moved or deleted: they
stay where the team put them, as the record of what was decided.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from cv_dataops.core.storage import ObjectInfo, Storage
from cv_dataops.labels.sources import ImageLookup, content_digest
from cv_dataops.labels.store import FileImport, LabelStore
from cv_dataops.labels.taxonomy import Taxonomy

LABEL_FILE_EXTENSIONS = (".csv", ".json")


@dataclass(frozen=True)
class DroppedFile:
    name: str  # relative to the folder
    digest: str
    size: int

    @property
    def key(self) -> str:
        return file_key(self.name, self.digest)


def file_key(name: str, digest: str) -> str:
    return f"{name}@{digest}"


def listed_files(folder: Storage) -> list[ObjectInfo]:
    """The label files in ``folder`` (``.csv`` and ``.json``, any depth, hidden and unsafe names skipped), by name;
    each listing's ``version`` changes when the file may have changed (size and mtime, or the S3 ETag)."""
    found = []
    for info in folder.list():
        base = posixpath.basename(info.key)
        if info.unsafe_reason is None and not base.startswith(".") and \
                posixpath.splitext(base.lower())[1] in LABEL_FILE_EXTENSIONS:
            found.append(info)
    return sorted(found, key=lambda info: info.key)


def dropped_names(folder: Storage) -> list[str]:
    return [info.key for info in listed_files(folder)]


def dropped_files(folder: Storage) -> Iterator[tuple[DroppedFile, bytes]]:
    """Each label file of ``folder`` with its bytes, in name order."""
    for name in dropped_names(folder):
        data = folder.read_bytes(name)
        yield DroppedFile(name, content_digest(data), len(data)), data


def append_dropped(store: LabelStore, folder: Storage, *, source: str, taxonomy: Taxonomy,
                   images: ImageLookup) -> list[FileImport]:
    """Append every label file of ``folder`` not stored yet (by content) as ``source`` events; one
    :class:`FileImport` per file, saying what it did and which rows were refused (file and line)."""
    return [store.append_file(data, folder.uri_of(dropped.name), taxonomy=taxonomy, images=images, source=source)
            for dropped, data in dropped_files(folder)]


def imports_summary(imports: list[FileImport], limit: int = 20) -> dict:
    """What a run's metadata shows of appended files: counts, and the first ``limit`` problems with file and line."""
    problems = [str(problem) for result in imports for problem in result.problems]
    return {"files": len(imports), "files_appended": sum(1 for r in imports if r.appended),
            "files_already_stored": sum(1 for r in imports if r.already_stored),
            "events_appended": sum(r.appended for r in imports), "problem_count": len(problems),
            "problems": problems[:limit]}


def pending_files(store: LabelStore, folder: Storage) -> list[DroppedFile]:
    """The label files of ``folder`` whose content the store does not hold yet (what a run would append): lets
    `cv-dataops run` see that review decisions are waiting although no batch changed."""
    stored = store.source_digests()
    return [dropped for dropped, _ in dropped_files(folder) if dropped.digest not in stored]
