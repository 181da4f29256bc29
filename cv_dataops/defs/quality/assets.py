"""Quality: a score and a flag per issue type for every image of a batch."""


import dagster as dg
import pandas as pd
import pyarrow as pa

from cv_dataops.defs.shared.partitions import (
    PER_BATCH_TAG,
    STALE_OR_NEW,
    batch_partitions,
    table_metadata,
)
from cv_dataops.images.analysis_cache import (
    AnalysisImage,
    batch_sources,
    cached_image_ids,
)
from cv_dataops.images.thumbnails import catalog_thumbnail, markdown_grid
from cv_dataops.images.verified import ContentChanged, VerifiedReader
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.quality import measure as quality_measure
from cv_dataops.quality.issues import issue_names
from cv_dataops.quality.measure import (
    QUALITY_VERSION,
    catalog_columns,
    catalog_scores,
    flag_issues,
    measure_stream,
    quality_version,
)
from cv_dataops.quality.tables import QUALITY
from cv_dataops.resources import CatalogResource, QualityResource


def _worst_images_grid(frame: pd.DataFrame, uris: dict[str, str], read, per_issue: int = 3) -> str:
    sections = {}
    for issue in issue_names():
        flagged = frame[frame[f"is_{issue}"]].nsmallest(per_issue, f"{issue}_score")
        items = [(f"{getattr(row, issue + '_score'):.2f}", image) for row in flagged.itertuples()
                 if (image := catalog_thumbnail(uris[row.image_id], row.image_id, read)) is not None]
        sections[f"{issue} ({int(frame[f'is_{issue}'].sum())})"] = items
    return markdown_grid(sections)


@dg.asset(
    partitions_def=batch_partitions,
    deps=["raw_images"],
    group_name="quality",
    tags=PER_BATCH_TAG,
    kinds={"python", "parquet"},
    # the metrics' version and the thresholds in force: changing either shows every batch stale, and the
    # automation condition then requests the backfill of the stale batches
    code_version=QUALITY_VERSION,  # plus the thresholds' digest: definitions.settings_code_versions
    automation_condition=STALE_OR_NEW,
    metadata=table_metadata(QUALITY),
)
def image_quality(context: dg.AssetExecutionContext, catalog: CatalogResource,
                  quality: QualityResource) -> dg.MaterializeResult:
    """Every image of the batch decoded once at reduced size, in a process pool, streaming: a 0..1 score (lower is
    worse) and a flag for each of CleanVision's issue types, plus exposure clipping, contrast, colourfulness, noise
    and JPEG quality, and the hashes duplicate detection uses. `odd_size` is judged against the whole catalog."""
    batch_id = context.partition_key
    tables = catalog.catalog()
    images = tables.read(IMAGES, [batch_id], columns=["image_id", "uri"]).to_pandas()
    thresholds = quality.quality_thresholds()
    rows, unmeasured, changed = [], {}, 0
    # an image whose file changed since ingest is left unmeasured (ContentChanged), never measured as the old image.
    # The reader knows only the images the cache lacks (the ones it will read): it is pickled to every worker.
    in_cache = cached_image_ids(tables.storage, batch_id, quality_measure.ANALYSIS_SIDE)
    read = VerifiedReader(catalog.uri_reader(), {uri: image_id for image_id, uri in zip(images.image_id, images.uri)
                                                 if image_id not in in_cache})
    cached = [0]

    def sources():  # each image as ingestion decoded it, from the batch's cache; its URI where the cache has none
        for image_id, source in batch_sources(tables.storage, batch_id, zip(images.image_id, images.uri),
                                              analysis_side=quality_measure.ANALYSIS_SIDE):
            cached[0] += isinstance(source, AnalysisImage)
            yield image_id, source

    for done, (image_id, result) in enumerate(
            measure_stream(sources(), workers=quality.workers, read=read), start=1):
        changed += isinstance(result, ContentChanged)
        if isinstance(result, Exception):
            unmeasured[image_id] = f"{type(result).__name__}: {result}"
        else:
            rows.append({"image_id": image_id, **result})
        if done % 500 == 0:
            context.log.info(f"measured {done}/{len(images)} images")
    frame = pd.DataFrame(rows) if rows else QUALITY.empty().to_pandas()
    if rows:
        catalog_images = tables.read(IMAGES, columns=list(catalog_columns())).to_pandas()
        frame = frame.assign(**catalog_scores(frame, catalog_images))
        frame = frame.assign(**flag_issues(frame, thresholds))
    frame["batch_id"] = batch_id
    frame["quality_version"] = quality_version(thresholds)
    uri = tables.write(QUALITY, pa.Table.from_pandas(frame[QUALITY.column_names], preserve_index=False), batch_id)
    counts = {issue: int(frame[f"is_{issue}"].sum()) for issue in issue_names()} if rows else {}
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(frame),
        "issue_counts": dg.MetadataValue.json(counts),
        **{f"count_{issue}": count for issue, count in counts.items()},
        "unusable": int(frame["is_unusable"].sum()) if rows else 0,
        "unmeasured": dg.MetadataValue.json(unmeasured),
        "decoded_at_ingest": cached[0],
        "content_changed": changed,
        "thresholds": dg.MetadataValue.json(thresholds.as_dict()),
        "quality_table": dg.MetadataValue.path(uri),
        "worst_images": dg.MetadataValue.md(_worst_images_grid(frame, dict(zip(images.image_id, images.uri)), catalog.uri_reader())
                                            if rows else "no images"),
    })
