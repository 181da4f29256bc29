"""k-means over embeddings: the one wrapper that scenario discovery and curation's cells share."""

from __future__ import annotations

import numpy as np

# Above this many rows, mini-batch k-means (in batches of MINI_BATCH rows): Lloyd's full passes get slow.
EXACT_ROWS = 20_000
MINI_BATCH = 4096


def kmeans_labels(vectors: np.ndarray, k: int, *, seed: int = 0, n_init: int = 1, max_iter: int = 300) -> np.ndarray:
    """Each row's cluster (``0..k-1``; some may be empty) by k-means: Lloyd's (``n_init`` starts, at most
    ``max_iter`` passes) up to :data:`EXACT_ROWS` rows, mini-batch k-means (3 starts) above. Deterministic for a
    ``seed``."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    model = (KMeans(k, n_init=n_init, max_iter=max_iter, random_state=seed) if len(vectors) <= EXACT_ROWS
             else MiniBatchKMeans(k, n_init=3, batch_size=MINI_BATCH, random_state=seed))
    return model.fit_predict(vectors).astype(np.int64)
