"""What the stages' Dagster definitions share: the batch partitions and schema metadata."""

import dagster as dg

from cv_dataops.core.schema import TableDefinition

# One partition per landing batch; the landing sensor (and `cv-dataops run`) adds them.
batch_partitions = dg.DynamicPartitionsDefinition(name="batches")

# Assets partitioned by batch carry this tag, so one job materializes a batch through every per-batch stage.
PER_BATCH_TAG = {"cv_dataops/scope": "batch"}
per_batch_assets = dg.AssetSelection.tag("cv_dataops/scope", "batch")


# Assets spanning all batches: refresh when anything upstream changed (not waiting for every batch to exist).
SPANNING = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
# Per-batch assets: materialize new batches, and re-materialize every batch whose code version changed (a new
# algorithm version or new thresholds): the automation sensor turns that into a backfill of the stale batches.
STALE_OR_NEW = SPANNING | dg.AutomationCondition.code_version_changed()


def column_schema(table: TableDefinition) -> dg.TableSchema:
    """A catalog table's schema as Dagster shows it (the `dagster/column_schema` metadata)."""
    return dg.TableSchema(columns=[
        dg.TableColumn(column.name, str(column.type), description=column.description,
                       constraints=dg.TableColumnConstraints(nullable=column.nullable))
        for column in table.columns
    ])


def table_metadata(primary: TableDefinition, *others: TableDefinition) -> dict:
    """Definition-time metadata for an asset that writes ``primary`` (and possibly more tables)."""
    metadata = {"dagster/column_schema": column_schema(primary), "cv_dataops/table": primary.name}
    for other in others:
        metadata[f"cv_dataops/{other.name}_schema"] = column_schema(other)
    return metadata
