"""The tables the duplicates stage writes: `duplicates` and `duplicate_pairs` (by `image_duplicates`), and
`embedding_duplicate_pairs` (by `embedding_duplicates`)."""

import pyarrow as pa

from cv_dataops.core.schema import Column, TableDefinition

DUPLICATES = TableDefinition(
    name="duplicates",
    description="One row per image that belongs to a duplicate group (two or more images showing the same picture), "
                "across all batches: from the pairs found by hash and those `embedding_duplicates` found so far.",
    partitioned_by_batch=False,
    written_by="image_duplicates",
    columns=(
        Column("image_id", pa.string(), "The image.", False),
        Column("group_id", pa.string(), "The duplicate group; every member shares it.", False),
        Column("kind", pa.string(), "`exact` (identical pixels to another member) or `near` (the same picture "
                                    "after resize, re-compression, crop, flip, brightness or colour change; found by "
                                    "perceptual hashes or by embedding distance).", False),
        Column("keep", pa.bool_(), "The one member per group to keep, the original as far as the files tell: the "
                                   "highest resolution, then the least compressed (not JPEG, then the highest "
                                   "estimated JPEG quality), then the earliest landed batch, then the sharpest, "
                                   "then the smallest image_id.", False),
        Column("nearest_distance", pa.int32(), "Smallest perceptual-hash Hamming distance to another member.", False),
    ),
)

DUPLICATE_PAIRS = TableDefinition(
    name="duplicate_pairs",
    description="Every duplicate pair found so far, by hash and (as `embedding_duplicate_pairs` held when "
                "`image_duplicates` last ran) by embedding: the memory that lets a new batch be compared only "
                "against the catalog, never all pairs again.",
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

EMBEDDING_DUPLICATE_PAIRS = TableDefinition(
    name="embedding_duplicate_pairs",
    description="The near duplicate pairs found by embedding distance (flips and crops the hashes miss), with the "
                "current embedder's vectors; `image_duplicates` adds them to `duplicate_pairs` and the groups. "
                "Kept apart so that the hash duplicates never wait for embeddings.",
    partitioned_by_batch=False,
    written_by="embedding_duplicates",
    columns=(
        Column("image_id_a", pa.string(), "One image.", False),
        Column("image_id_b", pa.string(), "The other image.", False),
        Column("distance", pa.int32(), "Perceptual-hash (phash) Hamming distance.", False),
        Column("embedding_distance", pa.float32(), "Cosine distance of the embeddings.", False),
    ),
)
