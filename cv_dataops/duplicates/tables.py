"""The tables the duplicates stage writes: `duplicates` and `duplicate_pairs`."""

import pyarrow as pa

from cv_dataops.core.schema import Column, TableDefinition

DUPLICATES = TableDefinition(
    name="duplicates",
    description="One row per image that belongs to a duplicate group (two or more images showing the same picture), "
                "across all batches.",
    partitioned_by_batch=False,
    written_by="image_duplicates",
    columns=(
        Column("image_id", pa.string(), "The image.", False),
        Column("group_id", pa.string(), "The duplicate group; every member shares it.", False),
        Column("kind", pa.string(), "`exact` (identical pixels to another member) or `near` (the same picture "
                                    "after resize, re-compression, crop, flip, brightness or colour change; found by "
                                    "perceptual hashes or by embedding distance).", False),
        Column("keep", pa.bool_(), "The one member per group to keep (largest, then sharpest).", False),
        Column("nearest_distance", pa.int32(), "Smallest perceptual-hash Hamming distance to another member.", False),
    ),
)

DUPLICATE_PAIRS = TableDefinition(
    name="duplicate_pairs",
    description="Every duplicate pair found so far: the memory that lets a new batch be compared only against the "
                "catalog, never all pairs again.",
    partitioned_by_batch=False,
    written_by="image_duplicates",
    columns=(
        Column("image_id_a", pa.string(), "One image.", False),
        Column("image_id_b", pa.string(), "The other image.", False),
        Column("kind", pa.string(), "`exact` or `near`.", False),
        Column("distance", pa.int32(), "Perceptual-hash (phash) Hamming distance (0 for exact).", False),
        Column("found_by", pa.string(), "`hash` (pixel or perceptual hashes) or `embedding` (embedding distance, "
                                        "for flips and crops the hashes miss).", False),
        Column("embedding_distance", pa.float32(), "Cosine distance of the embeddings, for pairs found by "
                                                   "embedding; empty for pairs found by hash.", True),
    ),
)
