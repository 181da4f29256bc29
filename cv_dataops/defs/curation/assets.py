"""The curated dataset: junk and duplicates out, a diverse and balanced selection, leak-free splits, and an
immutable, content-addressed snapshot with its exports."""

import json

import dagster as dg
import pyarrow as pa

from cv_dataops.core.storage import read_uri
from cv_dataops.curation import curation as curation_lib
from cv_dataops.curation.pool import curation_pool
from cv_dataops.curation.tables import CURATED
from cv_dataops.defs.shared.partitions import SPANNING, table_metadata
from cv_dataops.resources import CatalogResource, CurationResource, QualityResource

SNAPSHOTS_PREFIX = "snapshots"


@dg.asset(
    deps=["image_quality", "image_duplicates", "image_embeddings", "scenarios"],
    group_name="curation",
    kinds={"python", "parquet"},
    code_version="2",
    metadata=table_metadata(CURATED),
    automation_condition=SPANNING,
)
def curated_dataset(context: dg.AssetExecutionContext, catalog: CatalogResource, quality: QualityResource,
                    curation: CurationResource) -> dg.MaterializeResult:
    """Unusable images and all but one of each duplicate group out; within the budget, a selection balanced over
    labels (or scenarios) that follows each one's distribution in embedding space (kernel herding: typical images
    first, then spread over the rest; or k-center greedy in k-means cells); splits that keep every duplicate group and near-neighbour
    cluster whole, stratified by label. Each version is an immutable snapshot under snapshots/<snapshot_id>/ with
    its manifest and its exports: ImageFolder, CSV, COCO JSON and Label Studio tasks."""
    tables = catalog.catalog()
    storage = catalog.storage()
    settings = curation.settings()
    pool, vectors = curation_pool(tables, quality.max_unusable_rate)
    eligible, excluded = curation_lib.eligible(pool)
    positions = {image_id: i for i, image_id in enumerate(pool.image_id)}
    eligible_vectors = vectors[[positions[i] for i in eligible.image_id]]
    selected = curation_lib.select(eligible, eligible_vectors, settings)
    selected_vectors = vectors[[positions[i] for i in selected.image_id]]
    selected = selected.assign(split=curation_lib.leak_free_split(selected, selected_vectors, settings,
                                                              selected.get("group_id")).values)
    snapshot_id, manifest = curation_lib.snapshot_manifest(selected)
    selected = selected.assign(snapshot_id=snapshot_id)
    folder = f"{SNAPSHOTS_PREFIX}/{snapshot_id}"
    if not storage.exists(f"{folder}/manifest.json"):  # a snapshot is immutable: the same id, the same content
        storage.write_bytes(f"{folder}/export.csv", curation_lib.export_csv(selected))
        storage.write_text(f"{folder}/coco.json", json.dumps(curation_lib.export_coco(
            selected, selected[["image_id", "width", "height"]]), indent=1))
        storage.write_text(f"{folder}/label_studio.json", json.dumps(curation_lib.export_label_studio(selected), indent=1))
        if curation.export_imagefolder:
            curation_lib.export_imagefolder(selected, read_uri,
                                        lambda path, data: storage.write_bytes(f"{folder}/imagefolder/{path}", data))
        storage.write_bytes(f"{folder}/manifest.json", manifest)  # last: its presence means the snapshot is whole
    selected["scenario"] = selected["scenario"].astype("Int32")
    uri = tables.write(CURATED, pa.Table.from_pandas(selected[CURATED.column_names], preserve_index=False))
    splits = selected.split.value_counts().to_dict()
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(selected), "snapshot_id": snapshot_id,
        "snapshot": dg.MetadataValue.path(storage.uri_of(folder)),
        "pool": len(pool), "eligible": len(eligible), "excluded": len(excluded),
        "excluded_reasons": dg.MetadataValue.json(
            excluded.reason.str.replace(r" of .*", "", regex=True).value_counts().to_dict() if len(excluded) else {}),
        **{f"split_{name}": int(count) for name, count in splits.items()},
        "labels": dg.MetadataValue.json(selected.label.value_counts(dropna=False).rename(str).to_dict()
                                        if len(selected) else {}),
        "curated_table": dg.MetadataValue.path(uri)})


nightly_recuration = dg.ScheduleDefinition(
    name="nightly_recuration",
    cron_schedule="0 3 * * *",
    target=dg.AssetSelection.assets("image_duplicates", "scenarios", curated_dataset),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-curate everything every night, whatever the sensors did during the day.",
)
