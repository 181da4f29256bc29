"""Whether every landed object of a batch has exactly one outcome and that outcome's row exists, reading only the
batch's own manifest and rows, the image-id index for duplicates of images of other batches, and the batch's
deferred note (a deferred object has no row anywhere: the note is what makes the next planning retry it)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cv_dataops.core.catalog import Catalog
from cv_dataops.ingest.id_index import ImageIdIndex
from cv_dataops.ingest.landing import BatchLedger, BatchManifest
from cv_dataops.ingest.tables import IMAGES, OBJECTS, QUARANTINE


@dataclass(frozen=True)
class Accounting:
    """Landed object versions (path, version) missing from the ledger, recorded twice, or not in the manifest;
    paths whose outcome has no row (an image not in `images`, a duplicate of no image, a quarantine without its
    row, a deferred object its batch's deferred note does not name, so it would never be retried); and the count
    of each outcome."""

    landed: int
    missing: list[tuple[str, str]] = field(default_factory=list)
    recorded_twice: list[tuple[str, str]] = field(default_factory=list)
    not_in_manifest: list[tuple[str, str]] = field(default_factory=list)
    outcome_without_row: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not (self.missing or self.recorded_twice or self.not_in_manifest or self.outcome_without_row)


def account_for_batch(catalog: Catalog, manifest: BatchManifest) -> Accounting:
    batch_id = manifest.batch_id
    ledger = catalog.read(OBJECTS, [batch_id]).to_pylist()
    landed = Counter((o.key, o.version) for o in manifest.objects)
    recorded = Counter((row["relative_path"], row["version"]) for row in ledger)
    batch_images = set(catalog.read(IMAGES, [batch_id], columns=["image_id"]).column("image_id").to_pylist())
    duplicate_of = {row["image_id"] for row in ledger if row["outcome"] == "duplicate"} - batch_images
    images_anywhere = batch_images | (set(ImageIdIndex(catalog).holders(duplicate_of).by_id) if duplicate_of
                                      else set())
    quarantined = set(catalog.read(QUARANTINE, [batch_id], columns=["relative_path"])
                      .column("relative_path").to_pylist())
    deferred = BatchLedger(catalog.storage).deferred_keys(batch_id) if any(
        row["outcome"] == "deferred" for row in ledger) else {}
    dangling = [row["relative_path"] for row in ledger if
                (row["outcome"] == "image" and row["image_id"] not in batch_images)
                or (row["outcome"] == "duplicate" and row["image_id"] not in images_anywhere)
                or (row["outcome"] == "quarantined" and row["relative_path"] not in quarantined)
                or (row["outcome"] == "deferred" and row["relative_path"] not in deferred)]
    return Accounting(
        landed=sum(landed.values()),
        missing=sorted(key for key in landed if key not in recorded),
        recorded_twice=sorted(key for key, count in recorded.items() if count > 1),
        not_in_manifest=sorted(key for key in recorded if key not in landed),
        outcome_without_row=dangling,
        outcomes=dict(sorted(Counter(row["outcome"] for row in ledger).items())))
