"""The table scenario discovery writes: `scenarios`."""

import pyarrow as pa

from cv_dataops.core.schema import Column, TableDefinition

SCENARIOS = TableDefinition(
    name="scenarios",
    description="One row per image: the scenario (cluster in embedding space) it belongs to, and its place on "
                "the 2-D map of the catalog.",
    partitioned_by_batch=False,
    written_by="scenarios",
    columns=(
        Column("image_id", pa.string(), "The image.", False),
        Column("scenario", pa.int32(), "Scenario number (0 is the largest).", False),
        Column("distance", pa.float32(), "Cosine distance to the scenario's centre (0 = most typical).", False),
        Column("map_x", pa.float32(), "First coordinate on the 2-D map of the catalog.", False),
        Column("map_y", pa.float32(), "Second coordinate on the 2-D map of the catalog.", False),
    ),
)
