"""Duplicates: exact and near duplicate groups over all batches, in two assets of one step.

``image_duplicates`` (after ``image_quality`` only: hash duplicates never wait for embeddings) finds exact and
perceptual-hash pairs and writes the groups; ``embedding_duplicates`` (after ``image_embeddings``) adds the pairs
the hashes miss. Run together (one step), the embedding pass goes first and the groups hold both kinds; run alone,
``image_duplicates`` groups with the embedding pairs recorded so far, and runs again when new ones arrive.
"""

import dagster as dg
import pandas as pd
import pyarrow as pa

from cv_dataops.defs.shared.partitions import SPANNING, table_metadata
from cv_dataops.duplicates.incremental import (
    HASH_COLUMNS,
    EmbeddingSource,
    HashRowStore,
    embeddingpairs_from,
    group_pairs,
    pairs_from,
    partition_fingerprints,
    update_embedding_duplicates,
    update_hash_duplicates,
)
from cv_dataops.duplicates.tables import (
    DUPLICATE_PAIRS,
    DUPLICATES,
    EMBEDDING_DUPLICATE_PAIRS,
)
from cv_dataops.embeddings.tables import EMBEDDINGS
from cv_dataops.embeddings.vectors import current_embedder_version, read_vectors
from cv_dataops.images.thumbnails import catalog_thumbnail, markdown_grid
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.quality.tables import QUALITY
from cv_dataops.resources import CatalogResource, EmbeddingResource, QualityResource

IMAGE_DUPLICATES = dg.AssetKey("image_duplicates")
EMBEDDING_DUPLICATES = dg.AssetKey("embedding_duplicates")

# image_duplicates also runs when embedding_duplicates recorded pairs after its last run (not a dependency: the
# hash duplicates must not wait for, or pull in, the embedder).
_EMBEDDING_PAIRS_ADDED = dg.AutomationCondition.asset_matches(
    EMBEDDING_DUPLICATES, dg.AutomationCondition.newly_updated()).since(
    dg.AutomationCondition.newly_updated() | dg.AutomationCondition.newly_requested())
IMAGE_DUPLICATES_CONDITION = SPANNING | (_EMBEDDING_PAIRS_ADDED & ~dg.AutomationCondition.in_progress())


def _duplicate_groups_grid(groups: pd.DataFrame, uris: dict[str, str], read, limit: int = 5) -> str:
    sections = {}
    for group_id, members in list(groups.groupby("group_id"))[:limit]:
        items = [(("keep " if row.keep else "") + row.kind, image) for row in members.itertuples()
                 if (image := catalog_thumbnail(uris[row.image_id], row.image_id, read)) is not None]
        sections[f"{group_id} ({len(members)} images)"] = items
    return markdown_grid(sections)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(IMAGE_DUPLICATES, deps=["image_quality"], group_name="duplicates", kinds={"python", "parquet"},
                     code_version="3", metadata=table_metadata(DUPLICATES, DUPLICATE_PAIRS),
                     automation_condition=IMAGE_DUPLICATES_CONDITION,
                     description="Exact and near duplicate groups over all batches, from perceptual hashes (after "
                                 "image_quality only) and the pairs embedding_duplicates found so far."),
        dg.AssetSpec(EMBEDDING_DUPLICATES, deps=["image_embeddings", "image_quality"], group_name="duplicates",
                     kinds={"python", "parquet"}, code_version="1", metadata=table_metadata(EMBEDDING_DUPLICATE_PAIRS),
                     automation_condition=SPANNING,
                     description="Near duplicate pairs by embedding distance (flips and crops the hashes miss), "
                                 "with the current embedder's vectors."),
    ],
    can_subset=True,
)
def image_duplicates(context: dg.AssetExecutionContext, catalog: CatalogResource, quality: QualityResource,
                     embedding: EmbeddingResource):
    """Only the images of batches not looked up before are looked up: in a multi-index Hamming index of every
    image's perceptual hashes, and by embedding distance against every vector of the current embedder (one batch
    file at a time); the pairs found earlier are kept, so adding a batch never compares all pairs again, and reads
    only the new batches' quality rows. Batches whose quality check blocked them are left out."""
    tables = catalog.catalog()
    store = HashRowStore(catalog.storage())
    fingerprints = partition_fingerprints(tables, QUALITY)
    rows, refreshed = store.rows(
        fingerprints, lambda batch_id: tables.read(QUALITY, [batch_id], columns=HASH_COLUMNS).to_pandas())
    selected = context.selected_asset_keys
    embedding_pairs = None
    if EMBEDDING_DUPLICATES in selected:
        embedding_pairs, metadata = _embedding_pass(tables, store, rows, fingerprints, quality, embedding)
        yield dg.MaterializeResult(asset_key=EMBEDDING_DUPLICATES, metadata=metadata)
    if IMAGE_DUPLICATES in selected:
        yield _hash_pass(tables, store, rows, fingerprints, refreshed, quality, embedding_pairs, catalog.uri_reader())


def _embedding_pass(tables, store: HashRowStore, rows, fingerprints, quality: QualityResource,
                    embedding: EmbeddingResource):
    version = current_embedder_version(tables, store.storage, embedding.spec)  # the rule of every spanning stage
    previous = embeddingpairs_from(tables.read(EMBEDDING_DUPLICATE_PAIRS).to_pandas())
    update = update_embedding_duplicates(
        store.embedding_state(), rows, fingerprints,
        EmbeddingSource(version, partition_fingerprints(tables, EMBEDDINGS),
                        lambda batches: read_vectors(tables, version, batches=batches)),
        previous_pairs=previous, settings=quality.embedding_duplicate_settings(),
        max_unusable_rate=quality.max_unusable_rate)
    uri = tables.write(EMBEDDING_DUPLICATE_PAIRS, EMBEDDING_DUPLICATE_PAIRS.from_rows(
        {"image_id_a": p.a, "image_id_b": p.b, "distance": p.distance, "embedding_distance": p.embedding_distance}
        for p in update.pairs))
    store.save_embedding_state(update.state)  # after the table: a kill in between only repeats the lookup
    return update.pairs, {
        "dagster/row_count": len(update.pairs), "embedder_version": version or "",
        "images_looked_up_by_embedding": update.images_looked_up, "embedding_batches_read": update.batches_read,
        "images_without_embedding": update.images_without_embedding, "fresh_start": update.fresh_start,
        "embedding_duplicate_pairs_table": dg.MetadataValue.path(uri)}


def _hash_pass(tables, store: HashRowStore, rows, fingerprints, refreshed, quality: QualityResource,
               embedding_pairs, read) -> dg.MaterializeResult:
    previous = tables.read(DUPLICATE_PAIRS).to_pandas()
    update = update_hash_duplicates(store.state(), rows, fingerprints, previous_pairs=previous,
                                    settings=quality.duplicate_settings(), max_unusable_rate=quality.max_unusable_rate)
    if embedding_pairs is None:  # embedding_duplicates did not run now: the pairs it recorded so far
        if tables.storage.exists(tables.key(EMBEDDING_DUPLICATE_PAIRS)):
            embedding_pairs = embeddingpairs_from(tables.read(EMBEDDING_DUPLICATE_PAIRS).to_pandas())
        else:  # a data root from before the split: its embedding pairs stay until embedding_duplicates runs
            embedding_pairs = [p for p in pairs_from(previous) if p.found_by == "embedding"]
    pairs, groups = group_pairs(update.pairs, embedding_pairs, update.rows,
                                None if update.full_rebuild else tables.read(DUPLICATES).to_pandas())
    tables.write(DUPLICATE_PAIRS, DUPLICATE_PAIRS.from_rows(
        {"image_id_a": p.a, "image_id_b": p.b, "kind": p.kind, "distance": p.distance, "found_by": p.found_by,
         "embedding_distance": p.embedding_distance} for p in pairs))
    uri = tables.write(DUPLICATES, pa.Table.from_pandas(groups[DUPLICATES.column_names], preserve_index=False))
    store.save_state(update.state)  # after the tables: a kill in between only repeats the lookup
    kinds = groups.kind.value_counts().to_dict() if len(groups) else {}
    return dg.MaterializeResult(asset_key=IMAGE_DUPLICATES, metadata={
        "dagster/row_count": len(groups),
        "groups": int(groups.group_id.nunique()) if len(groups) else 0,
        "exact": int(kinds.get("exact", 0)), "near": int(kinds.get("near", 0)),
        "images_indexed": update.images_indexed, "images_looked_up": update.images_looked_up,
        "quality_batches_read": len(refreshed), "full_rebuild": update.full_rebuild,
        "pairs_by_hash": sum(p.found_by == "hash" for p in pairs),
        "pairs_by_embedding": sum(p.found_by == "embedding" for p in pairs),
        "batches_left_out": dg.MetadataValue.json(update.batches_left_out),
        "duplicates_table": dg.MetadataValue.path(uri),
        "example_groups": dg.MetadataValue.md(_example_groups(tables, groups, update.rows, read) if len(groups)
                                              else "no duplicates"),
    })


def _example_groups(tables, groups: pd.DataFrame, rows, read, limit: int = 5) -> str:
    """Thumbnails of every member of the first groups, reading the `images` rows of only the batches that hold
    them."""
    from cv_dataops.duplicates.index import as_text

    shown = groups[groups.group_id.isin(sorted(set(groups.group_id))[:limit])]
    positions = rows.lookup.positions(shown.image_id.tolist())
    batches = sorted({as_text(b) for b in rows.batch_id[positions[positions >= 0]].tolist()})
    images = tables.read(IMAGES, batches, columns=["image_id", "uri"]).to_pandas()
    return _duplicate_groups_grid(shown, dict(zip(images.image_id, images.uri)), read, limit)
