"""Drift: every batch compared with the data the current model was trained on (the curated snapshot's train split
by default), in the per-batch job: the tests, one decision at the configured false-alarm rate, the causes in
words, a self-contained HTML report, and a webhook alert on large drift; and data_health, the per-batch trend of
the rates a team watches."""

import dagster as dg
import pandas as pd

from cv_dataops.defs.shared.partitions import (
    PER_BATCH_TAG,
    SPANNING,
    STALE_OR_NEW,
    batch_partitions,
    table_metadata,
)
from cv_dataops.drift.alerts import alert_payload, post_alert
from cv_dataops.drift.batch import PromotedModel, drift_for_batch
from cv_dataops.drift.explain import most_atypical
from cv_dataops.drift.health import health_rows, trend_png
from cv_dataops.drift.report import write_report
from cv_dataops.drift.tables import DATA_HEALTH, DRIFT, DRIFT_ATYPICALITY, DRIFT_SUMMARY
from cv_dataops.embeddings.vectors import current_vectors
from cv_dataops.images.thumbnails import (
    catalog_thumbnail_png,
    markdown_grid,
    png_data_uri,
)
from cv_dataops.ingest.tables import IMAGES, QUARANTINE
from cv_dataops.labels.registry import REGISTRY_FOLDER, ModelRegistry
from cv_dataops.labels.tables import AUDITED_LABELS, LABEL_ISSUES
from cv_dataops.labels.training import current_model, holdout_ids
from cv_dataops.quality.issues import issue_types
from cv_dataops.quality.tables import QUALITY
from cv_dataops.resources import CatalogResource, DriftResource, EmbeddingResource

DRIFT_VERSION = "2"


def _promoted_model(context, catalog: CatalogResource, tables, embedder_version: str | None) -> PromotedModel | None:
    """The promoted label model when it reads this embedder's vectors (read as it stands, like the reference: a
    declared dependency on label_model would re-run every batch's report on each new model)."""
    registry = ModelRegistry(catalog.storage().child(REGISTRY_FOLDER))
    model, version, _, error = current_model(registry, embedder_version)
    if error:
        context.log.warning(f"drift: no model family, the promoted label model cannot be loaded: {error}")
    if model is None:
        return None
    return PromotedModel(model, version, holdout_ids(registry), tables.read(AUDITED_LABELS).to_pandas())


@dg.asset(
    partitions_def=batch_partitions,
    deps=["image_quality", "image_embeddings"],
    group_name="drift",
    tags=PER_BATCH_TAG,
    kinds={"python", "parquet", "html"},
    code_version=DRIFT_VERSION,
    automation_condition=STALE_OR_NEW,
    metadata=table_metadata(DRIFT_SUMMARY, DRIFT, DRIFT_ATYPICALITY),
)
def drift_report(context: dg.AssetExecutionContext, catalog: CatalogResource, embedding: EmbeddingResource,
                 drift: DriftResource) -> dg.MaterializeResult:
    """Whether the batch drifted from its reference, where and why: KS / chi-squared per image property, MMD and a
    domain classifier on the embeddings, scenario shares and novel images, and with a promoted label model its
    predicted labels, confidence and estimated accuracy; weighted Holm over all of them at alpha; tables drift, drift_summary and drift_atypicality, the report under reports/drift/, and on large drift
    a webhook alert (retried, never failing the run). With no reference yet it says so and flags nothing."""
    batch_id = context.partition_key
    tables, storage = catalog.catalog(), catalog.storage()
    vectors = current_vectors(tables, storage, embedding.spec)
    current = None if vectors.none_current_yet else vectors
    promoted = _promoted_model(context, catalog, tables, vectors.embedder_version) if current else None
    found = drift_for_batch(tables, batch_id, current, settings=drift.drift_settings(),
                            reference_settings=drift.reference_settings(), promoted=promoted)
    result = found.result
    read = catalog.uri_reader()
    thumbnails = {}
    for image_id in most_atypical(result.atypicality, drift.thumbnails)["image_id"]:
        if image_id in found.uris and (png := catalog_thumbnail_png(found.uris[image_id], image_id, read)):
            thumbnails[image_id] = png
    report_uri = write_report(storage, result, thumbnails)
    tables.write(DRIFT, result.drift_table(), batch_id)
    tables.write(DRIFT_ATYPICALITY, result.atypicality_table(), batch_id)
    summary_uri = tables.write(DRIFT_SUMMARY, result.summary_table(report_uri), batch_id)
    alert = {"sent": False, "reason": "no webhook configured" if not drift.webhook_url else "not large drift"}
    if drift.webhook_url and result.severity == "large":
        outcome = post_alert(drift.webhook_url, alert_payload(result, report_uri), drift.webhook_kind)
        alert = {"sent": outcome.delivered, "attempts": outcome.attempts, "status": outcome.status,
                 "error": outcome.error}
        (context.log.info if outcome.delivered else context.log.warning)(
            f"drift alert {'delivered' if outcome.delivered else 'not delivered: ' + str(outcome.error)}")
    if result.drifted:
        context.log.warning(f"batch {batch_id} drifted ({result.severity}): {result.top_cause}")
    metadata = result.metadata()
    return dg.MaterializeResult(metadata={
        **{key: value for key, value in metadata.items() if key != "causes"},
        "causes": dg.MetadataValue.json(metadata["causes"]),
        "reference": found.reference.reason, "report": dg.MetadataValue.path(report_uri),
        "drift_summary_table": dg.MetadataValue.path(summary_uri), "alert": dg.MetadataValue.json(alert),
        "most_atypical": dg.MetadataValue.md(markdown_grid({"most atypical first": [
            (image_id[:12], png_data_uri(png)) for image_id, png in thumbnails.items()]}))})


@dg.asset(
    deps=["raw_images", "image_quality", "drift_report", "label_issues"],
    group_name="drift",
    kinds={"python", "parquet"},
    code_version="1",
    automation_condition=SPANNING,
    metadata=table_metadata(DATA_HEALTH),
)
def data_health(catalog: CatalogResource) -> dg.MaterializeResult:
    """Per batch, in landing order: quarantine and quality-issue rates, drift (domain-classifier AUC, largest
    property shift, severity), label-error rate and the model's estimated accuracy; table data_health and a trend
    plot in the metadata, drifted batches shaded."""
    tables = catalog.catalog()
    rows = health_rows(tables.read(IMAGES, columns=["image_id", "batch_id"]).to_pandas(),
                       tables.read(QUARANTINE, columns=["batch_id"]).to_pandas(),
                       tables.read(QUALITY, columns=["batch_id", "is_unusable",
                                                     *(f"is_{issue.name}" for issue in issue_types())]).to_pandas(),
                       tables.read(DRIFT, columns=["batch_id", "test", "feature", "effect_size"]).to_pandas(),
                       tables.read(DRIFT_SUMMARY).to_pandas(),
                       tables.read(LABEL_ISSUES, columns=["image_id", "is_issue"]).to_pandas(),
                       tables.read(AUDITED_LABELS, columns=["image_id"]).to_pandas())
    uri = tables.write(DATA_HEALTH, DATA_HEALTH.from_rows(
        rows.astype(object).where(rows.notna(), None).to_dict("records")))
    latest = rows.iloc[-1] if len(rows) else None

    def number(column: str) -> float | None:
        return None if latest is None or pd.isna(latest[column]) else float(latest[column])

    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(rows), "table": dg.MetadataValue.path(uri),
        "batches_drifted": int(rows["drift_severity"].isin(("small", "large")).sum()),
        "latest_batch": latest["batch_id"] if latest is not None else "none",
        "latest_quarantine_rate": number("quarantine_rate"), "latest_unusable_rate": number("unusable_rate"),
        "latest_estimated_accuracy": number("estimated_accuracy"),
        "trend": dg.MetadataValue.md(f"![data health per batch]({png_data_uri(trend_png(rows))})")})
