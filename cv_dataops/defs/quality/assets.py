"""Quality: a score and a flag per issue type for every image of a batch, and duplicate groups across all batches."""


import hashlib
import json

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from cv_dataops.defs.embeddings.assets import image_embeddings
from cv_dataops.defs.ingestion.assets import raw_images
from cv_dataops.defs.shared import PER_BATCH_TAG, SPANNING, STALE_OR_NEW, batch_partitions, table_metadata
from cv_dataops.lib import quality as quality_lib
from cv_dataops.lib.duplicates import DuplicatePair, find_embedding_pairs, find_pairs, group_duplicates
from cv_dataops.lib.quality import ISSUE_TYPES, flag_issues, measure_stream, odd_size_scores
from cv_dataops.lib.storage import read_uri
from cv_dataops.lib.tables import DUPLICATE_PAIRS, DUPLICATES, EMBEDDINGS, IMAGES, QUALITY
from cv_dataops.lib.thumbnails import markdown_grid, thumbnail_data_uri
from cv_dataops.resources import CatalogResource, QualityResource, build_resources


# Bump when the metrics change: Dagster then shows every batch's quality as stale.
QUALITY_VERSION = "1"
DUPLICATES_STATE_KEY = "state/image_duplicates.json"


def quality_version(thresholds: quality_lib.QualityThresholds) -> str:
    """The metrics' version plus the thresholds in force: either changing makes stored rows out of date."""
    digest = hashlib.sha256(json.dumps(thresholds.as_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{QUALITY_VERSION}-{digest}"


def blocked_batches(quality: pd.DataFrame, max_unusable_rate: float) -> set[str]:
    """Batches where most images are unusable: downstream stages leave them out."""
    if quality.empty:
        return set()
    rates = quality.groupby("batch_id")["is_unusable"].mean()
    return set(rates[rates > max_unusable_rate].index)


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
    deps=[raw_images],
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


def _duplicate_groups_grid(groups: pd.DataFrame, uris: dict[str, str], limit: int = 5) -> str:
    sections = {}
    for group_id, members in list(groups.groupby("group_id"))[:limit]:
        items = []
        for row in members.head(4).itertuples():
            try:
                caption = ("keep " if row.keep else "") + row.kind
                items.append((caption, thumbnail_data_uri(read_uri(uris[row.image_id]), side=48)))
            except Exception:
                continue
        sections[f"{group_id} ({len(members)} images)"] = items
    return markdown_grid(sections)


@dg.asset(
    deps=[image_quality, image_embeddings],
    group_name="quality",
    kinds={"python", "parquet"},
    code_version="2",
    metadata=table_metadata(DUPLICATES, DUPLICATE_PAIRS),
    automation_condition=SPANNING,
)
def image_duplicates(context: dg.AssetExecutionContext, catalog: CatalogResource,
                     quality: QualityResource) -> dg.MaterializeResult:
    """Exact and near duplicate groups over all batches. Only images not seen before are looked up: in a
    multi-index Hamming index of every image's perceptual hashes, and by embedding distance against every
    embedding (flips and crops the hashes miss); the pairs found earlier are kept, so adding a batch never compares
    all pairs again. Batches whose quality check blocked them are left out."""
    tables = catalog.catalog()
    storage = catalog.storage()
    hashes = tables.read(QUALITY, columns=["image_id", "batch_id", "pixel_hash", "phash", "dhash", "width",
                                           "height", "blurry_score", "is_unusable", "quality_version"]).to_pandas()
    blocked = blocked_batches(hashes, quality.max_unusable_rate)
    hashes = hashes[~hashes.batch_id.isin(blocked)]
    present = set(hashes.image_id)
    settings = quality.duplicate_settings()
    embedding_settings = quality.embedding_duplicate_settings()
    versions = sorted(set(hashes.quality_version))
    embedded = tables.read(EMBEDDINGS, columns=["image_id", "vector", "embedder_version"]).to_pandas()
    embedded = embedded[embedded.image_id.isin(present)]
    embedder_versions = sorted(set(embedded.embedder_version))
    try:
        state = json.loads(storage.read_text(DUPLICATES_STATE_KEY))
    except FileNotFoundError:
        state = {}
    fresh_start = state.get("quality_versions") != versions or state.get("settings") != repr(settings)
    embedding_key = {"embedder_versions": embedder_versions, "settings": repr(embedding_settings)}
    embedding_fresh_start = fresh_start or state.get("embedding") != embedding_key
    previous = [] if fresh_start else [
        DuplicatePair(r["image_id_a"], r["image_id_b"], r["kind"], int(r["distance"]), r.get("found_by") or "hash",
                      r.get("embedding_distance"))
        for r in tables.read(DUPLICATE_PAIRS).to_pylist()]
    if embedding_fresh_start:
        previous = [p for p in previous if p.found_by == "hash"]
    indexed = set() if fresh_start else set(state.get("indexed", []))
    new = hashes[~hashes.image_id.isin(indexed)]
    pairs = {(p.a, p.b): p for p in previous}
    for pair in find_pairs(new, hashes, settings):
        pairs[(pair.a, pair.b)] = pair
    embedding_indexed = set() if embedding_fresh_start else set(state.get("embedding_indexed", []))
    for version, members in embedded.groupby("embedder_version"):
        vectors = np.stack(members.vector.to_numpy()).astype(np.float32)
        looked_up = ~members.image_id.isin(embedding_indexed).to_numpy()
        for pair in find_embedding_pairs(members.image_id[looked_up].tolist(), vectors[looked_up],
                                         members.image_id.tolist(), vectors, hashes, embedding_settings):
            if (pair.a, pair.b) not in pairs:  # what the hashes found stays theirs
                pairs[(pair.a, pair.b)] = pair
    pairs = [p for key, p in sorted(pairs.items()) if p.a in present and p.b in present]
    groups = group_duplicates(pairs, hashes, previous=None if fresh_start else tables.read(DUPLICATES).to_pandas())
    tables.write(DUPLICATE_PAIRS, DUPLICATE_PAIRS.from_rows(
        {"image_id_a": p.a, "image_id_b": p.b, "kind": p.kind, "distance": p.distance, "found_by": p.found_by,
         "embedding_distance": p.embedding_distance} for p in pairs))
    uri = tables.write(DUPLICATES, pa.Table.from_pandas(groups[DUPLICATES.column_names], preserve_index=False))
    storage.write_text(DUPLICATES_STATE_KEY, json.dumps({
        "quality_versions": versions, "settings": repr(settings), "indexed": sorted(present),
        "embedding": embedding_key, "embedding_indexed": sorted(set(embedded.image_id))}))
    images = tables.read(IMAGES, columns=["image_id", "uri"]).to_pandas()
    kinds = groups.kind.value_counts().to_dict() if len(groups) else {}
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(groups),
        "groups": int(groups.group_id.nunique()) if len(groups) else 0,
        "exact": int(kinds.get("exact", 0)), "near": int(kinds.get("near", 0)),
        "images_indexed": len(hashes), "images_looked_up": len(new), "full_rebuild": fresh_start,
        "pairs_by_hash": sum(p.found_by == "hash" for p in pairs),
        "pairs_by_embedding": sum(p.found_by == "embedding" for p in pairs),
        "images_without_embedding": len(present) - int(embedded.image_id.nunique()),
        "batches_left_out": dg.MetadataValue.json(sorted(blocked)),
        "duplicates_table": dg.MetadataValue.path(uri),
        "example_groups": dg.MetadataValue.md(_duplicate_groups_grid(groups, dict(zip(images.image_id, images.uri)))
                                              if len(groups) else "no duplicates"),
    })
