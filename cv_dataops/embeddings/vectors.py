"""Reading embedding vectors out of the catalog."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cv_dataops.embeddings.tables import EMBEDDINGS


def catalog_vectors(tables) -> tuple[pd.DataFrame, np.ndarray]:
    """Every embedding in the catalog, as a frame of ids and a float32 matrix."""
    table = tables.read(EMBEDDINGS, columns=["image_id", "batch_id", "vector"])
    if table.num_rows == 0:
        return table.select(["image_id", "batch_id"]).to_pandas(), np.zeros((0, 0), np.float32)
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    return table.select(["image_id", "batch_id"]).to_pandas(), vectors
