"""Where a fitted embedder lives: under the data root, so every batch (and every process) uses the same one."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from cv_dataops.lib.embeddings import Embedder, PatchKMeansEmbedder, load_embedder
from cv_dataops.lib.storage import Storage

PATCH_KMEANS_KEY = "models/patch-kmeans.npz"


def load_or_fit_embedder(spec: dict, storage: Storage, fitting_sample: Callable[[], list[Image.Image]]) -> Embedder:
    """The configured embedder. The built-in one is fitted on ``fitting_sample()`` the first time (unsupervised)
    and stored; delete ``models/patch-kmeans.npz`` under the data root to refit it on today's catalog."""
    if spec.get("kind", "patch-kmeans") != "patch-kmeans":
        return load_embedder(spec)
    try:
        return PatchKMeansEmbedder.from_bytes(storage.read_bytes(PATCH_KMEANS_KEY))
    except FileNotFoundError:
        options = {k: v for k, v in spec.items() if k not in ("kind", "path")}
        embedder = PatchKMeansEmbedder.fit(fitting_sample(), **options)
        storage.write_bytes(PATCH_KMEANS_KEY, embedder.to_bytes())
        return embedder
