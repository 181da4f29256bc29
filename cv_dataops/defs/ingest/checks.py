"""Checks on each ingested batch: the tables match the schema, ids are unique, and nothing landed went missing."""

from collections import Counter

import dagster as dg

from cv_dataops.defs.ingest.assets import raw_images
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.ingest.id_index import ImageIdIndex, batch_uniqueness
from cv_dataops.ingest.tables import IMAGES, OBJECTS, QUARANTINE
from cv_dataops.resources import CatalogResource, LandingResource


@dg.asset_check(asset=raw_images, partitions_def=batch_partitions, blocking=True)
def raw_images_schema(context: dg.AssetCheckExecutionContext, catalog: CatalogResource) -> dg.AssetCheckResult:
    """The batch's stored Parquet files have exactly the schema defined in code."""
    tables = catalog.catalog()
    problems = {table.name: table.schema_problems(tables.read_file(table, context.partition_key).schema)
                for table in (IMAGES, QUARANTINE, OBJECTS)}
    problems = {name: found for name, found in problems.items() if found}
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)})


@dg.asset_check(asset=raw_images, partitions_def=batch_partitions, blocking=True)
def raw_images_unique_image_id(context: dg.AssetCheckExecutionContext,
                               catalog: CatalogResource) -> dg.AssetCheckResult:
    """No image_id of the batch appears twice in `images`, in this batch or any other (the same bytes are one
    image). Reads the batch's own rows and the other batches' image-id index, never the whole table."""
    found = batch_uniqueness(catalog.catalog(), context.partition_key)
    return dg.AssetCheckResult(passed=not found.repeated, metadata={
        "images_in_catalog": found.images_in_catalog, "repeated_ids": len(found.repeated),
        "examples": dg.MetadataValue.json(found.repeated[:10]),
        "also_in_batches": dg.MetadataValue.json(
            sorted({b for batches in found.other_batches.values() for b in batches})[:10])})


@dg.asset_check(asset=raw_images, partitions_def=batch_partitions, blocking=True)
def raw_images_accounted_for(context: dg.AssetCheckExecutionContext,
                             catalog: CatalogResource) -> dg.AssetCheckResult:
    """Every object in the batch manifest has exactly one outcome, and that outcome's row exists (a duplicate's
    image in this batch or, by the image-id index, in another)."""
    batch_id = context.partition_key
    tables = catalog.catalog()
    manifest = catalog.ledger().manifest(batch_id)
    ledger = tables.read(OBJECTS, [batch_id]).to_pylist()
    landed = Counter((o.key, o.version) for o in manifest.objects)
    recorded = Counter((row["relative_path"], row["version"]) for row in ledger)
    missing = sorted(key for key in landed if key not in recorded)
    repeated = sorted(key for key, count in recorded.items() if count > 1)
    unexpected = sorted(key for key in recorded if key not in landed)
    batch_images = set(tables.read(IMAGES, [batch_id], columns=["image_id"]).column("image_id").to_pylist())
    duplicate_of = {row["image_id"] for row in ledger if row["outcome"] == "duplicate"} - batch_images
    images_anywhere = batch_images | (set(ImageIdIndex(tables).holders(duplicate_of).by_id) if duplicate_of else set())
    quarantined = set(tables.read(QUARANTINE, [batch_id], columns=["relative_path"])
                      .column("relative_path").to_pylist())
    dangling = [row["relative_path"] for row in ledger if
                (row["outcome"] == "image" and row["image_id"] not in batch_images)
                or (row["outcome"] == "duplicate" and row["image_id"] not in images_anywhere)
                or (row["outcome"] == "quarantined" and row["relative_path"] not in quarantined)]
    outcomes = Counter(row["outcome"] for row in ledger)
    passed = not (missing or repeated or unexpected or dangling)
    return dg.AssetCheckResult(passed=passed, metadata={
        "landed": sum(landed.values()), **{f"outcome_{k}": v for k, v in sorted(outcomes.items())},
        "missing": dg.MetadataValue.json([k for k, _ in missing[:20]]),
        "recorded_twice": dg.MetadataValue.json([k for k, _ in repeated[:20]]),
        "not_in_manifest": dg.MetadataValue.json([k for k, _ in unexpected[:20]]),
        "outcome_without_row": dg.MetadataValue.json(dangling[:20]),
    })


@dg.asset_check(asset=raw_images, partitions_def=batch_partitions)
def raw_images_quarantine_rate(context: dg.AssetCheckExecutionContext, catalog: CatalogResource,
                               landing: LandingResource) -> dg.AssetCheckResult:
    """WARN when a batch quarantines more than `quarantine_rate_warn` of its objects: something upstream broke."""
    ledger = catalog.catalog().read(OBJECTS, [context.partition_key], columns=["outcome"])
    outcomes = Counter(ledger.column("outcome").to_pylist())
    considered = sum(outcomes.values()) - outcomes.get("sidecar", 0)
    rate = outcomes.get("quarantined", 0) / considered if considered else 0.0
    return dg.AssetCheckResult(passed=rate <= landing.quarantine_rate_warn, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"quarantine_rate": rate, "threshold": landing.quarantine_rate_warn,
                                         "quarantined": outcomes.get("quarantined", 0), "objects": considered})
