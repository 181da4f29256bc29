"""Quality: a score and a flag per issue type for every image of a batch."""


import hashlib
import json

import dagster as dg
import pandas as pd
import pyarrow as pa

from cv_dataops.core.storage import read_uri
from cv_dataops.defs.shared.partitions import (
    PER_BATCH_TAG,
    STALE_OR_NEW,
    batch_partitions,
    table_metadata,
)
from cv_dataops.images.thumbnails import markdown_grid, thumbnail_data_uri
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.quality import measure as quality_lib
from cv_dataops.quality.measure import (
    ISSUE_TYPES,
    flag_issues,
    measure_stream,
    odd_size_scores,
)
from cv_dataops.quality.tables import QUALITY
from cv_dataops.resources import CatalogResource, QualityResource, build_resources

# Bump when the metrics change: Dagster then shows every batch's quality as stale.
QUALITY_VERSION = "1"


def quality_version(thresholds: quality_lib.QualityThresholds) -> str:
    """The metrics' version plus the thresholds in force: either changing makes stored rows out of date."""
    digest = hashlib.sha256(json.dumps(thresholds.as_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{QUALITY_VERSION}-{digest}"


def _worst_images_grid(frame: pd.DataFrame, uris: dict[str, str], per_issue: int = 3) -> str:
    sections = {}
    for issue in ISSUE_TYPES:
        flagged = frame[frame[f"is_{issue}"]].nsmallest(per_issue, f"{issue}_score")
        items = []
        for row in flagged.itertuples():
            try:
                items.append((f"{getattr(row, issue + '_score'):.2f}", thumbnail_data_uri(read_uri(uris[row.image_id]),
                                                                                         side=48)))
            except Exception:  # a thumbnail is a courtesy; the image may have been moved since
                continue
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
    code_version=quality_version(build_resources()["quality"].quality_thresholds()),
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
    rows, unmeasured = [], {}
    for done, (image_id, result) in enumerate(
            measure_stream(zip(images.image_id, images.uri), workers=quality.workers), start=1):
        if isinstance(result, Exception):
            unmeasured[image_id] = f"{type(result).__name__}: {result}"
        else:
            rows.append({"image_id": image_id, **result})
        if done % 500 == 0:
            context.log.info(f"measured {done}/{len(images)} images")
    frame = pd.DataFrame(rows) if rows else QUALITY.empty().to_pandas()
    if rows:
        catalog_sizes = tables.read(IMAGES, columns=["width", "height"]).to_pandas()
        frame["odd_size_score"] = odd_size_scores(frame["width"].to_numpy(), frame["height"].to_numpy(),
                                                  (catalog_sizes.width * catalog_sizes.height).to_numpy())
        for name, values in flag_issues(frame, thresholds).items():
            frame[name] = values
    frame["batch_id"] = batch_id
    frame["quality_version"] = quality_version(thresholds)
    uri = tables.write(QUALITY, pa.Table.from_pandas(frame[QUALITY.column_names], preserve_index=False), batch_id)
    counts = {issue: int(frame[f"is_{issue}"].sum()) for issue in ISSUE_TYPES} if rows else {}
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(frame),
        "issue_counts": dg.MetadataValue.json(counts),
        **{f"count_{issue}": count for issue, count in counts.items()},
        "unusable": int(frame["is_unusable"].sum()) if rows else 0,
        "unmeasured": dg.MetadataValue.json(unmeasured),
        "thresholds": dg.MetadataValue.json(thresholds.as_dict()),
        "quality_table": dg.MetadataValue.path(uri),
        "worst_images": dg.MetadataValue.md(_worst_images_grid(frame, dict(zip(images.image_id, images.uri)))
                                            if rows else "no images"),
    })
