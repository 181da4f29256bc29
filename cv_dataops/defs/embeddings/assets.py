"""Embeddings: every image of a batch as a vector."""

import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
from PIL import Image

from cv_dataops.core.versioning import versioned
from cv_dataops.defs.shared.partitions import (
    PER_BATCH_TAG,
    SPANNING,
    STALE_OR_NEW,
    batch_partitions,
    table_metadata,
)
from cv_dataops.embeddings.embedders import embed_bytes
from cv_dataops.embeddings.graph_store import graph_key, update_graph
from cv_dataops.embeddings.store import load_or_fit_embedder
from cv_dataops.embeddings.tables import EMBEDDINGS, embeddings_table
from cv_dataops.embeddings.vectors import (
    current_embedder_version,
    embedder_versions,
    read_vectors,
)
from cv_dataops.images.analysis_cache import (
    AnalysisImage,
    analysis_side_for,
    batch_sources,
    model_pixels,
)
from cv_dataops.images.verified import ContentChanged, read_verified
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.resources import CatalogResource, EmbeddingResource

EMBEDDINGS_VERSION = "2"  # 2: pixels from THE decoder's analysis image (embedders.PREPROCESSING_VERSION)


def embeddings_code_version(spec: dict) -> str:
    """Our code's version plus the embedder configured: switching embedders shows every batch stale."""
    return versioned(EMBEDDINGS_VERSION, spec)


@dg.asset(
    partitions_def=batch_partitions,
    deps=["raw_images"],
    group_name="embeddings",
    tags=PER_BATCH_TAG,
    kinds={"python", "parquet"},
    code_version=EMBEDDINGS_VERSION,  # plus the embedder's digest: definitions.settings_code_versions
    metadata=table_metadata(EMBEDDINGS),
    automation_condition=STALE_OR_NEW,
)
def image_embeddings(context: dg.AssetExecutionContext, catalog: CatalogResource,
                     embedding: EmbeddingResource) -> dg.MaterializeResult:
    """Every image of the batch as an L2-normalised vector. The built-in embedder is fitted once, unsupervised,
    on a sample of the catalog as it is then (at most ``fit_images``) and stored under the data root; an ONNX model
    can replace it."""
    batch_id = context.partition_key
    tables = catalog.catalog()
    images = tables.read(IMAGES, [batch_id], columns=["image_id", "uri"]).to_pandas()
    read = catalog.uri_reader()
    embedded, changed = [], {}  # an image whose file changed since ingest is left out, never embedded as the old one

    cached = [0]

    def verified(items, kept: list, left_out: dict) -> Iterator[bytes | AnalysisImage]:
        for image_id, uri in items:
            if isinstance(uri, AnalysisImage):  # as ingestion decoded it, from the batch's cache
                cached[0] += 1
                kept.append(image_id)
                yield uri
                continue
            try:
                data = read_verified(uri, image_id, read)
            except ContentChanged as error:
                left_out[image_id] = str(error)
                continue
            kept.append(image_id)
            yield data

    def fitting_sample() -> list[Image.Image]:
        pool = tables.read(IMAGES, columns=["image_id", "uri"]).to_pandas().sort_values("image_id")
        if len(pool) > embedding.fit_images:  # a uniform sample (seeded: the same catalog gives the same model)
            pool = pool.sample(n=embedding.fit_images, random_state=0)
        return [model_pixels(data, None) for data in verified(zip(pool.image_id, pool.uri), [], {})]

    embedder = load_or_fit_embedder(embedding.spec, catalog.storage(), fitting_sample)
    start = time.perf_counter()
    sources = batch_sources(tables.storage, batch_id, zip(images.image_id, images.uri),
                            analysis_side=analysis_side_for(getattr(embedder, "input_shape", None)))
    chunks = list(embed_bytes(embedder, verified(sources, embedded, changed), batch_size=embedding.batch_size,
                              decode_workers=embedding.decode_workers, workers=embedding.workers))
    seconds = time.perf_counter() - start
    matrix = np.concatenate(chunks) if chunks else np.zeros((0, embedder.dimension), np.float32)
    table = embeddings_table(embedded, batch_id, matrix, embedder.name, embedder.version)
    uri = tables.write(EMBEDDINGS, table, batch_id)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": table.num_rows, "embedder": embedder.name, "embedder_version": embedder.version,
        "dimension": int(embedder.dimension), "content_changed": dg.MetadataValue.json(changed),
        "images_per_second": round(len(images) / seconds, 1) if seconds else 0,
        "decoded_at_ingest": cached[0], "embeddings_table": dg.MetadataValue.path(uri)})


@dg.asset(
    deps=["image_embeddings"],
    group_name="embeddings",
    kinds={"python", "faiss"},
    code_version="1",
    automation_condition=SPANNING,
)
def neighbour_index(context: dg.AssetExecutionContext, catalog: CatalogResource,
                    embedding: EmbeddingResource) -> dg.MaterializeResult:
    """The current embedder's vectors as an HNSW graph under the data root, for similarity search in about log n
    per query: batches embedded since are added, and the graph is built again only when a batch it holds was
    re-embedded (see cv_dataops.embeddings.graph_store)."""
    tables, storage = catalog.catalog(), catalog.storage()
    version = current_embedder_version(tables, storage, embedding.spec)
    update = update_graph(storage, version, tables.partition_versions(EMBEDDINGS),
                          lambda batch: read_vectors(tables, version, batches=[batch]),
                          catalog_rows=embedder_versions(tables).get(version, 0) if version else 0)
    context.log.info(f"neighbour graph: {update.rows} rows, {update.rows_added} added"
                     + (f"; {update.reason}" if update.reason else ""))
    return dg.MaterializeResult(metadata={
        "embedder_version": update.embedder_version or "", "rows": update.rows, "rows_added": update.rows_added,
        "batches_added": len(update.batches_added), "rebuilt": update.rebuilt, "why": update.reason or "-",
        "graph": dg.MetadataValue.path(storage.uri_of(graph_key(version))) if version else "-"})
