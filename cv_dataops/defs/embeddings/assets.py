"""Embeddings per batch, and the scenarios (clusters) and 2-D map over the whole catalog."""

import base64
import hashlib
import io
import json
import time

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, ImageOps

from cv_dataops.defs.ingestion.assets import raw_images
from cv_dataops.defs.shared import PER_BATCH_TAG, SPANNING, STALE_OR_NEW, batch_partitions, table_metadata
from cv_dataops.lib.embedder_store import load_or_fit_embedder
from cv_dataops.lib.embeddings import embed_bytes
from cv_dataops.lib.scenarios import discover, map_2d, map_png
from cv_dataops.lib.storage import read_uri
from cv_dataops.lib.tables import EMBEDDINGS, IMAGES, SCENARIOS
from cv_dataops.lib.thumbnails import markdown_grid, thumbnail_data_uri
from cv_dataops.resources import CatalogResource, EmbeddingResource, embedder_spec_from_environment

EMBEDDINGS_VERSION = "1"


def embeddings_code_version() -> str:
    """Our code's version plus the embedder configured: switching embedders shows every batch stale."""
    spec = json.dumps(embedder_spec_from_environment(), sort_keys=True)
    return f"{EMBEDDINGS_VERSION}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def _decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (128, 128))
        return ImageOps.exif_transpose(image).convert("RGB")


@dg.asset(
    partitions_def=batch_partitions,
    deps=[raw_images],
    group_name="embeddings",
    tags=PER_BATCH_TAG,
    kinds={"python", "parquet"},
    code_version=embeddings_code_version(),
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

    def fitting_sample() -> list[Image.Image]:
        pool = tables.read(IMAGES, columns=["image_id", "uri"]).to_pandas().sort_values("image_id")
        if len(pool) > embedding.fit_images:  # a uniform sample (seeded: the same catalog gives the same model)
            pool = pool.sample(n=embedding.fit_images, random_state=0)
        return [_decoded(read_uri(uri)) for uri in pool.uri]

    embedder = load_or_fit_embedder(embedding.spec, catalog.storage(), fitting_sample)
    start = time.perf_counter()
    vectors = [v for chunk in embed_bytes(embedder, (read_uri(uri) for uri in images.uri),
                                          batch_size=embedding.batch_size,
                                          decode_workers=embedding.decode_workers) for v in chunk]
    seconds = time.perf_counter() - start
    table = EMBEDDINGS.from_rows({"image_id": image_id, "batch_id": batch_id, "vector": vector.tolist(),
                                  "embedder": embedder.name, "embedder_version": embedder.version}
                                 for image_id, vector in zip(images.image_id, vectors, strict=True))
    uri = tables.write(EMBEDDINGS, table, batch_id)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": table.num_rows, "embedder": embedder.name, "embedder_version": embedder.version,
        "dimension": int(embedder.dimension), "images_per_second": round(len(images) / seconds, 1) if seconds else 0,
        "embeddings_table": dg.MetadataValue.path(uri)})


def catalog_vectors(tables) -> tuple[pd.DataFrame, np.ndarray]:
    """Every embedding in the catalog, as a frame of ids and a float32 matrix."""
    table = tables.read(EMBEDDINGS, columns=["image_id", "batch_id", "vector"])
    if table.num_rows == 0:
        return table.select(["image_id", "batch_id"]).to_pandas(), np.zeros((0, 0), np.float32)
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    return table.select(["image_id", "batch_id"]).to_pandas(), vectors


@dg.asset(
    deps=[image_embeddings],
    group_name="embeddings",
    kinds={"python", "parquet"},
    code_version="1",
    metadata=table_metadata(SCENARIOS),
    automation_condition=SPANNING,
)
def scenarios(context: dg.AssetExecutionContext, catalog: CatalogResource) -> dg.MaterializeResult:
    """The scenarios a team curates for, found as clusters in embedding space (their number chosen by silhouette),
    each with its size and thumbnails, and a 2-D map of the whole catalog."""
    tables = catalog.catalog()
    ids, vectors = catalog_vectors(tables)
    found = discover(vectors)
    coordinates = map_2d(vectors)
    frame = pd.DataFrame({"image_id": ids.image_id, "scenario": found.labels.astype(np.int32),
                          "distance": found.distances, "map_x": coordinates[:, 0] if len(ids) else [],
                          "map_y": coordinates[:, 1] if len(ids) else []})
    uri = tables.write(SCENARIOS, pa.Table.from_pandas(frame, preserve_index=False))
    uris = dict(zip(*tables.read(IMAGES, columns=["image_id", "uri"]).to_pydict().values(), strict=True))
    sections = {}
    for scenario, members in frame.groupby("scenario"):
        typical = members.nsmallest(5, "distance")
        sections[f"scenario {scenario} ({len(members)} images)"] = [
            (f"{row.distance:.2f}", thumbnail_data_uri(read_uri(uris[row.image_id]), side=48))
            for row in typical.itertuples() if row.image_id in uris]
    png = map_png(coordinates, found.labels)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(frame), "scenarios": int(frame.scenario.nunique()) if len(frame) else 0,
        "sizes": dg.MetadataValue.json(frame.scenario.value_counts().sort_index().to_dict() if len(frame) else {}),
        "typical_images": dg.MetadataValue.md(markdown_grid(sections) if sections else "no images"),
        "map": dg.MetadataValue.md(f"![map of the catalog](data:image/png;base64,{base64.b64encode(png).decode()})"),
        "scenarios_table": dg.MetadataValue.path(uri)})
