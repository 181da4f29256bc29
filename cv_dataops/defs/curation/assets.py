"""The curated dataset: junk and duplicates out, a diverse and balanced selection, leak-free splits, and an
immutable, content-addressed snapshot with its exports."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg

from cv_dataops.curation.dataset import (
    IMAGEFOLDER_SKIPPED,
    curate,
    current_splits,
    prune_imagefolders,
    record_current,
    split_changes,
    write_snapshot,
)
from cv_dataops.curation.pool import curation_pool
from cv_dataops.curation.tables import CURATED
from cv_dataops.defs.shared.partitions import SPANNING, table_metadata
from cv_dataops.embeddings.graph_store import kept_pairs
from cv_dataops.embeddings.tables import EMBEDDINGS
from cv_dataops.embeddings.vectors import current_vectors, waiting_message
from cv_dataops.resources import (
    CatalogResource,
    CurationResource,
    EmbeddingResource,
    QualityResource,
)


@dg.asset(
    deps=["image_quality", "image_duplicates", "image_embeddings", "neighbour_index", "scenarios", "audited_labels",
          "drift_report"],
    group_name="curation",
    kinds={"python", "parquet"},
    code_version="6",  # 4: the audited label, not the landing label; 5: drifted batches favoured under a budget;
    # 6: near pairs from the neighbour graph's kept edges once it holds every batch
    metadata=table_metadata(CURATED),
    automation_condition=SPANNING,
    output_required=False,
)
def curated_dataset(context: dg.AssetExecutionContext, catalog: CatalogResource, quality: QualityResource,
                    curation: CurationResource, embedding: EmbeddingResource) -> Iterator[dg.MaterializeResult]:
    """Unusable images and all but one of each duplicate group out; within the budget, a selection balanced over
    labels (or scenarios) that follows each one's distribution in embedding space (kernel herding: typical images
    first, then spread over the rest; or k-center greedy in k-means cells); splits that keep every duplicate group
    and near-neighbour cluster whole, stratified by label. Each version is an immutable snapshot under
    snapshots/<snapshot_id>/ with its manifest and its exports: ImageFolder, CSV, COCO JSON and Label Studio tasks.
    Only images embedded by the current embedder are curated: after a change of embedder, those still waiting to
    be re-embedded are left out until they are (the metadata says how many); before the first batch is
    re-embedded, the asset waits (the last version stays current)."""
    tables = catalog.catalog()
    storage = catalog.storage()
    vectors = current_vectors(tables, storage, embedding.spec)
    if vectors.none_current_yet:
        context.log.warning(waiting_message(vectors))
        return
    pool, pool_vectors = curation_pool(tables, quality.max_unusable_rate, vectors)
    near = kept_pairs(storage, vectors.embedder_version, tables.partition_versions(EMBEDDINGS))
    previous_splits = current_splits(storage)
    dataset = curate(pool, pool_vectors, curation.settings(), near, previous_splits)
    folder = write_snapshot(storage, dataset, catalog.uri_reader(), imagefolder=curation.export_imagefolder)
    uri = tables.write(CURATED, dataset.table())
    now = datetime.now(UTC).isoformat(timespec="seconds")
    pruned = prune_imagefolders(storage, record_current(storage, dataset.snapshot_id, now),
                                curation.keep_imagefolders, now)
    if pruned:
        context.log.info(f"removed the ImageFolder copies of {len(pruned)} older snapshot(s) (keep_imagefolders="
                         f"{curation.keep_imagefolders}); `cv-dataops export SNAPSHOT -o DIR` rebuilds one")
    skipped_key = f"{folder}/{IMAGEFOLDER_SKIPPED}"
    skipped = json.loads(storage.read_text(skipped_key)) if storage.exists(skipped_key) else []
    if skipped:
        context.log.warning(f"{len(skipped)} image(s) left out of the ImageFolder export: their files changed "
                            f"since ingest (see {storage.uri_of(skipped_key)})")
    selected, excluded = dataset.selected, dataset.excluded
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": len(selected), "snapshot_id": dataset.snapshot_id,
        "snapshot": dg.MetadataValue.path(storage.uri_of(folder)),
        "pool": len(pool), "eligible": dataset.eligible, "excluded": len(excluded),
        "excluded_reasons": dg.MetadataValue.json(
            excluded.reason.str.replace(r" of .*", "", regex=True).value_counts().to_dict() if len(excluded) else {}),
        **{f"split_{name}": int(count) for name, count in selected.split.value_counts().to_dict().items()},
        "labels": dg.MetadataValue.json(selected.label.value_counts(dropna=False).rename(str).to_dict()
                                        if len(selected) else {}),
        **vectors.summary(),
        "near_pairs_from": near.used or "-",
        **split_changes(selected, previous_splits),
        "imagefolder_skipped": dg.MetadataValue.json(skipped),
        "imagefolders_pruned": dg.MetadataValue.json(pruned),
        "curated_table": dg.MetadataValue.path(uri)})


nightly_recuration = dg.ScheduleDefinition(
    name="nightly_recuration",
    cron_schedule="0 3 * * *",
    target=dg.AssetSelection.assets("image_duplicates", "scenarios", curated_dataset),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-curate everything every night, whatever the sensors did during the day.",
)
