"""Searching the catalog: SQL over its tables, and the images most similar to an image or a file.

SQL: DuckDB with one view per catalog table. Local catalogs are read by DuckDB straight from the Parquet files
(nothing is loaded until a query needs it); for S3 catalogs the tables are read through the storage layer and handed
to DuckDB as Arrow (DuckDB's own S3 support would need an extension download, which a closed network does not allow).

Similarity: nearest neighbours by cosine distance. The batches the ``neighbour_index`` asset's HNSW graph holds as
they are now (:mod:`cv_dataops.embeddings.graph_store`; it keeps one from 20,000 vectors on) answer from the graph
in about log n, their candidates scored exactly; every other batch (all of them in a smaller catalog, and those
embedded since the graph was last updated) is scanned exactly by the shared engine
(:class:`~cv_dataops.embeddings.neighbors.NeighborIndex`), one batch file and at most ``chunk_rows`` vectors at a
time (:func:`~cv_dataops.embeddings.vectors.iter_vectors`), keeping only the best ``k`` so far: memory stays
bounded however large the catalog. Vectors are only comparable when one embedder made them, so a search compares the query with
the images embedded by the query's ``embedder_version`` only; when the catalog mixes versions (a new embedder whose
backfill has not finished), the others are skipped with a :class:`MixedEmbedderVersionsWarning`.

This module does not import Dagster.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cv_dataops.core.catalog import CATALOG_PREFIX, Catalog
from cv_dataops.core.storage import Storage
from cv_dataops.embeddings.graph_store import load_graph
from cv_dataops.embeddings.neighbors import NeighborIndex
from cv_dataops.embeddings.tables import EMBEDDINGS
from cv_dataops.embeddings.vectors import embedder_versions, iter_vectors, read_vectors
from cv_dataops.ingest.tables import IMAGES
from cv_dataops.tables import TABLES

if TYPE_CHECKING:
    from cv_dataops.embeddings.embedders import Embedder

SIMILAR_CHUNK_ROWS = 65_536  # vectors scored at once: 128 MB of float32 at 512 dimensions
SIMILAR_SCHEMA = pa.schema([
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("batch_id", pa.string(), nullable=False),
    pa.field("uri", pa.string()),
    pa.field("distance", pa.float32(), nullable=False),
])
NO_EMBEDDINGS = "the catalog has no embeddings yet: run the pipeline first (cv-dataops run)"


def catalog_connection(catalog: Catalog) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view named after every catalog table that has data."""
    connection = duckdb.connect()
    for name, definition in TABLES.items():
        folder = catalog.storage.local_path(f"{CATALOG_PREFIX}/{name}")
        if folder is not None:
            if any(folder.glob("*.parquet")):
                pattern = str(folder / "*.parquet").replace("'", "''")
                connection.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{pattern}', union_by_name=true)")
                continue
        table = catalog.read(definition)
        connection.register(f"_{name}_arrow", table)
        connection.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")
    return connection


def run_sql(catalog: Catalog, query: str) -> pa.Table:
    """Run one read-only query over the catalog's views; errors come back as ValueError with DuckDB's message."""
    connection = catalog_connection(catalog)
    try:
        relation = connection.sql(query)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as error:
        raise ValueError(f"SQL error: {str(error).splitlines()[0]}") from None
    finally:
        connection.close()


# --- similar images -------------------------------------------------------------------------------------------


class MixedEmbedderVersionsWarning(UserWarning):
    """Some images were skipped by a similarity search because another embedder version made their vectors."""


class UnknownImageError(ValueError):
    """No image in the catalog has this id (or an id starting with it)."""


def resolve_image_id(catalog: Catalog, id_or_prefix: str) -> tuple[str, str, str]:
    """``(image_id, batch_id, embedder_version)`` of the embedded image whose id is ``id_or_prefix`` or, since ids
    are 64 hex digits, the only one that starts with it."""
    wanted = id_or_prefix.strip().lower()
    if not wanted:
        raise UnknownImageError("an empty image id")
    table = catalog.read(EMBEDDINGS, columns=["image_id", "batch_id", "embedder_version"])
    if table.num_rows == 0:
        raise ValueError(NO_EMBEDDINGS)
    ids = table.column("image_id")
    matches = table.filter(pc.starts_with(ids, wanted))
    exact = matches.filter(pc.equal(matches.column("image_id"), wanted))
    if exact.num_rows:
        matches = exact
    if matches.num_rows > 1:
        sample = ", ".join(sorted(matches.column("image_id").to_pylist())[:3])
        raise UnknownImageError(f"{matches.num_rows} images have an id starting with {wanted!r} ({sample}, ...): "
                                f"give more of the id")
    if matches.num_rows == 0:
        images = catalog.read(IMAGES, columns=["image_id"]).column("image_id")
        if pc.any(pc.starts_with(images, wanted)).as_py():
            raise ValueError(f"image {wanted!r} has no embedding yet: run the pipeline first (cv-dataops run)")
        raise UnknownImageError(f"no image in the catalog has an id starting with {wanted!r}")
    row = matches.slice(0, 1).to_pylist()[0]
    return row["image_id"], row["batch_id"], row["embedder_version"]


def _smallest(distances: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest distances, in no particular order."""
    if len(distances) <= k:
        return np.arange(len(distances))
    return np.argpartition(distances, k - 1)[:k]


def image_vector(catalog: Catalog, image_id: str, batch_id: str, embedder_version: str) -> np.ndarray:
    """The stored embedding of one image by ``embedder_version`` (read from its batch's file only)."""
    vectors = read_vectors(catalog, embedder_version, batches=[batch_id])
    if image_id not in vectors.image_ids:
        raise UnknownImageError(f"no embedding of image {image_id!r} by version {embedder_version} in batch "
                                f"{batch_id!r}")
    return vectors.matrix[vectors.rows_of([image_id])[0]]


def similar_images(catalog: Catalog, query: str | np.ndarray, k: int = 10, *, embedder_version: str | None = None,
                   chunk_rows: int = SIMILAR_CHUNK_ROWS) -> pa.Table:
    """The ``k`` images nearest to ``query`` by cosine distance, nearest first: columns rank (1-based), image_id,
    batch_id, uri and distance (``1 - cosine similarity``, 0 = same direction, at most 2).

    ``query`` is an image id (or a unique prefix of one; that image itself is left out of the answer) or a vector
    (normalised here; give ``embedder_version``, the version of the embedder that made it, unless the catalog holds
    one version only). Only images embedded by that version are compared; others are skipped with a
    :class:`MixedEmbedderVersionsWarning`. Ties are broken by image id. The schema metadata names the query image
    (``query_image_id``, empty for a vector) and the ``embedder_version`` compared.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    versions = embedder_versions(catalog)
    if not versions:
        raise ValueError(NO_EMBEDDINGS)
    exclude = None
    if isinstance(query, str):
        exclude, batch_id, version = resolve_image_id(catalog, query)
        if embedder_version is not None and embedder_version != version:
            raise ValueError(f"image {exclude} was embedded by version {version}, not {embedder_version}")
        vector = image_vector(catalog, exclude, batch_id, version)
    else:
        vector = np.asarray(query, dtype=np.float32).ravel()
        if embedder_version is not None:
            version = embedder_version
        elif len(versions) == 1:
            (version,) = versions
        else:
            raise ValueError(f"the catalog holds embeddings of {len(versions)} embedder versions "
                             f"({', '.join(sorted(versions))}): say which one made the query vector")
        if version not in versions:
            raise ValueError(f"no image in the catalog was embedded by version {version} "
                             f"(it holds {', '.join(sorted(versions))})")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("the query vector is zero or not finite")
    vector = vector / np.float32(norm)

    best_distances = np.empty(0, np.float64)
    best_ids: list[str] = []
    best_batches: list[str] = []
    fingerprints = catalog.partition_versions(EMBEDDINGS)
    graph = load_graph(catalog.storage, version)
    held = graph.current_batches(fingerprints) if graph is not None else set()
    if held:  # the graph's candidates for the batches it holds as they are now; the others are scanned below
        if graph.graph.dimension != len(vector):
            raise ValueError(f"embeddings of version {version} are not all {len(vector)}-dimensional like the query")
        want = min(k + 1, len(graph.image_ids))
        while True:  # rows of batches changed since take candidate places: widen until k current rows are found
            rows = graph.graph.candidates(vector[None], want)[0]
            rows = np.array([r for r in rows.tolist() if r >= 0 and graph.batch_ids[r] in held
                             and graph.image_ids[r] != exclude], dtype=np.int64)
            if len(rows) >= k or want >= len(graph.image_ids):
                break
            want = min(len(graph.image_ids), want * 4)
        distances = 1.0 - graph.graph.vectors(rows).astype(np.float64) @ vector.astype(np.float64)
        survivors = _smallest(distances, k)
        best_distances = distances[survivors]
        best_ids = [graph.image_ids[rows[i]] for i in survivors]
        best_batches = [graph.batch_ids[rows[i]] for i in survivors]
    for chunk in iter_vectors(catalog, version, chunk_rows, batches=sorted(set(fingerprints) - held)):
        if not len(chunk):
            continue
        if chunk.dimension != len(vector):
            raise ValueError(f"embeddings of version {version} are not all {len(vector)}-dimensional like the query")
        distances, rows = NeighborIndex(chunk.matrix).kneighbors(vector, min(k + 1, len(chunk)))
        found = [(float(d), chunk.image_ids[r], chunk.batch_ids[r]) for d, r in zip(distances[0], rows[0],
                                                                                     strict=True)
                 if np.isfinite(d) and chunk.image_ids[r] != exclude]
        candidates = np.concatenate([best_distances, np.array([d for d, _, _ in found], np.float64)])
        ids = best_ids + [i for _, i, _ in found]
        batches = best_batches + [b for _, _, b in found]
        survivors = _smallest(candidates, k)
        best_distances = candidates[survivors]
        best_ids = [ids[i] for i in survivors]
        best_batches = [batches[i] for i in survivors]

    skipped = {other: count for other, count in versions.items() if other != version}
    if skipped:
        warnings.warn(f"the catalog mixes embedder versions: compared only the {versions[version]} images embedded "
                      f"by {version}, skipped {sum(skipped.values())} embedded by "
                      f"{', '.join(sorted(skipped))} (re-run image_embeddings on their batches to include them)",
                      MixedEmbedderVersionsWarning, stacklevel=2)
    order = [i for i in np.lexsort((np.array(best_ids, dtype=str), best_distances))
             if np.isfinite(best_distances[i])]
    image_ids = [best_ids[i] for i in order]
    batch_ids = [best_batches[i] for i in order]
    return pa.table({
        "rank": pa.array(range(1, len(order) + 1), pa.int32()),
        "image_id": pa.array(image_ids, pa.string()),
        "batch_id": pa.array(batch_ids, pa.string()),
        "uri": pa.array(_uris(catalog, image_ids, batch_ids), pa.string()),
        "distance": pa.array(np.maximum(best_distances[order], 0.0).astype(np.float32), pa.float32()),
    }, schema=SIMILAR_SCHEMA).replace_schema_metadata({"query_image_id": exclude or "", "embedder_version": version})


def _uris(catalog: Catalog, image_ids: list[str], batch_ids: list[str]) -> list[str | None]:
    """Each image's URI, read from its own batch's ``images`` file only."""
    found: dict[str, str] = {}
    if image_ids:
        table = catalog.read(IMAGES, sorted(set(batch_ids)), columns=["image_id", "uri"])
        table = table.filter(pc.is_in(table.column("image_id"), pa.array(image_ids, pa.string())))
        found = dict(zip(table.column("image_id").to_pylist(), table.column("uri").to_pylist(), strict=True))
    return [found.get(image_id) for image_id in image_ids]


def stored_embedder(storage: Storage, spec: dict, versions: Iterable[str] = ()) -> Embedder:
    """The embedder that made the catalog's vectors (``versions``), as the pipeline configured it (``spec``). The
    built-in one is read from the data root (the stored model of one of ``versions`` if there is one) and never
    fitted here: a search must not change the model the catalog was embedded by."""
    from cv_dataops.embeddings.embedders import load_embedder
    from cv_dataops.embeddings.store import (  # only needed to embed a file
        model_key,
        stored_patch_kmeans,
    )

    if spec.get("kind", "patch-kmeans") != "patch-kmeans":
        return load_embedder(spec)
    try:
        return stored_patch_kmeans(storage, spec, versions)
    except FileNotFoundError:
        raise ValueError(f"no fitted embedder at {storage.uri_of(model_key(spec))}: run the pipeline first "
                         f"(cv-dataops run)") from None


def embed_image_bytes(catalog: Catalog, data: bytes, spec: dict) -> tuple[np.ndarray, str]:
    """A file's vector and embedder version, made by the catalog's own embedder so that it compares with the
    catalog's vectors; a ValueError when the configured embedder is not the one that made them."""
    versions = embedder_versions(catalog)
    if not versions:
        raise ValueError(NO_EMBEDDINGS)
    embedder = stored_embedder(catalog.storage, spec, versions)
    if embedder.version not in versions:
        raise ValueError(f"the configured embedder ({embedder.name}, version {embedder.version}) did not make the "
                         f"catalog's embeddings (version {', '.join(sorted(versions))}): configure the embedder the "
                         f"pipeline used (CV_DATAOPS_EMBEDDER), or run the pipeline to re-embed the catalog")
    from cv_dataops.embeddings.embedders import embed_bytes

    (vectors,) = list(embed_bytes(embedder, [data], batch_size=1))
    return vectors[0], embedder.version
