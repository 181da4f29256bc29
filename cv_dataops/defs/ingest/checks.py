"""Checks on each ingested batch: the tables match the schema, ids are unique, and nothing landed went missing."""

from collections import Counter

import dagster as dg

from cv_dataops.defs.ingest.assets import raw_images
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.ingest.accounting import account_for_batch
from cv_dataops.ingest.id_index import batch_uniqueness
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
    found = account_for_batch(catalog.catalog(), catalog.ledger().manifest(context.partition_key))
    return dg.AssetCheckResult(passed=found.passed, metadata={
        "landed": found.landed, **{f"outcome_{k}": v for k, v in found.outcomes.items()},
        "missing": dg.MetadataValue.json([k for k, _ in found.missing[:20]]),
        "recorded_twice": dg.MetadataValue.json([k for k, _ in found.recorded_twice[:20]]),
        "not_in_manifest": dg.MetadataValue.json([k for k, _ in found.not_in_manifest[:20]]),
        "outcome_without_row": dg.MetadataValue.json(found.outcome_without_row[:20]),
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
