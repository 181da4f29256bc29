"""Where a fitted embedder lives: under the data root, so every batch (and every process) uses the same one."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from PIL import Image

from cv_dataops.core.storage import Storage
from cv_dataops.core.versioning import settings_digest
from cv_dataops.embeddings.embedders import Embedder, PatchKMeansEmbedder, load_embedder

MODELS_PREFIX = "models/"
PATCH_KMEANS_KEY = "models/patch-kmeans.npz"


def _options(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k not in ("kind", "path")}


def model_key(spec: dict) -> str:
    """Where the built-in embedder fitted with ``spec``'s options is kept: ``models/patch-kmeans.npz`` for the
    defaults, else a name with the options' digest, so changing them fits a new model instead of reusing the old."""
    options = _options(spec)
    if not options:
        return PATCH_KMEANS_KEY
    return f"{MODELS_PREFIX}patch-kmeans-{settings_digest(options)}.npz"


def load_or_fit_embedder(spec: dict, storage: Storage, fitting_sample: Callable[[], list[Image.Image]]) -> Embedder:
    """The configured embedder. The built-in one is fitted on ``fitting_sample()`` the first time (unsupervised)
    and stored (:func:`model_key`); delete it under the data root to refit on today's catalog. Two runs fitting at
    once (two batches embedded in parallel) agree on one model: the first stored wins, and the loser uses it
    instead of its own, so every batch is embedded in the same space."""
    if spec.get("kind", "patch-kmeans") != "patch-kmeans":
        return load_embedder(spec)
    key = model_key(spec)
    try:
        return PatchKMeansEmbedder.from_bytes(storage.read_bytes(key))
    except FileNotFoundError:
        embedder = PatchKMeansEmbedder.fit(fitting_sample(), **_options(spec))
        if storage.create_bytes(key, embedder.to_bytes()):
            return embedder
        return PatchKMeansEmbedder.from_bytes(storage.read_bytes(key))


def stored_patch_kmeans(storage: Storage, spec: dict, versions: Iterable[str] = ()) -> PatchKMeansEmbedder:
    """A fitted built-in embedder from the data root, never fitted here: the one of ``versions`` (those that made
    the catalog's vectors) if any stored model is, else the one ``spec`` names. FileNotFoundError if none is
    stored."""
    wanted = set(versions)
    preferred = model_key(spec)
    keys = [preferred] + sorted(o.key for o in storage.list(MODELS_PREFIX)
                                if o.key.endswith(".npz") and o.key != preferred
                                and o.key.startswith(f"{MODELS_PREFIX}patch-kmeans"))
    first = None
    for key in keys:
        try:
            embedder = PatchKMeansEmbedder.from_bytes(storage.read_bytes(key))
        except FileNotFoundError:
            continue
        if not wanted or embedder.version in wanted:
            return embedder
        first = first or embedder
    if first is None:
        raise FileNotFoundError(f"no fitted embedder at {storage.uri_of(preferred)}")
    return first


def configured_version(spec: dict, storage: Storage) -> str | None:
    """The version of the vectors the configured embedder makes, without fitting anything: the stored built-in
    model's (None while it is not fitted yet), or the ONNX model's."""
    if spec.get("kind", "patch-kmeans") != "patch-kmeans":
        return load_embedder(spec).version
    try:
        return PatchKMeansEmbedder.from_bytes(storage.read_bytes(model_key(spec))).version
    except FileNotFoundError:
        return None
