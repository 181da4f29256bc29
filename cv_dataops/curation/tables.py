"""The table curation writes: `curated`."""

import pyarrow as pa

from cv_dataops.core.schema import Column, TableDefinition

CURATED = TableDefinition(
    name="curated",
    description="The current curated dataset version: which images, in which split, and why each was selected.",
    partitioned_by_batch=False,
    written_by="curated_dataset",
    columns=(
        Column("image_id", pa.string(), "The image (its sha256 is the id).", False),
        Column("uri", pa.string(), "Where its bytes are.", False),
        Column("label", pa.string(), "Its label where known."),
        Column("scenario", pa.int32(), "Its scenario where known."),
        Column("split", pa.string(), "`train`, `val` or `test`; no duplicate group or near-neighbour cluster is "
               "spread across splits, and an image keeps the split it had in the version before (`keep_splits`).",
               False),
        Column("snapshot_id", pa.string(), "The content-addressed snapshot this version is (same inputs, same id).",
               False),
        Column("selection_reason", pa.string(), "Why the image was selected.", False),
    ),
)
