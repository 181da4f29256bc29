"""The drift check per batch: small drift is WARN, large drift is ERROR (not blocking: a drifted batch is data to
look at and adapt to, not data to hold back)."""

import dagster as dg

from cv_dataops.defs.drift.assets import drift_report
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.drift.tables import DRIFT_SUMMARY
from cv_dataops.resources import CatalogResource

_SEVERITY = {"small": dg.AssetCheckSeverity.WARN, "large": dg.AssetCheckSeverity.ERROR}


@dg.asset_check(asset=drift_report, partitions_def=batch_partitions)
def drift_report_no_drift(context: dg.AssetCheckExecutionContext, catalog: CatalogResource) -> dg.AssetCheckResult:
    """Fails when the batch drifted from its reference: WARN for small effects, ERROR for large ones; the
    metadata names the top cause and the report."""
    rows = catalog.catalog().read(DRIFT_SUMMARY, [context.partition_key]).to_pylist()
    if not rows:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   metadata={"problem": "no drift_summary row for the batch"})
    row = rows[0]
    return dg.AssetCheckResult(
        passed=not row["drifted"], severity=_SEVERITY.get(row["severity"], dg.AssetCheckSeverity.WARN),
        metadata={"severity": row["severity"], "reference_id": row["reference_id"] or "none",
                  "top_cause": row["top_cause"] or "none",
                  "report": dg.MetadataValue.path(row["report_uri"]) if row["report_uri"] else "none"})
