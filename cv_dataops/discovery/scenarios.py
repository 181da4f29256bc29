"""Scenario discovery: clusters in embedding space (night, rain, a new camera, ...) and a 2-D map of the catalog."""

from __future__ import annotations

import io
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


def choose_count(vectors: np.ndarray, seed: int = 0, largest: int = 12, sample: int = 4000) -> int:
    """The number of scenarios with the best silhouette (cosine) among 2..largest, on a sample."""
    n = len(vectors)
    if n < 6:
        return 1
    from sklearn.metrics import (
        silhouette_score,  # here, not at import: loading the definitions stays light
    )

    rng = np.random.default_rng(seed)
    subset = vectors[rng.choice(n, min(n, sample), replace=False)]
    best, best_score = 2, -1.0
    for k in range(2, min(largest, len(subset) // 3) + 1):
        labels = _cluster(subset, k, seed)
        if len(set(labels)) < 2:
            continue
        score = silhouette_score(subset, labels, metric="cosine")
        if score > best_score:
            best, best_score = k, score
    return best


def discover(vectors: np.ndarray, n_scenarios: int | None = None, seed: int = 0) -> Scenarios:
    """Cluster L2-normalised ``vectors``; scenarios are numbered by size, largest first."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) == 0:
        return Scenarios(np.zeros(0, int), np.zeros(0, np.float32), np.zeros((0, vectors.shape[1] if vectors.ndim == 2
                                                                                else 0), np.float32))
    k = min(n_scenarios or choose_count(vectors, seed), len(vectors))
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


def scenario_rows(image_ids: list[str], vectors: np.ndarray, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """The ``scenarios`` table's rows for these images (``image_id, scenario, distance, map_x, map_y``) and the
    map's coordinates: :func:`discover` and :func:`map_2d` over vectors of one embedder version."""
    found = discover(vectors, seed=seed)
    coordinates = map_2d(vectors, seed=seed)
    frame = pd.DataFrame({"image_id": pd.Series(image_ids, dtype=object), "scenario": found.labels.astype(np.int32),
                          "distance": found.distances, "map_x": coordinates[:, 0], "map_y": coordinates[:, 1]})
    return frame, coordinates


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
