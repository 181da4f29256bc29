"""Checks on quality: GX suites (schema, ranges, nulls) with a validation page per batch, issue rates (WARN),
unusable batches (ERROR, blocking)."""


import dagster as dg

from cv_dataops.defs.quality.assets import image_quality
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.quality.gating import batch_is_usable, unusable_rate
from cv_dataops.quality.issues import issue_names
from cv_dataops.quality.tables import QUALITY
from cv_dataops.quality.validation_report import validate_and_report
from cv_dataops.resources import CatalogResource, QualityResource


@dg.asset_check(asset=image_quality, partitions_def=batch_partitions, blocking=True)
def quality_expectations(context: dg.AssetCheckExecutionContext, catalog: CatalogResource) -> dg.AssetCheckResult:
    """The great_expectations suite `cv_dataops/quality/suites/quality.json` (plus what the schema implies) on the
    batch's quality rows; the result is a self-contained page under the data root (reports/validation/)."""
    batch_id = context.partition_key
    frame = catalog.catalog().read(QUALITY, [batch_id]).to_pandas()
    summary = validate_and_report(frame, "quality", batch_id, catalog.storage())
    return dg.AssetCheckResult(passed=summary.success, metadata={
        "evaluated_expectations": summary.evaluated, "successful_expectations": summary.successful,
        "failures": dg.MetadataValue.json(summary.failures),
        "report": dg.MetadataValue.path(summary.report_uri), "report_index": dg.MetadataValue.path(summary.index_uri)})


@dg.asset_check(asset=image_quality, partitions_def=batch_partitions)
def quality_issue_rates(context: dg.AssetCheckExecutionContext, catalog: CatalogResource,
                        quality: QualityResource) -> dg.AssetCheckResult:
    """WARN when any issue type affects more than `max_issue_rate` of the batch."""
    frame = catalog.catalog().read(QUALITY, [context.partition_key]).to_pandas()
    rates = {issue: float(frame[f"is_{issue}"].mean()) if len(frame) else 0.0 for issue in issue_names()}
    over = {issue: rate for issue, rate in rates.items() if rate > quality.max_issue_rate}
    return dg.AssetCheckResult(passed=not over, severity=dg.AssetCheckSeverity.WARN, metadata={
        "rates": dg.MetadataValue.json(rates), "over_limit": dg.MetadataValue.json(over),
        "limit": quality.max_issue_rate, "images": len(frame)})


@dg.asset_check(asset=image_quality, partitions_def=batch_partitions, blocking=True)
def quality_batch_usable(context: dg.AssetCheckExecutionContext, catalog: CatalogResource,
                         quality: QualityResource) -> dg.AssetCheckResult:
    """ERROR, blocking, when most of the batch is unusable: nothing downstream consumes it."""
    frame = catalog.catalog().read(QUALITY, [context.partition_key], columns=["is_unusable"]).to_pandas()
    rate = unusable_rate(frame.is_unusable)
    return dg.AssetCheckResult(passed=batch_is_usable(frame.is_unusable, quality.max_unusable_rate), metadata={
        "unusable_rate": rate, "limit": quality.max_unusable_rate, "images": len(frame)})


@dg.asset_check(asset=image_quality, partitions_def=batch_partitions)
def quality_every_image_measured(context: dg.AssetCheckExecutionContext,
                                 catalog: CatalogResource) -> dg.AssetCheckResult:
    """WARN when an image of the batch has no quality row (its bytes could not be read again)."""
    tables = catalog.catalog()
    batch_id = context.partition_key
    images = set(tables.read(IMAGES, [batch_id], columns=["image_id"]).column("image_id").to_pylist())
    measured = set(tables.read(QUALITY, [batch_id], columns=["image_id"]).column("image_id").to_pylist())
    missing = sorted(images - measured)
    return dg.AssetCheckResult(passed=not missing, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"images": len(images), "unmeasured": dg.MetadataValue.json(missing[:20])})
