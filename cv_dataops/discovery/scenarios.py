"""Scenario discovery: clusters in embedding space (night, rain, a new camera, ...) and a 2-D map of the catalog.

Choosing the clusters (k-means for every count from 2 to 12, a silhouette each) is the costly part, and its answer
barely moves when a batch adds a few percent to the catalog. So the choice is kept (:class:`ScenarioModel`: the
centres and the map's projection) and later images are assigned to the nearest centre; the clusters are chosen
again only when the catalog has grown by a configurable fraction since, when a batch added since then drifted
(a new kind of data may be a new scenario), or when the embedder changed. Scenario numbers then stay put between
runs, so a scenario a team curates for keeps its number.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from cv_dataops.embeddings.clustering import kmeans_labels

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


@dataclass
class Scenarios:
    labels: np.ndarray      # (n,) int, 0 = the largest scenario
    distances: np.ndarray   # (n,) cosine distance to the scenario's centre
    centres: np.ndarray     # (k, d), L2-normalised


def _cluster(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    return kmeans_labels(vectors, k, seed=seed, n_init=4)


def choose_count(vectors: np.ndarray, seed: int = 0, largest: int = 12, sample: int = 4000, workers: int = 1) -> int:
    """The number of scenarios with the best silhouette (cosine) among 2..largest, on a sample. The sample's
    cosine distances are computed once for every count's silhouette, and ``workers`` threads try counts at once
    (k-means and the silhouette's reductions release the GIL): the same answer as one thread, in less time."""
    n = len(vectors)
    if n < 6:
        return 1
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.metrics import (
        silhouette_score,  # here, not at import: loading the definitions stays light
    )

    rng = np.random.default_rng(seed)
    subset = vectors[rng.choice(n, min(n, sample), replace=False)]
    distances = 1.0 - subset @ subset.T  # unit rows: cosine distance, (sample, sample) float32
    np.clip(distances, 0.0, 2.0, out=distances)
    np.fill_diagonal(distances, 0.0)

    def score(k: int) -> float | None:
        labels = _cluster(subset, k, seed)
        if len(set(labels)) < 2:
            return None
        return float(silhouette_score(distances, labels, metric="precomputed"))

    counts = list(range(2, min(largest, len(subset) // 3) + 1))
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="scenario-count") as pool:
        scores = list(pool.map(score, counts))
    best, best_score = 2, -1.0
    for k, value in zip(counts, scores, strict=True):  # in order of k: the first best wins, as before
        if value is not None and value > best_score:
            best, best_score = k, value
    return best


def discover(vectors: np.ndarray, n_scenarios: int | None = None, seed: int = 0, workers: int = 1) -> Scenarios:
    """Cluster L2-normalised ``vectors``; scenarios are numbered by size, largest first (``workers``: see
    :func:`choose_count`)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) == 0:
        return Scenarios(np.zeros(0, int), np.zeros(0, np.float32), np.zeros((0, vectors.shape[1] if vectors.ndim == 2
                                                                                else 0), np.float32))
    k = min(n_scenarios or choose_count(vectors, seed, workers=workers), len(vectors))
    raw = _cluster(vectors, k, seed) if k > 1 else np.zeros(len(vectors), int)
    order = np.argsort(-np.bincount(raw, minlength=k), kind="stable")
    labels = np.empty_like(raw)
    for new, old in enumerate(order):
        labels[raw == old] = new
    centres = np.stack([vectors[labels == c].mean(axis=0) for c in range(k)])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    distances = 1.0 - np.einsum("ij,ij->i", vectors, centres[labels])
    return Scenarios(labels, distances.astype(np.float32), centres.astype(np.float32))


def map_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D map of the catalog (PCA: linear, deterministic, and fast at any size)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) < 3:
        return np.zeros((len(vectors), 2), np.float32)
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(vectors).astype(np.float32)


def typical_members(frame: pd.DataFrame, per_scenario: int = 5) -> dict[int, pd.DataFrame]:
    """Each scenario's ``per_scenario`` members nearest its centre (its most typical images)."""
    return {int(scenario): members.nsmallest(per_scenario, "distance")
            for scenario, members in frame.groupby("scenario")}


def map_png(coordinates: np.ndarray, labels: np.ndarray, side: int = 480) -> bytes:
    """The map as a small PNG scatter plot, one colour per scenario."""
    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    if len(coordinates):
        low, high = coordinates.min(axis=0), coordinates.max(axis=0)
        scaled = (coordinates - low) / np.maximum(high - low, 1e-9) * (side - 40) + 20
        for (x, y), label in zip(scaled, labels, strict=True):
            colour = PALETTE[int(label) % len(PALETTE)]
            draw.ellipse((x - 2, side - y - 2, x + 2, side - y + 2), fill=colour)
        for label in sorted(set(int(v) for v in labels))[: len(PALETTE)]:
            draw.rectangle((8 + 40 * label, 6, 18 + 40 * label, 16), fill=PALETTE[label % len(PALETTE)])
            draw.text((21 + 40 * label, 5), str(label), fill="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


MODEL_VERSION = 1


@dataclass(frozen=True)
class ScenarioModel:
    """A chosen clustering, kept to assign later images: unit ``centres`` (k, d) numbered by size at the choice,
    the map's PCA ``map_mean`` (d,) and ``map_components`` (2, d), the embedder version it was chosen in, and the
    images and batches it was chosen on."""

    embedder_version: str
    centres: np.ndarray
    map_mean: np.ndarray
    map_components: np.ndarray
    fitted_images: int
    fitted_batches: tuple[str, ...]

    def to_bytes(self) -> bytes:
        """``np.savez`` (no pickle), the strings as JSON."""
        buffer = io.BytesIO()
        header = {"model_version": MODEL_VERSION, "embedder_version": self.embedder_version,
                  "fitted_images": self.fitted_images, "fitted_batches": list(self.fitted_batches)}
        np.savez(buffer, centres=self.centres, map_mean=self.map_mean, map_components=self.map_components,
                 header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ScenarioModel | None:
        """The stored model, or None when it is unreadable or of another format version (it is then re-chosen)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                header = json.loads(stored["header"].tobytes().decode())
                if header.get("model_version") != MODEL_VERSION:
                    return None
                return cls(header["embedder_version"], stored["centres"], stored["map_mean"],
                           stored["map_components"], int(header["fitted_images"]), tuple(header["fitted_batches"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # JSONDecodeError is a ValueError
            return None


def refit_reason(model: ScenarioModel | None, embedder_version: str, images: int, batch_ids: Iterable[str],
                 drifted_batches: Iterable[str], growth: float) -> str | None:
    """Why the clusters must be chosen again now, or None to keep them (``growth``: the fraction the catalog may
    grow by first; 0 chooses on every run)."""
    if model is None:
        return "no clustering chosen yet"
    if model.embedder_version != embedder_version:
        return f"the embedder changed ({model.embedder_version} -> {embedder_version})"
    if len(model.centres) and model.centres.shape[1] != model.map_mean.shape[0]:
        return "the stored clustering is inconsistent"
    if images > model.fitted_images * (1 + growth) or images < model.fitted_images * (1 - growth) or growth == 0:
        return (f"the catalog went from {model.fitted_images} to {images} images since the clusters were chosen "
                f"(re-chosen beyond {growth:.0%})")
    new = set(batch_ids) - set(model.fitted_batches)
    drifted = sorted(new & set(drifted_batches))
    if drifted:
        return f"batch {drifted[0]} drifted since the clusters were chosen" + (
            f" (and {len(drifted) - 1} more)" if len(drifted) > 1 else "")
    return None


def _map_basis(vectors: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    d = vectors.shape[1] if vectors.ndim == 2 else 0
    if len(vectors) < 3:
        return np.zeros(d, np.float32), np.zeros((2, d), np.float32)
    from sklearn.decomposition import PCA

    pca = PCA(2, random_state=seed).fit(vectors)
    return pca.mean_.astype(np.float32), pca.components_.astype(np.float32)


def assign(model: ScenarioModel, vectors: np.ndarray) -> tuple[Scenarios, np.ndarray]:
    """Every row to its nearest centre (cosine), and its map coordinates by the stored projection."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if not len(vectors) or not len(model.centres):
        return Scenarios(np.zeros(len(vectors), int), np.zeros(len(vectors), np.float32), model.centres), \
            np.zeros((len(vectors), 2), np.float32)
    similarity = vectors @ model.centres.T
    labels = similarity.argmax(axis=1)
    distances = (1.0 - similarity[np.arange(len(vectors)), labels]).astype(np.float32)
    coordinates = ((vectors - model.map_mean) @ model.map_components.T).astype(np.float32)
    return Scenarios(labels, distances, model.centres), coordinates


@dataclass(frozen=True)
class ScenarioUpdate:
    frame: pd.DataFrame          # the scenarios table's rows
    coordinates: np.ndarray      # (n, 2) map
    model: ScenarioModel         # the clustering in force (new when re-chosen)
    rechosen: bool
    reason: str


def update_scenarios(image_ids: list[str], batch_ids: list[str], vectors: np.ndarray, embedder_version: str,
                     previous: ScenarioModel | None, *, drifted_batches: Iterable[str] = (), growth: float = 0.25,
                     seed: int = 0, workers: int = 1) -> ScenarioUpdate:
    """The scenarios of every image: the previous clustering's, with later images assigned to its centres, or a
    new choice (:func:`discover`, :func:`map_2d`) when :func:`refit_reason` says so."""
    vectors = np.asarray(vectors, dtype=np.float32)
    why = refit_reason(previous, embedder_version, len(vectors), batch_ids, drifted_batches, growth)
    if why is None:
        found, coordinates = assign(previous, vectors)
        model = previous
        reason = (f"{len(previous.centres)} scenarios chosen on {previous.fitted_images} images; "
                  f"{len(vectors) - previous.fitted_images:+d} images since, assigned to the nearest")
    else:
        found = discover(vectors, seed=seed, workers=workers)
        mean, components = _map_basis(vectors, seed)
        coordinates = ((vectors - mean) @ components.T).astype(np.float32) if len(vectors) else \
            np.zeros((0, 2), np.float32)
        model = ScenarioModel(embedder_version, found.centres, mean, components, len(vectors),
                              tuple(sorted(set(batch_ids))))
        reason = f"chosen again: {why}"
    frame = pd.DataFrame({"image_id": pd.Series(image_ids, dtype=object), "scenario": found.labels.astype(np.int32),
                          "distance": found.distances, "map_x": coordinates[:, 0], "map_y": coordinates[:, 1]})
    return ScenarioUpdate(frame, coordinates, model, why is not None, reason)

