"""Ingestion: a landing batch becomes rows of `images`, `quarantine` and the `objects` ledger."""

import dagster as dg

from cv_dataops.defs.shared.partitions import (
    PER_BATCH_TAG,
    batch_partitions,
    table_metadata,
)
from cv_dataops.images.analysis_cache import write_analysis_cache
from cv_dataops.ingest.batch import ingest_batch
from cv_dataops.ingest.id_index import ImageIdIndex
from cv_dataops.ingest.tables import IMAGES, OBJECTS, QUARANTINE
from cv_dataops.resources import CatalogResource, LandingResource

INGEST_VERSION = "1"
LABEL_PROBLEM_COUNT = "label_problem_count"  # metadata: rows of the labels file not applied (the CLI prints it)
LABEL_PROBLEMS_SHOWN = 200  # metadata "label_problems": the first rows not applied (file, line, problem)


@dg.asset(
    partitions_def=batch_partitions,
    group_name="ingestion",
    tags=PER_BATCH_TAG,
    kinds={"python", "parquet"},
    code_version=INGEST_VERSION,
    metadata=table_metadata(IMAGES, QUARANTINE, OBJECTS),
)
def raw_images(context: dg.AssetExecutionContext, catalog: CatalogResource,
               landing: LandingResource) -> dg.MaterializeResult:
    """Every object of one landing batch, decoded safely: good images to `images`, the rest to `quarantine`
    with a reason, and every object's outcome to the `objects` ledger. Image bytes stay where they landed. Earlier
    batches' ids are looked up in the image-id index, never read from their tables."""
    batch_id = context.partition_key
    tables = catalog.catalog()
    ledger = catalog.ledger()
    manifest = ledger.manifest(batch_id)
    landing_storage = landing.storage(manifest.landing_uri)
    id_index = ImageIdIndex(tables)

    total, done = len(manifest.objects), [0]

    def progress(count: int) -> None:
        done[0] += count
        if done[0] % 500 == 0 or done[0] == total:
            context.log.info(f"examined {done[0]}/{total} objects")

    def known_earlier(ids: list[str]) -> set[str]:
        return id_index.known_before(batch_id, ids)

    result = ingest_batch(manifest, landing_storage, known_image_ids=known_earlier,
                          labels=landing.label_source(landing_storage), limits=landing.limits(),
                          workers=landing.workers, progress=progress, handed_over=ledger.handed_over(manifest))
    ledger.record_deferred(batch_id, result.deferred)  # before the tables: a crash in between defers once more
    # first the decoded images (for quality and embeddings), then the tables that make the batch visible
    cache_uri = write_analysis_cache(tables.storage, batch_id, result.analysis)
    uris = {table.name: tables.write(table, data, batch_id) for table, data in
            ((IMAGES, result.images), (QUARANTINE, result.quarantine), (OBJECTS, result.objects))}
    id_index.write(batch_id, result.images.column("image_id").to_pylist())
    quarantine_preview = result.quarantine.select(["relative_path", "reason", "detail"]).slice(0, 20).to_pandas()
    if result.label_problems:
        context.log.warning(f"{len(result.label_problems)} row(s) of the labels file not applied, e.g. line "
                            f"{result.label_problems[0].line}: {result.label_problems[0].problem}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": result.images.num_rows,
        "objects": total,
        "images": result.images.num_rows,
        "duplicates": result.duplicates,
        "quarantined": result.quarantine.num_rows,
        "quarantine_reasons": dg.MetadataValue.json(result.reasons),
        "deferred": len(result.deferred),  # not read for now (S3 down, 5xx, a file gone): the next batch retries
        "deferred_examples": dg.MetadataValue.json(dict(list(result.deferred.items())[:20])),
        LABEL_PROBLEM_COUNT: len(result.label_problems),
        "label_problems": dg.MetadataValue.json([problem.as_dict() for problem in
                                                 result.label_problems[:LABEL_PROBLEMS_SHOWN]]),
        "landing_uri": dg.MetadataValue.url(manifest.landing_uri) if "://" in manifest.landing_uri
        else dg.MetadataValue.path(manifest.landing_uri),
        "images_table": dg.MetadataValue.path(uris["images"]),
        "quarantine_table": dg.MetadataValue.path(uris["quarantine"]),
        "analysis_cache": dg.MetadataValue.path(cache_uri),
        "quarantine_preview": dg.MetadataValue.md(quarantine_preview.to_markdown(index=False)
                                                  if len(quarantine_preview) else "nothing quarantined"),
    })


def label_problem_counts(instance: dg.DagsterInstance, batch_ids: list[str]) -> dict[str, int]:
    """How many rows of the labels file each batch's latest ``raw_images`` did not apply (for the CLI summary);
    batches without a materialization are left out."""
    counts = {}
    for batch_id in batch_ids:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_images"), asset_partitions=[batch_id]), limit=1).records
        if records and records[0].asset_materialization is not None:
            value = records[0].asset_materialization.metadata.get(LABEL_PROBLEM_COUNT)
            counts[batch_id] = int(value.value) if value is not None else 0
    return counts
