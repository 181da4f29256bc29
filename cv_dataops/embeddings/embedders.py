"""Embeddings: every image as an L2-normalised vector, the space that curation, label audit and drift work in.

One small interface, :class:`Embedder` (``name``, ``version``, ``dimension``, ``embed(images)``), two kinds:

* :class:`PatchKMeansEmbedder` (``"patch-kmeans"``), the built-in default. No download, no GPU: it learns its
  parameters from the catalog's own images, without labels, in the manner of Coates & Ng (2011), "An analysis of
  single-layer networks in unsupervised feature learning". Every image is first brought to ``input_size`` x
  ``input_size`` pixels (32 by default) by a **center crop** to a square (the longer side loses its borders
  equally; nothing is padded) and a bicubic resize. Then:

  1. every 6x6 RGB patch (stride 1) is contrast-normalised (its own mean removed, divided by
     ``sqrt(variance + 10)`` on the 0..255 scale) and ZCA-whitened (``eps = 0.1``);
  2. each patch is encoded against ``n_centroids`` k-means centroids of whitened patches with the "triangle"
     activation ``max(0, mean_k(d_k) - d_k)``, ``d_k`` the Euclidean distance to centroid ``k``;
  3. the activation maps are sum-pooled over a 2x2 and a 3x3 grid of the image, and again (1x1 and 2x2) at half
     resolution (the image averaged over 2x2 pixel blocks): 18 cells of ``n_centroids`` values;
  4. the pooled features are made **invariant to a horizontal flip**, at no extra cost: the whitening is fitted
     on patches and their mirror images, and the centroids come in mirror pairs (k-means finds half of them, the
     other half are their mirror images), so the flipped image's activations are the original's with centroids
     and columns swapped; adding each cell to its mirrored cell's mirrored centroid gives the average over the
     image and its mirror image (half the values are then duplicates and are dropped);
  5. the features are standardised and projected orthonormally onto their top ``dimension`` (512) principal
     directions, completed with random orthonormal directions when the fitting sample has fewer images than
     that; a fixed random rotation then spreads the variance evenly over the coordinates (so per-coordinate
     standardisation, as in a linear probe or a per-dimension drift test, does not blow up the low-variance
     tail of the PCA); the rows are L2-normalised.

  Whitening, centroids, standardisation and projection are fitted by :meth:`PatchKMeansEmbedder.fit` on a sample
  of the catalog (unsupervised), stored with :meth:`~PatchKMeansEmbedder.to_bytes` (``np.savez``, no pickle) and
  identified by :attr:`~PatchKMeansEmbedder.version`, a hash of every parameter. On the CIFAR-10 sample a linear
  probe on these embeddings beats HOG + colour histograms by a wide margin (figures and speed in
  docs/benchmarks.md, written by ``bench/embedding_benchmark.py``).

* :class:`OnnxEmbedder` (``"onnx:<file stem>"``): any ONNX image model run by onnxruntime (an optional
  dependency, imported only when used), with its preprocessing declared: input size, pixel scale, mean, std,
  channel order, layout, which output, and optional pooling. Same center-crop-and-resize rule, to the model's
  input aspect.

:func:`load_embedder` builds either from a spec dict, :func:`embed_bytes` decodes and embeds encoded images in
streaming batches, :func:`linear_probe_accuracy` is the yardstick.

This module does not import Dagster.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy.sparse import csr_matrix

from cv_dataops.embeddings.neighbors import unit_rows
from cv_dataops.images.analysis_cache import AnalysisImage, model_pixels
from cv_dataops.images.decode import to_8bit

__all__ = ["Embedder", "PatchKMeansEmbedder", "OnnxEmbedder", "load_embedder", "embed_bytes", "prepare_image",
           "linear_probe_accuracy"]


@runtime_checkable
class Embedder(Protocol):
    """Turns images into L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dimension: int

    @property
    def version(self) -> str:
        """Changes whenever the parameters or the preprocessing change."""
        ...

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """float32 array (len(images), dimension), rows of unit L2 norm."""
        ...


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing shared by every embedder
# ---------------------------------------------------------------------------------------------------------------

def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB through THE decoder's 8-bit conversion (alpha over white, wide modes scaled)."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    return to_8bit(image).convert("RGB")


def _crop_box(width: int, height: int, target_width: int, target_height: int) -> tuple[float, float, float, float]:
    """The centered box of the target's aspect ratio, as large as fits in the image."""
    aspect = target_width / target_height
    if width > height * aspect:  # too wide: crop the sides
        crop = height * aspect
        left = (width - crop) / 2
        return left, 0.0, left + crop, float(height)
    crop = width / aspect  # too tall (or exact): crop top and bottom
    top = (height - crop) / 2
    return 0.0, top, float(width), top + crop


def prepare_image(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``image`` as a uint8 array (height, width, 3) of ``size`` = (width, height): converted to RGB, center
    cropped to the target's aspect ratio (no padding), resized bicubically (antialiased)."""
    image = _to_rgb(image)
    width, height = size
    if image.size == (width, height):
        return np.asarray(image, dtype=np.uint8)
    box = _crop_box(image.width, image.height, width, height)
    resized = image.resize((width, height), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def _prepare_batch(images: Sequence[Image.Image], size: tuple[int, int]) -> np.ndarray:
    width, height = size
    out = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        out[index] = prepare_image(image, size)
    return out


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The built-in embedder: k-means on whitened patches
# ---------------------------------------------------------------------------------------------------------------

FORMAT_VERSION = 1
# How images become the pixels an embedder sees; part of every embedder's version, so vectors made from pixels
# decoded another way show as stale. "2": THE decoder's analysis image (before: a draft decode of its own).
PREPROCESSING_VERSION = "2"
# Bumped whenever the feature computation itself changes (the parameter hash alone would not show that).
ALGORITHM_VERSION = "1"
CONTRAST_NORMALISATION = 10.0    # added to the patch variance (pixel values on 0..255), Coates & Ng
FULL_GRIDS = (2, 3)              # sum-pooling grids at full resolution
HALF_GRIDS = (1, 2)              # ... and at half resolution
CHUNK_IMAGES = 8                 # images whose activation maps are computed at once (about 10 MB at the default)


def _mirror_permutation(patch_size: int) -> np.ndarray:
    """Index permutation that mirrors a flattened (3, p, p) patch left-right."""
    return np.arange(3 * patch_size * patch_size).reshape(3, patch_size, patch_size)[:, :, ::-1].ravel()


def _patches(x: np.ndarray, patch_size: int) -> np.ndarray:
    """(n, s, s, 3) float32 images -> (n * positions, 3 * p * p) patches, flattened as (channel, row, column)."""
    windows = sliding_window_view(x, (patch_size, patch_size), axis=(1, 2))  # n, h, w, 3, p, p
    return windows.reshape(-1, 3 * patch_size * patch_size)  # copies: the windows overlap


def _normalise_patches(p: np.ndarray) -> np.ndarray:
    """In place: each row minus its mean, divided by sqrt(variance + 10)."""
    p -= p.mean(axis=1, keepdims=True)
    scale = np.einsum("ij,ij->i", p, p) / np.float32(p.shape[1])
    scale += np.float32(CONTRAST_NORMALISATION)
    np.sqrt(scale, out=scale)
    p /= scale[:, None]
    return p


def _overlap_weights(length: int, cells: int) -> np.ndarray:
    """(cells, length): how much of position j (covering [j, j+1)) lies in cell c (covering [c L/g, (c+1) L/g]).
    Symmetric under mirroring, so a flip maps cells onto cells exactly even when ``length`` is odd."""
    edges = np.arange(cells + 1) * (length / cells)
    j = np.arange(length)
    lo, hi = edges[:-1, None], edges[1:, None]
    return np.clip(np.minimum(j + 1, hi) - np.maximum(j, lo), 0.0, None)


def _pooling(length: int, grids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pooling matrix (cells, length * length) for the grids, and the cell permutation of a left-right flip."""
    rows, flips, offset = [], [], 0
    for g in grids:
        w = _overlap_weights(length, g)
        rows.append(np.einsum("ai,bj->abij", w, w).reshape(g * g, length * length))
        flips.append(offset + np.arange(g * g).reshape(g, g)[:, ::-1].ravel())
        offset += g * g
    return np.concatenate(rows).astype(np.float32), np.concatenate(flips)


def _kmeans(z: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> np.ndarray:
    """Plain (Lloyd) k-means on the rows of z, initialised on random rows; empty clusters restart on random rows."""
    centroids = z[rng.choice(len(z), size=k, replace=False)].copy()
    labels = np.empty(len(z), dtype=np.int64)
    block = 16384
    for _ in range(iterations):
        half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
        for start in range(0, len(z), block):
            scores = z[start:start + block] @ centroids.T
            scores -= half_norms
            labels[start:start + block] = np.argmax(scores, axis=1)
        counts = np.bincount(labels, minlength=k)
        membership = csr_matrix((np.ones(len(z), np.float32), (labels, np.arange(len(z)))), shape=(k, len(z)))
        sums = np.asarray(membership @ z)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].astype(np.float32)
        empty = int((~filled).sum())
        if empty:
            centroids[~filled] = z[rng.choice(len(z), size=empty, replace=False)]
    return centroids


def _random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


class PatchKMeansEmbedder:
    """The built-in embedder (see the module docstring). Build it with :meth:`fit` or :meth:`from_bytes`."""

    name = "patch-kmeans"

    def __init__(self, *, input_size: int, patch_size: int, whitening_mean: np.ndarray, whitening: np.ndarray,
                 centroids: np.ndarray, projection: np.ndarray, bias: np.ndarray, fit_info: dict | None = None):
        self.input_size = int(input_size)
        self.patch_size = int(patch_size)
        self.whitening_mean = np.ascontiguousarray(whitening_mean, dtype=np.float32)
        self.whitening = np.ascontiguousarray(whitening, dtype=np.float32)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.projection = np.ascontiguousarray(projection, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.fit_info = dict(fit_info or {})
        _check_geometry(self.input_size, self.patch_size)
        k, patch_dim = self.centroids.shape
        if patch_dim != 3 * self.patch_size ** 2 or k % 2:
            raise ValueError(f"centroids of shape {self.centroids.shape} do not fit {self.patch_size}x"
                             f"{self.patch_size} RGB patches in mirror pairs")
        full, half = self.input_size - self.patch_size + 1, self.input_size // 2 - self.patch_size + 1
        self._pool_full, flip_full = _pooling(full, FULL_GRIDS)
        self._pool_half, flip_half = _pooling(half, HALF_GRIDS)
        self._cell_flip = np.concatenate([flip_full, len(flip_full) + flip_half])
        features = len(self._cell_flip) * (k // 2)
        if self.projection.shape[0] != features or self.bias.shape != (self.projection.shape[1],):
            raise ValueError(f"projection {self.projection.shape} / bias {self.bias.shape} do not match the "
                             f"{features} pooled features")
        self.dimension = int(self.projection.shape[1])
        # Whitening with its mean folded in, and the squared distances as one matrix product:
        # [z, 1, |z|^2] @ [[-2 C^T], [|c|^2], [1]] = |z - c|^2.
        self._whiten_bias = -(self.whitening_mean @ self.whitening)
        self._distance = np.vstack([-2.0 * self.centroids.T, np.einsum("ij,ij->i", self.centroids, self.centroids),
                                    np.ones(k)]).astype(np.float32)
        self._version = f"{ALGORITHM_VERSION}-{self._parameter_hash()[:16]}"

    # -- identity -------------------------------------------------------------------------------------------------

    def _config(self) -> dict:
        return {"format": FORMAT_VERSION, "algorithm": ALGORITHM_VERSION, "preprocessing": PREPROCESSING_VERSION,
                "input_size": self.input_size,
                "patch_size": self.patch_size, "full_grids": list(FULL_GRIDS), "half_grids": list(HALF_GRIDS)}

    def _parameter_hash(self) -> str:
        return _sha(json.dumps(self._config(), sort_keys=True).encode(),
                    *(a.tobytes() for a in (self.whitening_mean, self.whitening, self.centroids, self.projection,
                                            self.bias)))

    @property
    def version(self) -> str:
        """``<algorithm>-<hash of every parameter>``: changes whenever a parameter does."""
        return self._version

    @property
    def n_centroids(self) -> int:
        return int(self.centroids.shape[0])

    def __repr__(self) -> str:
        return (f"PatchKMeansEmbedder(version={self.version!r}, dimension={self.dimension}, "
                f"n_centroids={self.n_centroids}, input_size={self.input_size})")

    # -- fitting --------------------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, images: Iterable[Image.Image], *, n_centroids: int = 400, seed: int = 0, max_images: int = 5000,
            dimension: int = 512, input_size: int = 32, patch_size: int = 6, n_patches: int = 200_000,
            kmeans_iterations: int = 15, whitening_eps: float = 0.1) -> PatchKMeansEmbedder:
        """Fit on (at most ``max_images`` of) ``images``, without labels. Only the first ``max_images`` are read:
        pass a random sample of the catalog, not its first, possibly homogeneous, images.

        ``n_centroids`` (even) counts mirror pairs twice: k-means finds ``n_centroids / 2`` of them. ``dimension``
        is the output dimension (fewer only if the pooled features have fewer). Deterministic for a given
        ``seed``, input and BLAS set-up. Cost at the defaults, on one core: about 15 s (k-means, PCA) plus one
        embedding pass over the sample (some 30 s for 3,000 images); memory about 0.1 MB per image plus 250 MB.
        """
        if n_centroids < 2 or n_centroids % 2:
            raise ValueError(f"n_centroids must be an even number of at least 2, got {n_centroids}")
        if dimension < 1 or max_images < 1 or n_patches < 1:
            raise ValueError("dimension, max_images and n_patches must be positive")
        _check_geometry(input_size, patch_size)
        pixels = []
        for image in images:
            if len(pixels) >= max_images:
                break
            pixels.append(prepare_image(image, (input_size, input_size)))
        if not pixels:
            raise ValueError("PatchKMeansEmbedder.fit needs at least one image")
        x = np.stack(pixels)
        del pixels
        n_images = len(x)
        rng = np.random.default_rng(seed)

        # 1. Patches from random places of random images, and their mirror images.
        positions = input_size - patch_size + 1
        half_count = max(n_patches // 2, n_centroids)
        which = rng.integers(0, len(x), half_count)
        rows = rng.integers(0, positions, half_count)
        cols = rng.integers(0, positions, half_count)
        windows = sliding_window_view(x, (patch_size, patch_size), axis=(1, 2))
        sample = windows[which, rows, cols].reshape(half_count, -1).astype(np.float32)
        sample = _normalise_patches(sample)
        mirror = _mirror_permutation(patch_size)
        sample = np.concatenate([sample, sample[:, mirror]])

        # 2. ZCA whitening, symmetric under the mirror permutation (fitted on a mirror-closed sample).
        mean = sample.mean(axis=0, dtype=np.float64)
        sample -= mean.astype(np.float32)
        covariance = np.zeros((sample.shape[1], sample.shape[1]))
        for start in range(0, len(sample), 16384):
            block = sample[start:start + 16384].astype(np.float64)
            covariance += block.T @ block
        covariance /= len(sample)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        whitening = (eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + whitening_eps)) @ eigenvectors.T
        z = sample @ whitening.astype(np.float32)
        del sample

        # 3. k-means on whitened patches; the mirror images complete the dictionary.
        base = _kmeans(z, n_centroids // 2, rng, kmeans_iterations)
        centroids = np.concatenate([base, base[:, mirror]])
        del z

        # 4. Pooled features of the sample, then standardisation + PCA + rotation, folded into one projection.
        identity_dim = len(_pooling(positions, FULL_GRIDS)[1]) + len(_pooling(input_size // 2 - patch_size + 1,
                                                                              HALF_GRIDS)[1])
        features = identity_dim * (n_centroids // 2)
        dimension = min(dimension, features)
        provisional = cls(input_size=input_size, patch_size=patch_size, whitening_mean=mean, whitening=whitening,
                          centroids=centroids, projection=np.zeros((features, 1), np.float32),
                          bias=np.zeros(1, np.float32))
        raw = provisional.pooled_features(x).astype(np.float64)
        del x
        feature_mean = raw.mean(axis=0)
        feature_std = raw.std(axis=0)
        feature_std[feature_std <= 1e-6 * max(float(feature_std.max()), 1e-30)] = 1.0
        raw -= feature_mean
        raw /= feature_std
        basis, principal = _principal_basis(raw, dimension, rng)  # (dimension, features), orthonormal rows
        rotation = _random_orthogonal(dimension, rng)
        projection = (basis.T / feature_std[:, None]) @ rotation
        bias = -(feature_mean @ projection)
        info = {"images": int(n_images), "patches": int(2 * half_count), "seed": int(seed),
                "kmeans_iterations": int(kmeans_iterations), "whitening_eps": float(whitening_eps),
                "principal_directions": int(principal)}
        return cls(input_size=input_size, patch_size=patch_size, whitening_mean=mean, whitening=whitening,
                   centroids=centroids, projection=projection, bias=bias, fit_info=info)

    # -- serialisation --------------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Every parameter, as an ``np.savez`` archive (no pickled objects)."""
        buffer = io.BytesIO()
        meta = {**self._config(), "fit_info": self.fit_info}
        np.savez(buffer, meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
                 whitening_mean=self.whitening_mean, whitening=self.whitening, centroids=self.centroids,
                 projection=self.projection, bias=self.bias)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PatchKMeansEmbedder:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                meta = json.loads(archive["meta"].tobytes().decode())
                arrays = {k: archive[k] for k in ("whitening_mean", "whitening", "centroids", "projection", "bias")}
        except Exception as error:
            raise ValueError(f"not a stored PatchKMeansEmbedder ({type(error).__name__}: {error})") from error
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"stored PatchKMeansEmbedder has format {meta.get('format')}, this code reads "
                             f"{FORMAT_VERSION}: fit it again")
        if meta.get("algorithm") != ALGORITHM_VERSION:
            raise ValueError(f"stored PatchKMeansEmbedder was fitted for feature algorithm {meta.get('algorithm')}, "
                             f"this code computes {ALGORITHM_VERSION}: fit it again")
        return cls(input_size=meta["input_size"], patch_size=meta["patch_size"], fit_info=meta.get("fit_info"),
                   **arrays)

    # -- embedding ------------------------------------------------------------------------------------------------

    def _activations(self, x: np.ndarray) -> np.ndarray:
        """(n, s, s, 3) float32 -> (n, positions, n_centroids) triangle activations."""
        n, size = x.shape[0], x.shape[1]
        positions = (size - self.patch_size + 1) ** 2
        patches = _normalise_patches(_patches(x, self.patch_size))
        patch_dim = patches.shape[1]
        augmented = np.empty((len(patches), patch_dim + 2), dtype=np.float32)
        np.matmul(patches, self.whitening, out=augmented[:, :patch_dim])
        augmented[:, :patch_dim] += self._whiten_bias
        augmented[:, patch_dim] = 1.0
        augmented[:, patch_dim + 1] = np.einsum("ij,ij->i", augmented[:, :patch_dim], augmented[:, :patch_dim])
        distances = augmented @ self._distance          # squared distances
        np.maximum(distances, 0.0, out=distances)
        np.sqrt(distances, out=distances)
        mean = distances.mean(axis=1, keepdims=True)
        np.subtract(mean, distances, out=distances)       # triangle: max(0, mean - distance)
        np.maximum(distances, 0.0, out=distances)
        return distances.reshape(n, positions, -1)

    def pooled_features(self, pixels: np.ndarray) -> np.ndarray:
        """(n, s, s, 3) uint8 images at the input size -> (n, features) flip-invariant pooled activations
        (before standardisation and projection)."""
        half_k = self.n_centroids // 2
        cells = len(self._cell_flip)
        out = np.empty((len(pixels), cells * half_k), dtype=np.float32)
        for start in range(0, len(pixels), CHUNK_IMAGES):
            x = pixels[start:start + CHUNK_IMAGES].astype(np.float32)
            n, s = x.shape[0], x.shape[1]
            half = x.reshape(n, s // 2, 2, s // 2, 2, 3).mean(axis=(2, 4))
            pooled = np.concatenate([np.matmul(self._pool_full, self._activations(x)),
                                     np.matmul(self._pool_half, self._activations(half))], axis=1)
            symmetric = pooled[:, :, :half_k] + pooled[:, self._cell_flip, half_k:]
            out[start:start + n] = symmetric.reshape(n, -1)
        return out

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, input_size, input_size, 3) uint8 images, already at the input size -> (n, dimension)."""
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or pixels.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected (n, {self.input_size}, {self.input_size}, 3) pixels, got {pixels.shape}")
        if len(pixels) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        projected = self.pooled_features(pixels) @ self.projection
        projected += self.bias
        return unit_rows(projected)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """float32 (len(images), dimension), L2-normalised rows. A mirrored image gets the same vector."""
        return self.embed_pixels(_prepare_batch(list(images), self.input_shape))

    @property
    def input_shape(self) -> tuple[int, int]:
        """(width, height) every image is center-cropped and resized to."""
        return self.input_size, self.input_size


def _check_geometry(input_size: int, patch_size: int) -> None:
    if patch_size < 2:
        raise ValueError(f"patch_size must be at least 2, got {patch_size}")
    if input_size % 2 or input_size // 2 < patch_size:
        raise ValueError(f"input_size must be even and at least twice the patch size ({2 * patch_size}), "
                         f"got {input_size}")


def _top_eigen(symmetric: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenvalues (descending) and their eigenvectors (columns)."""
    from scipy.linalg import eigh

    size = len(symmetric)
    values, vectors = eigh(symmetric, subset_by_index=(size - count, size - 1), driver="evr")
    return values[::-1], vectors[:, ::-1]


def _principal_basis(x: np.ndarray, dimension: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Orthonormal rows: the top principal directions of the centred rows of ``x``, completed with random
    orthonormal directions when there are fewer than ``dimension`` with non-zero variance; and how many are
    principal."""
    n, d = x.shape
    top = min(dimension, n, d)
    if n > d:  # eigenvectors of the d x d scatter matrix
        variances, directions = _top_eigen(x.T @ x, top)
        directions = directions.T
    else:  # through the n x n Gram matrix: x^T u / sqrt(lambda)
        variances, u = _top_eigen(x @ x.T, top)
        directions = (x.T @ (u / np.sqrt(np.maximum(variances, 1e-300)))).T
    keep = variances > 1e-9 * max(float(variances[0]) if len(variances) else 0.0, 1e-30)
    directions = directions[keep][:dimension]
    # Deterministic signs: the largest entry of each direction positive.
    signs = np.sign(directions[np.arange(len(directions)), np.abs(directions).argmax(axis=1)])
    directions = directions * signs[:, None]
    principal = len(directions)
    missing = dimension - principal
    if missing > 0:
        extra = rng.standard_normal((missing, d))
        extra -= (extra @ directions.T) @ directions
        q, _ = np.linalg.qr(extra.T)
        directions = np.vstack([directions, q.T[:missing]])
    return directions, principal


# ---------------------------------------------------------------------------------------------------------------
# Any ONNX image model
# ---------------------------------------------------------------------------------------------------------------

_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_POOLS = (None, "avg", "max", "flatten")


class OnnxEmbedder:
    """An ONNX image model as an embedder (onnxruntime, CPU).

    Preprocessing: each image is converted to RGB, center-cropped to the model's input aspect ratio, resized
    bicubically to ``input_size`` = (height, width), scaled by ``pixel_scale`` (default 1/255, so ``mean`` and
    ``std`` are in 0..1 units as torchvision publishes them), normalised ``(x - mean) / std`` per channel, put in
    ``channel_order`` ("RGB" or "BGR"; mean and std are given in that order) and ``layout`` ("NCHW" or "NHWC").
    The chosen output (name or index) is pooled if ``pool`` says so ("avg" or "max" over the spatial axes of a
    4-D output, laid out like the input, or "flatten"), must then be 2-D, and is L2-normalised.

    ``threads``: onnxruntime's threads per batch; by default one, as for every native library here
    (core.threads), since :func:`embed_bytes` runs ``workers`` batches at once instead.
    """

    def __init__(self, model_path: str, *, input_size: tuple[int, int] | int, mean: Sequence[float],
                 std: Sequence[float], layout: str = "NCHW", channel_order: str = "RGB", output: str | int = 0,
                 pool: str | None = None, pixel_scale: float = 1.0 / 255.0, threads: int | None = 1):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {model_path}")
        size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(v) for v in input_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"input_size must be (height, width), got {input_size!r}")
        layout, channel_order = str(layout).upper(), str(channel_order).upper()
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
        mean_values, std_values = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean_values) not in (1, 3) or len(std_values) not in (1, 3):
            raise ValueError("mean and std need 1 or 3 values (one per channel)")
        if any(v == 0 for v in std_values):
            raise ValueError("std values must be non-zero")
        try:
            import onnxruntime as ort
        except ImportError as error:  # optional dependency
            raise ImportError("OnnxEmbedder needs onnxruntime: pip install onnxruntime") from error

        self.model_path = str(path)
        self.input_size = size
        self.mean, self.std = mean_values, std_values
        self.layout, self.channel_order, self.output, self.pool = layout, channel_order, output, pool
        self.pixel_scale = float(pixel_scale)
        self.name = f"onnx:{path.stem}"
        model_bytes = path.read_bytes()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(model_bytes, sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as error:
            raise ValueError(f"onnxruntime cannot load {model_path}: {error}") from error
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path.name} has {len(inputs)} inputs ({[i.name for i in inputs]}); an image model "
                             "with exactly one input is needed")
        self._input = inputs[0]
        if self._input.type not in _ONNX_FLOAT_TYPES:
            raise ValueError(f"{path.name}: input {self._input.name!r} is {self._input.type}, a float tensor is needed")
        self._input_dtype = _ONNX_FLOAT_TYPES[self._input.type]
        expected = (3, *size) if layout == "NCHW" else (*size, 3)
        declared = list(self._input.shape)
        if len(declared) != 4:
            raise ValueError(f"{path.name}: input {self._input.name!r} has shape {declared}, a 4-D image batch "
                             f"({layout}) is needed")
        for axis, (want, have) in enumerate(zip(expected, declared[1:], strict=True), start=1):
            if isinstance(have, int) and have > 0 and have != want:
                raise ValueError(f"{path.name}: input {self._input.name!r} has shape {declared} but the config "
                                 f"gives input_size={list(size)}, layout={layout} (expects "
                                 f"[N, {', '.join(map(str, expected))}]; axis {axis} differs)")
        self._batch_one = declared[0] == 1
        outputs = [o.name for o in self._session.get_outputs()]
        if isinstance(output, int) and not isinstance(output, bool):
            if not -len(outputs) <= output < len(outputs):
                raise ValueError(f"{path.name}: output index {output} out of range; outputs are {outputs}")
            self._output_name = outputs[output]
        elif isinstance(output, str):
            if output not in outputs:
                raise ValueError(f"{path.name}: no output named {output!r}; outputs are {outputs}")
            self._output_name = output
        else:
            raise ValueError(f"output must be a name or an index, got {output!r}")
        self._config = {"model_sha256": _sha(model_bytes), "input_size": list(size), "mean": list(mean_values),
                        "std": list(std_values), "layout": layout, "channel_order": channel_order,
                        "output": self._output_name, "pool": pool, "pixel_scale": self.pixel_scale,
                        "preprocessing": PREPROCESSING_VERSION}
        self._version = _sha(json.dumps(self._config, sort_keys=True).encode())[:16]
        # One probe run: catches a wrong config now, with a clear message, and tells the dimension.
        probe = self._run(np.full((1, size[0], size[1], 3), 128, dtype=np.uint8))
        self.dimension = int(probe.shape[1])

    @property
    def version(self) -> str:
        """Hash of the model file and the preprocessing config."""
        return self._version

    @property
    def input_shape(self) -> tuple[int, int]:
        """(width, height) every image is center-cropped and resized to."""
        return self.input_size[1], self.input_size[0]

    def __repr__(self) -> str:
        return f"OnnxEmbedder({self.model_path!r}, version={self.version!r}, dimension={self.dimension})"

    def _tensor(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32) * np.float32(self.pixel_scale)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=self._input_dtype)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        tensor = self._tensor(pixels)
        try:
            if self._batch_one:
                parts = [self._session.run([self._output_name], {self._input.name: tensor[i:i + 1]})[0]
                         for i in range(len(tensor))]
                result = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
            else:
                result = self._session.run([self._output_name], {self._input.name: tensor})[0]
        except Exception as error:
            raise ValueError(f"{Path(self.model_path).name} failed on a batch of shape {tensor.shape} "
                             f"(input_size={list(self.input_size)}, layout={self.layout}): {error}") from error
        result = np.asarray(result, dtype=np.float32)
        if result.ndim == 0 or result.shape[0] != len(tensor):
            raise ValueError(f"output {self._output_name!r} has shape {result.shape}; its first axis must be the "
                             f"batch ({len(tensor)})")
        if self.pool == "flatten":
            result = result.reshape(len(result), -1)
        elif self.pool in ("avg", "max") and result.ndim > 2:
            axes = tuple(range(2, result.ndim)) if self.layout == "NCHW" else tuple(range(1, result.ndim - 1))
            result = result.mean(axis=axes) if self.pool == "avg" else result.max(axis=axes)
        if result.ndim != 2:
            raise ValueError(f"output {self._output_name!r} has shape {result.shape}; set pool to 'avg', 'max' or "
                             "'flatten' to make it one vector per image")
        return result

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        images = list(images)
        if not images:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return unit_rows(self._run(_prepare_batch(images, self.input_shape)))


# ---------------------------------------------------------------------------------------------------------------
# Building, decoding, measuring
# ---------------------------------------------------------------------------------------------------------------

_ONNX_KEYS = {"input_size", "mean", "std", "layout", "channel_order", "output", "pool", "pixel_scale", "threads"}


def load_embedder(spec: dict) -> Embedder:
    """An embedder from a spec: ``{"kind": "patch-kmeans", "path": <file written by to_bytes>}`` or
    ``{"kind": "onnx", "path": <model.onnx>, "input_size": [h, w], "mean": [...], "std": [...], ...}`` (the
    other keys are :class:`OnnxEmbedder`'s keyword arguments). Unknown keys are an error."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    path = spec.pop("path", None)
    if kind == "patch-kmeans":
        if not path:
            raise ValueError("a patch-kmeans spec needs 'path' (a file written by PatchKMeansEmbedder.to_bytes); "
                             "fit one with PatchKMeansEmbedder.fit first")
        if spec:
            raise ValueError(f"unknown keys for a stored patch-kmeans embedder: {sorted(spec)}")
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"stored patch-kmeans embedder not found: {path}")
        return PatchKMeansEmbedder.from_bytes(file.read_bytes())
    if kind == "onnx":
        if not path:
            raise ValueError("an onnx spec needs 'path' (the .onnx file)")
        unknown = set(spec) - _ONNX_KEYS
        if unknown:
            raise ValueError(f"unknown keys for an onnx embedder: {sorted(unknown)} (known: {sorted(_ONNX_KEYS)})")
        missing = {"input_size", "mean", "std"} - set(spec)
        if missing:
            raise ValueError(f"an onnx spec must declare its preprocessing; missing: {sorted(missing)}")
        return OnnxEmbedder(path, **spec)
    raise ValueError(f"unknown embedder kind {kind!r}: use 'patch-kmeans' or 'onnx'")


def _decode(source: bytes | AnalysisImage, size: tuple[int, int] | None) -> Image.Image:
    """The pixels every embedder sees: :func:`~cv_dataops.images.analysis_cache.model_pixels` (THE decoder at the
    analysis size, or the analysis image ingestion kept), so fitting, embedding and ``search --like`` agree."""
    return model_pixels(source, size)


def _decoded_in_order(datas: Iterable[bytes], size: tuple[int, int] | None,
                      workers: int) -> Iterator[tuple[int, Image.Image | Exception]]:
    """``(byte count, image or the exception decoding raised)`` per input, in input order. With ``workers > 1``,
    decoding runs in that many threads (Pillow's decoders release the GIL), at most ``4 * workers`` images ahead,
    so memory stays bounded however long the stream."""

    def attempt(data: bytes) -> Image.Image | Exception:
        try:
            return _decode(data, size)
        except MemoryError:
            raise
        except Exception as error:
            return error

    if workers <= 1:
        for data in datas:
            yield _byte_count(data), attempt(data)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for data in datas:
            pending.append((_byte_count(data), pool.submit(attempt, data)))
            if len(pending) >= 4 * workers:
                count, future = pending.popleft()
                yield count, future.result()
        while pending:
            count, future = pending.popleft()
            yield count, future.result()


def _byte_count(data: bytes | AnalysisImage) -> int:
    return len(data) if isinstance(data, (bytes, bytearray, memoryview)) else len(data.pixels)


def embed_bytes(embedder: Embedder, datas: Iterable[bytes | AnalysisImage], batch_size: int = 64,
                on_error: str = "raise", decode_workers: int = 1, workers: int = 1) -> Iterator[np.ndarray]:
    """Decode (THE decoder: JPEG draft mode, EXIF orientation, first frame, RGB) and embed encoded images, or
    analysis images ingestion kept, yielding one (batch, dimension) float32 array per ``batch_size`` images, in
    order; memory stays bounded by ``workers + 1`` batches.

    ``on_error="raise"`` (default) raises ValueError naming the position of an undecodable image;
    ``on_error="nan"`` gives that image a row of NaN instead (the only rows that are not unit vectors).
    ``decode_workers`` threads decode ahead while the embedder works (decoding dominates for large photos).
    ``workers`` threads run the embedder's math on that many batches at once, while this thread decodes the next:
    numpy's matrix products and onnxruntime release the GIL, so with one BLAS thread per process (core.threads)
    two threads use two cores; the vectors are the same, bit for bit, as with one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if on_error not in ("raise", "nan"):
        raise ValueError(f"on_error must be 'raise' or 'nan', got {on_error!r}")
    size = getattr(embedder, "input_shape", None)
    images: list[Image.Image] = []
    failed: list[int] = []

    def embed(batch: list[Image.Image], unreadable: list[int]) -> np.ndarray:
        vectors = embedder.embed(batch)
        if unreadable:
            out = np.full((len(batch) + len(unreadable), embedder.dimension), np.nan, dtype=np.float32)
            good = np.setdiff1d(np.arange(len(out)), unreadable)
            out[good] = vectors
            vectors = out
        return vectors

    def batches() -> Iterator[tuple[list[Image.Image], list[int]]]:
        for position, (count, decoded) in enumerate(_decoded_in_order(datas, size, decode_workers)):
            if isinstance(decoded, Exception):
                if on_error == "raise":
                    cause = decoded.__cause__ or decoded  # the decoder's ValueError wraps Pillow's error
                    raise ValueError(f"cannot decode image #{position} ({count} bytes): "
                                     f"{type(cause).__name__}: {cause}") from decoded
                failed.append(len(images) + len(failed))
            else:
                images.append(decoded)
            if len(images) + len(failed) >= batch_size:
                yield images.copy(), failed.copy()
                images.clear()
                failed.clear()
        if images or failed:
            yield images.copy(), failed.copy()

    if workers <= 1:
        for batch, unreadable in batches():
            yield embed(batch, unreadable)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="embed") as pool:
        pending: deque = deque()
        try:
            for batch, unreadable in batches():
                pending.append(pool.submit(embed, batch, unreadable))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a consumer that stops early (or an error) does not wait for batches nobody will read
            for future in pending:
                future.cancel()


def linear_probe_accuracy(train_x: np.ndarray, train_y: Any, test_x: np.ndarray, test_y: Any, *,
                          C: float | None = None, Cs: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
                          folds: int = 3, seed: int = 0) -> float:
    """Test accuracy of a logistic regression on standardised embeddings, trained on the train split.

    The inverse regularisation ``C`` is chosen among ``Cs`` by stratified ``folds``-fold cross-validation on the
    train split only (never on the test split), unless given.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=C if C is not None else 1.0))
    if C is None:
        smallest = int(np.bincount(np.unique(train_y, return_inverse=True)[1]).min())
        if smallest >= 2:
            cv = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
            search = GridSearchCV(model, {"logisticregression__C": list(Cs)}, cv=cv, n_jobs=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = search.fit(train_x, train_y).best_estimator_
        else:
            model.set_params(logisticregression__C=float(np.median(Cs)))
            model.fit(train_x, train_y)
    else:
        model.fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())
