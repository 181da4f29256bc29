"""ImageNet-C-style corruptions at severities 1 to 5, written with numpy, scipy and Pillow, for the drift benchmark.

The eight kinds and their parameters follow the shape of Hendrycks & Dietterich (2019), "Benchmarking Neural
Network Robustness to Common Corruptions and Perturbations", at the scale of its CIFAR-10-C variant (the images
here are 32x32): each function takes an RGB ``PIL.Image`` and a severity 1..5 and returns an RGB image (or, for
``jpeg``, the JPEG bytes), deterministic for a given ``rng``. They are re-implemented from the paper's
description, not copied, and simplified where the original needs ImageMagick (motion blur: a Gaussian-weighted
line kernel at a random angle instead of Wand's).

``FAMILY`` is the ground truth the attribution score uses: the image property family each corruption changes by
construction (what it does to the pixels), fixed before any run and independent of the drift code's rules.
Elastic warping moves pixels without changing any measured property by construction, so it has no family here:
its detection is scored, its attribution is not.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def gaussian_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    x = _array(image)
    return _image(x + rng.normal(0.0, sigma, x.shape))


def brightness(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Raise the HSV value channel (as ImageNet-C does), clip, convert back."""
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float64) / 255.0
    hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0.0, 1.0)
    return Image.fromarray((hsv * 255.0 + 0.5).astype(np.uint8), "HSV").convert("RGB")


def contrast(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    x = _array(image)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _image((x - mean) * factor + mean)


def _disk(radius: float, alias_sigma: float) -> np.ndarray:
    size = int(np.ceil(radius)) if radius > 1 else 1
    grid = np.arange(-size, size + 1)
    xx, yy = np.meshgrid(grid, grid)
    kernel = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    kernel /= kernel.sum()
    return ndimage.gaussian_filter(kernel, alias_sigma) if alias_sigma > 0 else kernel


def defocus_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Convolution with an anti-aliased disk of the given radius (pixels)."""
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[severity - 1]
    kernel = _disk(radius, alias)
    kernel /= kernel.sum()
    x = _array(image)
    return _image(np.stack([ndimage.convolve(x[..., c], kernel, mode="reflect") for c in range(3)], axis=-1))


def motion_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """A line kernel of ``length`` pixels with Gaussian weights of ``sigma`` along it, at a random angle."""
    length, sigma = ((5, 1.0), (5, 1.5), (5, 2.0), (7, 2.5), (7, 3.0))[severity - 1]
    angle = rng.uniform(-np.pi / 4, np.pi / 4)
    half = length // 2
    kernel = np.zeros((length, length))
    for t in np.linspace(0, half, 4 * half + 1):   # one side of the line: the blur trails the motion, as Wand's does
        row, col = half - t * np.sin(angle), half + t * np.cos(angle)
        kernel[int(round(row)), int(round(col))] += np.exp(-t ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    x = _array(image)
    return _image(np.stack([ndimage.convolve(x[..., c], kernel, mode="nearest") for c in range(3)], axis=-1))


def zoom_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """The mean of the image and copies zoomed about its centre by factors 1 + 0.01 k up to the severity's."""
    top = (1.06, 1.11, 1.16, 1.21, 1.26)[severity - 1]
    x = _array(image)
    h, w = x.shape[:2]
    total = x.copy()
    factors = np.arange(1.01, top, 0.01)
    for factor in factors:
        zoomed = ndimage.zoom(x, (factor, factor, 1), order=1)
        top_row, left = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
        total += zoomed[top_row:top_row + h, left:left + w]
    return _image(total / (len(factors) + 1))


def elastic(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """A random displacement field smoothed by a Gaussian of ``sigma`` pixels and scaled to ``alpha`` pixels,
    sampled with bilinear interpolation (Simard et al. 2003, as ImageNet-C's elastic transform)."""
    alpha, sigma = ((1.5, 1.2), (2.0, 1.2), (2.5, 1.1), (3.0, 1.0), (3.5, 1.0))[severity - 1]
    x = _array(image)
    h, w = x.shape[:2]
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma)
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma)
    scale = alpha / max(np.abs(dx).max(), np.abs(dy).max(), 1e-9)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coordinates = [rows + dy * scale, cols + dx * scale]
    return _image(np.stack([ndimage.map_coordinates(x[..., c], coordinates, order=1, mode="reflect")
                            for c in range(3)], axis=-1))


def jpeg(image: Image.Image, severity: int, rng: np.random.Generator) -> bytes:
    quality = (80, 65, 58, 50, 40)[severity - 1]
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise, "brightness": brightness, "contrast": contrast,
    "defocus_blur": defocus_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "jpeg": jpeg, "elastic": elastic,
}

# What each corruption changes by construction, named as the drift explanation's property families.
FAMILY: dict[str, str | None] = {
    "gaussian_noise": "noise", "brightness": "exposure", "contrast": "contrast", "defocus_blur": "sharpness",
    "motion_blur": "sharpness", "zoom_blur": "sharpness", "jpeg": "compression", "elastic": None,
}


def corrupt(image: Image.Image, name: str, severity: int, rng: np.random.Generator, quality: int = 95) -> bytes:
    """The corrupted image as the JPEG file a camera would land: written at the original file's ``quality`` so
    that only the ``jpeg`` corruption changes the compression."""
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    result = CORRUPTIONS[name](image, severity, rng)
    if isinstance(result, bytes):
        return result
    buffer = io.BytesIO()
    result.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
