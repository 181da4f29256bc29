"""Duplicates: exact and near duplicate groups over all batches."""

import dagster as dg
import pandas as pd
import pyarrow as pa

from cv_dataops.defs.shared.partitions import SPANNING, table_metadata
from cv_dataops.duplicates.incremental import (
    HASH_COLUMNS,
    EmbeddingSource,
    HashRowStore,
    partition_fingerprints,
    update_duplicates,
)
from cv_dataops.duplicates.tables import DUPLICATE_PAIRS, DUPLICATES
from cv_dataops.embeddings.tables import EMBEDDINGS
from cv_dataops.embeddings.vectors import current_embedder_version, read_vectors
from cv_dataops.images.thumbnails import catalog_thumbnail, markdown_grid
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.quality.tables import QUALITY
from cv_dataops.resources import CatalogResource, EmbeddingResource, QualityResource


def _duplicate_groups_grid(groups: pd.DataFrame, uris: dict[str, str], read, limit: int = 5) -> str:
    sections = {}
    for group_id, members in list(groups.groupby("group_id"))[:limit]:
        items = [(("keep " if row.keep else "") + row.kind, image) for row in members.head(4).itertuples()
                 if (image := catalog_thumbnail(uris[row.image_id], row.image_id, read)) is not None]
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
def image_duplicates(context: dg.AssetExecutionContext, catalog: CatalogResource, quality: QualityResource,
                     embedding: EmbeddingResource) -> dg.MaterializeResult:
    """Exact and near duplicate groups over all batches. Only the images of batches not looked up before are
    looked up: in a multi-index Hamming index of every image's perceptual hashes, and by embedding distance against
    every vector of the current embedder (flips and crops the hashes miss); the pairs found earlier are kept, so
    adding a batch never compares all pairs again, and reads only the new batches' quality rows. Batches whose
    quality check blocked them are left out."""
    tables = catalog.catalog()
    storage = catalog.storage()
    store = HashRowStore(storage)
    fingerprints = partition_fingerprints(tables, QUALITY)
    hashes, refreshed = store.rows(
        fingerprints, lambda batch_id: tables.read(QUALITY, [batch_id], columns=HASH_COLUMNS).to_pandas())
    version = current_embedder_version(tables, storage, embedding.spec)  # the same rule as every spanning stage
    update = update_duplicates(
        store.state(), hashes, fingerprints,
        previous_pairs=tables.read(DUPLICATE_PAIRS).to_pandas(), previous_groups=tables.read(DUPLICATES).to_pandas(),
        settings=quality.duplicate_settings(), embedding_settings=quality.embedding_duplicate_settings(),
        max_unusable_rate=quality.max_unusable_rate,
        embeddings=EmbeddingSource(version, partition_fingerprints(tables, EMBEDDINGS),
                                   lambda batches: read_vectors(tables, version, batches=batches)))
    pairs, groups = update.pairs, update.groups
    tables.write(DUPLICATE_PAIRS, DUPLICATE_PAIRS.from_rows(
        {"image_id_a": p.a, "image_id_b": p.b, "kind": p.kind, "distance": p.distance, "found_by": p.found_by,
         "embedding_distance": p.embedding_distance} for p in pairs))
    uri = tables.write(DUPLICATES, pa.Table.from_pandas(groups[DUPLICATES.column_names], preserve_index=False))
    store.save_state(update.state)
    kinds = groups.kind.value_counts().to_dict() if len(groups) else {}
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(groups),
        "groups": int(groups.group_id.nunique()) if len(groups) else 0,
        "exact": int(kinds.get("exact", 0)), "near": int(kinds.get("near", 0)),
        "images_indexed": update.images_indexed, "images_looked_up": update.images_looked_up,
        "images_looked_up_by_embedding": update.images_looked_up_by_embedding,
        "quality_batches_read": len(refreshed), "full_rebuild": update.full_rebuild,
        "pairs_by_hash": sum(p.found_by == "hash" for p in pairs),
        "pairs_by_embedding": sum(p.found_by == "embedding" for p in pairs),
        "embedder_version": version or "",
        "images_without_embedding": update.images_without_embedding,
        "batches_left_out": dg.MetadataValue.json(update.batches_left_out),
        "duplicates_table": dg.MetadataValue.path(uri),
        "example_groups": dg.MetadataValue.md(_example_groups(tables, groups, hashes, catalog.uri_reader()) if len(groups)
                                              else "no duplicates"),
    })


def _example_groups(tables, groups: pd.DataFrame, hashes: pd.DataFrame, read, limit: int = 5) -> str:
    """Thumbnails of the first groups, reading the `images` rows of only the batches that hold them."""
    shown = groups[groups.group_id.isin(sorted(set(groups.group_id))[:limit])]
    batches = sorted(set(hashes.batch_id[hashes.image_id.isin(set(shown.image_id))]))
    images = tables.read(IMAGES, batches, columns=["image_id", "uri"]).to_pandas()
    return _duplicate_groups_grid(shown, dict(zip(images.image_id, images.uri)), read, limit)
