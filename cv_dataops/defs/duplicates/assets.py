"""Duplicates: exact and near duplicate groups over all batches."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from cv_dataops.core.storage import read_uri
from cv_dataops.defs.shared.partitions import SPANNING, table_metadata
from cv_dataops.duplicates.index import (
    DuplicatePair,
    find_embedding_pairs,
    find_pairs,
    group_duplicates,
)
from cv_dataops.duplicates.tables import DUPLICATE_PAIRS, DUPLICATES
from cv_dataops.embeddings.tables import EMBEDDINGS
from cv_dataops.images.thumbnails import markdown_grid, thumbnail_data_uri
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.quality.gating import blocked_batches
from cv_dataops.quality.tables import QUALITY
from cv_dataops.resources import CatalogResource, QualityResource

DUPLICATES_STATE_KEY = "state/image_duplicates.json"


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
    deps=["image_quality", "image_embeddings"],
    group_name="duplicates",
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
