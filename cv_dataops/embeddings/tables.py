"""The table the embeddings stage writes: `embeddings`."""

import pyarrow as pa

from cv_dataops.core.schema import Column, TableDefinition

EMBEDDINGS = TableDefinition(
    name="embeddings",
    description="One row per image: its position in the embedding space that curation, search and drift use.",
    partitioned_by_batch=True,
    written_by="image_embeddings",
    columns=(
        Column("image_id", pa.string(), "The image.", False),
        Column("batch_id", pa.string(), "The batch that brought it.", False),
        Column("vector", pa.list_(pa.float32()), "The embedding, L2-normalised (cosine similarity = dot product).",
               False),
        Column("embedder", pa.string(), "Which embedder made it (`patch-kmeans` or `onnx:<model>`).", False),
        Column("embedder_version", pa.string(), "Version of the embedder's parameters and preprocessing.", False),
    ),
)
