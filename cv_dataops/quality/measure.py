"""Per-image quality measurements and issue flags: dark, light, blurry, low information, odd aspect ratio, odd size,
grayscale; plus plain measurements (exposure, contrast, colourfulness, noise, sharpness, entropy, JPEG quality) and
the hashes that duplicate detection needs.

Design
------
* **One decode, at reduced size.** :func:`load_for_analysis` decodes each image once, at about ``ANALYSIS_SIDE``
  pixels on its longest side. JPEGs use Pillow's draft mode, which decodes at 1/2, 1/4 or 1/8 scale in the DCT
  domain, so a 12-megapixel photo costs a fraction of a full decode; everything else is decoded and resized once.
  Images smaller than the analysis size are analysed at their own size (never upscaled).
* **Every metric on that small image, vectorised with numpy.** Pixel-level scores are therefore defined *at the
  analysis size*: the blur score answers "does it look blurry at ~``ANALYSIS_SIDE`` px", whatever the file size.
* **Scores mean what CleanVision's mean**: one ``<issue>_score`` per issue type in 0..1, lower is worse, and an
  image has issue T when ``T_score < threshold[T]`` (see :class:`QualityThresholds` for the defaults and how each
  relates to CleanVision's). ``odd_size`` depends on the whole catalog, so it is computed by
  :func:`odd_size_scores` over all images rather than by :func:`measure`.
* **Plain Python** (numpy, Pillow, imagehash): no orchestration imports, so it runs in worker processes cheaply.
  :func:`measure_stream` fans the work out over a process pool with a bounded number of tasks in flight.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import multiprocessing
import os
import pickle
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cv_dataops.core.storage import (
    AWS_ENVIRONMENT_PREFIXES,
    forget_shared_s3_clients,
    read_uri,
)
from cv_dataops.core.storage import aws_environment as current_aws_environment
from cv_dataops.images.decode import DecodedImage, decode

ISSUE_TYPES: tuple[str, ...] = ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "odd_size",
                                "grayscale")

# Scores measure() returns (odd_size is catalog-relative, see odd_size_scores).
SCORE_COLUMNS: tuple[str, ...] = ("dark_score", "light_score", "blurry_score", "low_information_score",
                                  "odd_aspect_ratio_score", "grayscale_score")

MEASUREMENTS: tuple[str, ...] = ("brightness", "dark_clipped_fraction", "light_clipped_fraction", "rms_contrast",
                                 "colourfulness", "noise_sigma", "sharpness", "entropy", "jpeg_quality")

HASH_COLUMNS: tuple[str, ...] = ("phash", "dhash", "pixel_hash")

SIZE_COLUMNS: tuple[str, ...] = ("width", "height", "analysis_width", "analysis_height")

# Every key measure() returns, in a stable order (handy for building table schemas).
MEASURE_COLUMNS: tuple[str, ...] = SIZE_COLUMNS + SCORE_COLUMNS + MEASUREMENTS + HASH_COLUMNS

# Longest side of the image every pixel metric is computed on. 256 keeps JPEG decoding at 1/4 or 1/8 scale for
# ordinary photos (the main cost), is large enough to see blur of ~1% of the image width, and matches the input size
# of most vision models.
ANALYSIS_SIDE = 256

# Pixels whose luma is within this many levels of 0 (or 255) count as clipped.
CLIP_LEVELS = 4

# Composited under transparent pixels: what a viewer on a white page shows.


@dataclass(frozen=True)
class QualityThresholds:
    """An image has issue T when ``T_score < T`` (the threshold for T). Defaults, and how they relate to CleanVision
    (0.3.x) defaults:

    * ``dark`` 0.32: dark_score is the 99th percentile of perceived pixel brightness (HSP model), so "dark" means even
      the brightest 1% of pixels are below 32% brightness. Same score definition and threshold as CleanVision.
    * ``light`` 0.05: light_score is 1 - the 5th percentile of perceived brightness, so "light" means even the
      darkest 5% of pixels are above 95% brightness. Same as CleanVision.
    * ``blurry`` 0.3: blurry_score is a logistic sharpness score from two contrast-invariant, noise-compensated
      features measured at the analysis size: how much gradient energy lives in the finest octave, and how steep
      the strongest edges are relative to the image's contrast (see ``_blur_score``). 0.3 is its decision
      boundary (fitted on real photos sharp vs Gaussian-blurred by >= 1 analysis pixel). CleanVision's score,
      1 - exp(-std(edge filter) / 100) on a copy at most 64 px wide (threshold 0.29), depends on contrast and cannot
      see blur smaller than 1/64 of the image; ours is a different quantity with the same meaning and direction.
      An image with under ~10 levels of luma range scores 1 (it is low information, not blurry).
    * ``low_information`` 0.3: low_information_score is the luma entropy in bits / 8, measured after 2x2 averaging
      (which removes pixel noise, so "flat + sensor noise" is still flat). CleanVision uses 0.1 x the entropy of the
      768-bin RGB histogram (threshold 0.3: < 3 bits, which is ~1.4-3 bits of luma entropy); ours flags < 2.4 bits.
    * ``odd_aspect_ratio`` 0.35: min(w/h, h/w) of the original size, as CleanVision (flags shapes longer than
      ~2.9:1).
    * ``odd_size`` 0.5: see :func:`odd_size_scores`; 0.5 marks "outside the catalog's usual sizes" as CleanVision's
      IQR fences do, but measured in log scale and with a minimum tolerance.
    * ``grayscale`` 0.1: grayscale_score is min(1, 2 x the 99th percentile of per-pixel chroma (max - min of R, G,
      B) / the 1..99 percentile luma range (at least 16 levels)); 0 for single-channel files. "Grayscale" means 99%
      of pixels have channels within 5% of the image's contrast of each other (~13 levels for a full-range image).
      CleanVision flags only mode "L" files (its score is 0 or 1); this also catches RGB files with (nearly) equal
      channels, and, being relative to contrast, does not mistake a dark or washed-out colour photo for a gray one.
    """

    dark: float = 0.32
    light: float = 0.05
    blurry: float = 0.3
    low_information: float = 0.3
    odd_aspect_ratio: float = 0.35
    odd_size: float = 0.5
    grayscale: float = 0.1
    unusable_issues: tuple[str, ...] = ("dark", "light", "blurry", "low_information")

    def __post_init__(self) -> None:
        object.__setattr__(self, "unusable_issues", tuple(self.unusable_issues))
        unknown = [name for name in self.unusable_issues if name not in ISSUE_TYPES]
        if unknown:
            raise ValueError(f"unusable_issues has unknown issue types {unknown}; known: {list(ISSUE_TYPES)}")
        for name in ISSUE_TYPES:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"threshold {name} must be a finite number, got {value!r}")

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["unusable_issues"] = list(self.unusable_issues)
        return values


# ---------------------------------------------------------------------------------------------------------------
# JPEG quality from the quantization tables
# ---------------------------------------------------------------------------------------------------------------

# The example tables of the JPEG standard (ITU-T T.81, Annex K), natural (row-major) order. libjpeg/IJG, and so
# Pillow, OpenCV and most software, scale these by the "quality" setting.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
_STD_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, dtype=np.float64)


def _scaled_tables(base: np.ndarray) -> np.ndarray:
    """(100, 64): the table libjpeg writes for quality 1..100 (baseline, values clamped to 1..255)."""
    quality = np.arange(1, 101, dtype=np.float64)
    scale = np.where(quality < 50, np.floor(5000.0 / quality), 200.0 - 2.0 * quality)
    return np.clip(np.floor((base[None, :] * scale[:, None] + 50.0) / 100.0), 1, 255)


_LOG_LUMA_BY_QUALITY = np.log(_scaled_tables(_STD_LUMA))
_LOG_CHROMA_BY_QUALITY = np.log(_scaled_tables(_STD_CHROMA))


@functools.lru_cache(maxsize=256)
def _quality_from_tables(luma: tuple[int, ...], chroma: tuple[int, ...] | None) -> int:
    error = np.abs(_LOG_LUMA_BY_QUALITY - np.log(np.maximum(np.asarray(luma, dtype=np.float64), 1))).sum(axis=1)
    if chroma is not None:
        error += np.abs(_LOG_CHROMA_BY_QUALITY - np.log(np.maximum(np.asarray(chroma, dtype=np.float64), 1))).sum(
            axis=1)
    # Ties (e.g. every quality >= 98 clamps most entries to 1) resolve to the highest quality.
    return 100 - int(np.argmin(error[::-1]))


def estimate_jpeg_quality(quantization: dict | None) -> int | None:
    """The libjpeg quality (1..100) whose scaled standard tables are closest to the file's (luma table, plus the
    first chroma table when present), compared in log space; None without tables. Exact for files written by
    libjpeg-based encoders (Pillow, OpenCV, most cameras' "quality" settings); for encoders with their own tables it
    is the nearest equivalent quality."""
    if not quantization:
        return None
    tables = [tuple(int(v) for v in quantization[key]) for key in sorted(quantization)]
    tables = [t for t in tables if len(t) == 64]
    if not tables:
        return None
    return _quality_from_tables(tables[0], tables[1] if len(tables) > 1 else None)


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------

# Perceived brightness (HSP colour model, Finley 2006): sqrt(0.241 R^2 + 0.691 G^2 + 0.068 B^2), per pixel, 0..1.
# Looked up per channel, squared, so a pixel's brightness^2 is the sum of three table entries.
_LEVELS = np.arange(256, dtype=np.float32) / 255.0
_HSP_R2 = (0.241 * _LEVELS ** 2).astype(np.float32)
_HSP_G2 = (0.691 * _LEVELS ** 2).astype(np.float32)
_HSP_B2 = (0.068 * _LEVELS ** 2).astype(np.float32)

# grayscale_score = min(1, 2 * chroma_p99 / max(luma 1..99 percentile range, 16)): colour relative to contrast, so a
# dark or washed-out colour photo (whose chroma shrinks with its contrast) is not mistaken for a gray one.
_GRAYSCALE_SCORE_GAIN = 2.0
_GRAYSCALE_MIN_RANGE = 16.0
_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)


def _quantile_from_hist(hist: np.ndarray, q: float) -> float:
    """Smallest bin index whose cumulative count reaches fraction q of the total."""
    cumulative = np.cumsum(hist)
    return float(np.searchsorted(cumulative, q * cumulative[-1], side="left"))


def _entropy_bits(hist: np.ndarray) -> float:
    total = hist.sum()
    if total <= 0:
        return 0.0
    p = hist[hist > 0] / total
    return float(-(p * np.log2(p)).sum())


def _box2(g: np.ndarray) -> np.ndarray:
    """2x2 mean pooling (drops an odd last row/column)."""
    h, w = g.shape[0] // 2 * 2, g.shape[1] // 2 * 2
    g = g[:h, :w]
    return 0.25 * (g[0::2, 0::2] + g[1::2, 0::2] + g[0::2, 1::2] + g[1::2, 1::2])


def _noise_sigma(g: np.ndarray) -> float:
    """Immerkaer (1996) fast noise estimate: the image convolved with the separable mask [1,-2,1] x [1,-2,1], which
    cancels smooth structure; for white Gaussian noise of std s the response has std 6 s, so
    s = sqrt(pi/2) * mean|response| / 6. Returned in 0..255 units."""
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    dx = g[:, :-2] - 2.0 * g[:, 1:-1] + g[:, 2:]
    dxy = dx[:-2] - 2.0 * dx[1:-1] + dx[2:]
    return float(_SQRT_HALF_PI * np.abs(dxy).mean() / 6.0)


def _laplacian(g: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of the interior pixels."""
    return g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]


def _gradient_energy(g: np.ndarray) -> float:
    """Mean squared horizontal plus vertical neighbour difference."""
    dx = g[:, 1:] - g[:, :-1]
    dy = g[1:, :] - g[:-1, :]
    return float(np.einsum("ij,ij->", dx, dx) / dx.size + np.einsum("ij,ij->", dy, dy) / dy.size)


# blurry_score = sigmoid(_BLUR_A * ln(octave_ratio) + _BLUR_B * ln(edge_steepness) + _BLUR_C). Fitted by logistic
# regression on ~1000 real photos (scikit-image samples, colour and gray, crops and mosaics, 30% with added noise,
# JPEG q70-95) and CIFAR-10 images, sharp versus Gaussian-blurred by 0.4-2% of the image side (>= 1 px), plus flat
# images with one sharp object; AUC 0.999. The intercept is shifted by ln(0.3/0.7) so the decision boundary sits at
# score 0.3, next to CleanVision's default threshold of 0.29.
_BLUR_A = 10.9
_BLUR_B = 6.7
_BLUR_C = 17.1 - 0.847
_MIN_STRUCTURE_LEVELS = 10.0   # below this 2..98 percentile luma range there is nothing to judge blur on


def _blur_score(g: np.ndarray, pooled: np.ndarray, noise: float, lo: float, hi: float) -> tuple[float, float, float]:
    """(blurry_score, octave_ratio, edge_steepness) of a float32 luma image (0..255).

    * octave_ratio: gradient energy at the analysis size over gradient energy after 2x2 averaging, both with the
      estimated white-noise contribution removed. An image with no detail at the finest scale (blurred) tends to
      0.25 (halving the resolution doubles every smooth gradient); sharp photos are ~0.4-1.
    * edge_steepness: 99th percentile of the gradient magnitude (or, if larger, the 90th percentile among pixels
      with a gradient above the noise, for images whose edges are sparse) over the 2..98 percentile luma range:
      how abrupt the strongest edges are relative to the image's contrast (blurred edges are ramps, not steps).
    Both are contrast-invariant, unlike the Laplacian variance (``sharpness``); an image with less than
    _MIN_STRUCTURE_LEVELS of luma range scores 1: it is low information, not blurry.
    """
    if g.shape[0] < 8 or g.shape[1] < 8 or hi - lo < _MIN_STRUCTURE_LEVELS:
        return 1.0, 1.0, 1.0
    n2 = noise * noise
    dx = g[:, 1:] - g[:, :-1]
    dy = g[1:, :] - g[:-1, :]
    dx2, dy2 = dx * dx, dy * dy
    fine = float(dx2.mean()) + float(dy2.mean()) - 4.0 * n2
    coarse = _gradient_energy(pooled) - n2
    if coarse <= 1e-6:
        return 1.0, 1.0, 1.0
    octave = max(fine, 1e-6) / coarse
    magnitude2 = (dx2[:-1, :] + dy2[:, :-1]).ravel()
    k = int(0.99 * (magnitude2.size - 1))
    steep2 = float(np.partition(magnitude2, k)[k])
    # Where edges cover under 1% of the image (a flat scene with one object), take the 90th percentile of the
    # pixels that have any gradient above the noise instead.
    active = magnitude2[magnitude2 > (3.0 * noise + 2.0) ** 2]
    if active.size >= 16:
        k = int(0.9 * (active.size - 1))
        steep2 = max(steep2, float(np.partition(active, k)[k]))
    steepness = math.sqrt(steep2) / (hi - lo + 1.0)
    z = _BLUR_A * math.log(octave) + _BLUR_B * math.log(max(steepness, 1e-6)) + _BLUR_C
    score = 1.0 / (1.0 + math.exp(-min(max(z, -50.0), 50.0)))
    return score, octave, steepness


def measure(data: bytes, analysis_side: int = ANALYSIS_SIDE) -> dict:
    """Decode ``data`` once at the analysis size (:func:`load_for_analysis`) and compute every per-image metric.

    Returns a flat dict (keys in ``MEASURE_COLUMNS``):

    * ``width``, ``height``: original size after EXIF orientation; ``analysis_width``, ``analysis_height``.
    * scores in 0..1, lower is worse (meaning and defaults: :class:`QualityThresholds`): ``dark_score``,
      ``light_score``, ``blurry_score``, ``low_information_score``, ``odd_aspect_ratio_score``,
      ``grayscale_score``. ``odd_size`` is catalog-relative: :func:`odd_size_scores`.
    * measurements, all at the analysis size: ``brightness`` (mean Rec.601 luma, 0..1), ``dark_clipped_fraction`` /
      ``light_clipped_fraction`` (luma within CLIP_LEVELS of 0 / 255), ``rms_contrast`` (luma std, 0..1),
      ``colourfulness`` (Hasler & Suesstrunk 2003, 0..~200), ``noise_sigma`` (Immerkaer 1996 estimate of the luma
      noise std in 0..255 units; downscaling averages noise away, so it is lower than at full size),
      ``sharpness`` (variance of the 4-neighbour Laplacian of luma), ``entropy`` (luma histogram, bits),
      ``jpeg_quality`` (int 1..100 from the quantization tables, None for non-JPEG).
    * hashes of the analysis image: ``phash`` and ``dhash`` (imagehash, 8x8, as unsigned 64-bit ints; computed on a
      box-reduced copy of at least 64 px, which imagehash resamples to 32 and 9 px anyway) and ``pixel_hash``
      (sha256 of mode, size and pixels: identical decoded pixels give identical hashes whatever the file format).
      For images larger than the analysis size it hashes the *reduced* pixels, so two files differing by a
      change too small to survive the reduction share it: it finds exact duplicates, not proof of difference.

    Raises ValueError when the bytes cannot be decoded; never raises for a decodable image.
    """
    decoded = decode(data, analysis_side)
    return _measure_decoded(decoded)


_imagehash: Any = None


def _hashes() -> Any:
    """imagehash, imported on first use: it pulls in scipy, which only measuring processes need."""
    global _imagehash
    if _imagehash is None:
        import imagehash

        _imagehash = imagehash
    return _imagehash


# Colour statistics are global averages and percentiles: above this many pixels they are taken on every other row
# and column of the analysis image (4x fewer pixels, the same values to within sampling noise).
_COLOUR_SAMPLE_PIXELS = 20_000
# Perceptual hashes resample to <= 32 px anyway; a box reduction to >= this side first makes them cheaper.
_HASH_SOURCE_SIDE = 64


def _hash_to_int(image_hash: Any) -> int:
    """An imagehash.ImageHash as an unsigned int, equal to ``int(str(image_hash), 16)`` (bits in row-major order,
    first bit most significant), without the per-bit Python loop of str()."""
    bits = np.asarray(image_hash.hash, dtype=bool).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big") >> ((-bits.size) % 8)


def _measure_decoded(decoded: DecodedImage, extra: bool = False) -> dict:
    imagehash = _hashes()
    rgb_img, gray_img = decoded.rgb, decoded.gray
    aw, ah = rgb_img.size
    rgb = np.asarray(rgb_img)
    gray8 = np.asarray(gray_img)
    n = gray8.size

    # --- colour statistics (HSP brightness percentiles, colourfulness, chroma), on a subsample of large images
    sample = rgb[::2, ::2] if n > _COLOUR_SAMPLE_PIXELS else rgb
    r8, g8, b8 = sample[..., 0], sample[..., 1], sample[..., 2]
    rf, gf, bf = r8.astype(np.float32), g8.astype(np.float32), b8.astype(np.float32)
    bright2 = (0.241 * rf * rf + 0.691 * gf * gf + 0.068 * bf * bf).ravel()  # HSP brightness^2, 0..255^2
    m = bright2.size
    k_lo, k_hi = int(round(0.05 * (m - 1))), int(round(0.99 * (m - 1)))
    part = np.partition(bright2, (k_lo, k_hi))
    p05 = math.sqrt(float(part[k_lo])) / 255.0
    p99 = math.sqrt(float(part[k_hi])) / 255.0
    rg = rf - gf
    yb = 0.5 * (rf + gf) - bf
    rg_mean, yb_mean = float(rg.mean()), float(yb.mean())
    rg_var = float(np.einsum("ij,ij->", rg, rg)) / rg.size - rg_mean * rg_mean
    yb_var = float(np.einsum("ij,ij->", yb, yb)) / yb.size - yb_mean * yb_mean
    colourfulness = math.sqrt(max(rg_var, 0.0) + max(yb_var, 0.0)) + 0.3 * math.hypot(rg_mean, yb_mean)

    # --- luma histogram: brightness, clipping, entropy, robust range
    hist = np.bincount(gray8.ravel(), minlength=256)
    cumulative = np.cumsum(hist)
    levels = np.arange(256)
    brightness = float(np.dot(hist, levels)) / n / 255.0
    dark_clipped = float(cumulative[CLIP_LEVELS]) / n
    light_clipped = float(n - cumulative[254 - CLIP_LEVELS]) / n
    entropy = _entropy_bits(hist)
    p01, p02, p98, p99l = (float(v) for v in np.searchsorted(cumulative, np.array([0.01, 0.02, 0.98, 0.99]) * n))
    mean_level = brightness * 255.0
    rms_contrast = math.sqrt(max(float(np.dot(hist, (levels - mean_level) ** 2)) / n, 0.0)) / 255.0

    if decoded.source_gray:
        chroma_p99 = 0.0
    else:
        chroma = np.maximum(np.maximum(r8, g8), b8) - np.minimum(np.minimum(r8, g8), b8)
        chroma_p99 = _quantile_from_hist(np.bincount(chroma.ravel(), minlength=256), 0.99)
    grayscale_score = min(1.0, _GRAYSCALE_SCORE_GAIN * chroma_p99 / max(p99l - p01, _GRAYSCALE_MIN_RANGE))

    # --- structure on the full analysis image: noise, sharpness, blur, information
    g = gray8.astype(np.float32)
    noise_sigma = _noise_sigma(g)
    if min(aw, ah) >= 3:
        lap = _laplacian(g)
        lap_mean = float(lap.mean())
        sharpness = float(np.einsum("ij,ij->", lap, lap)) / lap.size - lap_mean * lap_mean
    else:
        sharpness = 0.0
    pooled = _box2(g) if min(aw, ah) >= 2 else g
    blurry_score, octave, steepness = _blur_score(g, pooled, noise_sigma, p02, p98)
    # Low information: entropy after 2x2 averaging when the image is large enough (averages away pixel noise).
    if min(aw, ah) >= 32:
        li_entropy = _entropy_bits(np.bincount((pooled + 0.5).astype(np.uint8).ravel(), minlength=256))
    else:
        li_entropy = entropy

    # --- hashes
    reduce_by = max(1, min(aw, ah) // _HASH_SOURCE_SIDE)
    hash_source = gray_img.reduce(reduce_by) if reduce_by > 1 else gray_img
    phash = imagehash.phash(hash_source, hash_size=8)
    dhash = imagehash.dhash(hash_source, hash_size=8)
    digest = hashlib.sha256(f"{rgb_img.mode}:{aw}x{ah}:".encode())
    digest.update(np.ascontiguousarray(rgb))

    w, h = decoded.width, decoded.height
    result = {
        "width": w,
        "height": h,
        "analysis_width": aw,
        "analysis_height": ah,
        "dark_score": min(1.0, p99),
        "light_score": max(0.0, 1.0 - p05),
        "blurry_score": blurry_score,
        "low_information_score": min(1.0, li_entropy / 8.0),
        "odd_aspect_ratio_score": min(w / h, h / w) if w > 0 and h > 0 else 0.0,
        "grayscale_score": grayscale_score,
        "brightness": brightness,
        "dark_clipped_fraction": dark_clipped,
        "light_clipped_fraction": light_clipped,
        "rms_contrast": rms_contrast,
        "colourfulness": colourfulness,
        "noise_sigma": noise_sigma,
        "sharpness": sharpness,
        "entropy": entropy,
        "jpeg_quality": estimate_jpeg_quality(decoded.quantization),
        "phash": _hash_to_int(phash),
        "dhash": _hash_to_int(dhash),
        "pixel_hash": digest.hexdigest(),
    }
    if extra:
        result.update({"x_octave": octave, "x_steepness": steepness, "x_li_entropy": li_entropy,
                       "x_chroma_p99": chroma_p99})
    return result


# ---------------------------------------------------------------------------------------------------------------
# Catalog-relative size, and flags
# ---------------------------------------------------------------------------------------------------------------

# odd_size: an image's size is log2(sqrt(width * height)) (the geometric-mean side, in octaves). Its distance
# outside the reference set's interquartile box [q1, q3] is compared with a tolerance of max(ODD_SIZE_IQR_FACTOR *
# IQR, ODD_SIZE_MIN_OCTAVES): score = 0.5 ** ((distance / tolerance) ** 2), so score 0.5 is exactly one tolerance out.
ODD_SIZE_IQR_FACTOR = 1.5
ODD_SIZE_MIN_OCTAVES = 1.5  # never call an image odd for being less than 2 ** 1.5 ~ 2.8x off in side length


def odd_size_scores(widths: np.ndarray, heights: np.ndarray, reference_areas: np.ndarray | None = None) -> np.ndarray:
    """0..1, lower is worse: how far each image's area is from the usual areas of the reference set (by default the
    inputs themselves; pass the whole catalog's ``width * height`` to score a batch against it).

    Works in log scale (a 4x smaller and a 4x larger side are equally odd) with Tukey-style fences: inside the
    reference's interquartile range of log2(sqrt(area)) the score is 1; beyond it the score halves at
    ``max(1.5 * IQR, 1.5 octaves)`` out and falls towards 0 after that. Unlike CleanVision's fences on the linear
    side length, a catalog where (nearly) every image has the same size does not flag every slightly different
    size, and very small images are caught even when large ones make the distribution skewed. O(n) (percentiles
    by partition). Images with a zero or missing dimension score 0.
    """
    widths = np.asarray(widths, dtype=np.float64)
    heights = np.asarray(heights, dtype=np.float64)
    if widths.shape != heights.shape:
        raise ValueError(f"widths and heights differ in shape: {widths.shape} vs {heights.shape}")
    areas = widths * heights
    reference = areas if reference_areas is None else np.asarray(reference_areas, dtype=np.float64).ravel()
    reference = reference[np.isfinite(reference) & (reference > 0)]
    scores = np.zeros(areas.shape, dtype=np.float64)
    valid = np.isfinite(areas) & (areas > 0)
    if reference.size == 0:
        scores[valid] = 1.0
        return scores
    ref_octaves = 0.5 * np.log2(reference)
    q1, q3 = np.percentile(ref_octaves, [25, 75])
    tolerance = max(ODD_SIZE_IQR_FACTOR * (q3 - q1), ODD_SIZE_MIN_OCTAVES)
    octaves = 0.5 * np.log2(areas[valid])
    distance = np.maximum(np.maximum(q1 - octaves, octaves - q3), 0.0)
    scores[valid] = np.power(0.5, (distance / tolerance) ** 2)
    return scores


def _column(rows: Any, name: str) -> np.ndarray | None:
    try:
        values = rows[name]
    except (KeyError, IndexError):
        return None
    return np.asarray(values, dtype=np.float64)


def flag_issues(rows: Any, thresholds: QualityThresholds | None = None) -> dict[str, np.ndarray]:
    """Boolean ``is_<T>`` arrays for every issue type T (``T_score < thresholds.T``) and ``is_unusable`` (any of
    ``thresholds.unusable_issues``).

    ``rows`` is a mapping of column name to array (or a pandas DataFrame) holding the ``<T>_score`` columns that
    :func:`measure` returns. ``odd_size_score`` is used when present; otherwise it is computed from ``width`` and
    ``height`` with the rows themselves as the reference set. A missing score (NaN/None, e.g. an image that failed
    to decode) is never flagged.
    """
    thresholds = thresholds or QualityThresholds()
    length = None
    for name in ("width", *SCORE_COLUMNS, "odd_size_score"):
        col = _column(rows, name)
        if col is not None:
            length = len(col)
            break
    if length is None:
        raise ValueError("rows has none of the score columns measure() returns")
    flags: dict[str, np.ndarray] = {}
    for issue in ISSUE_TYPES:
        score = _column(rows, f"{issue}_score")
        if score is None and issue == "odd_size":
            widths, heights = _column(rows, "width"), _column(rows, "height")
            if widths is not None and heights is not None:
                score = odd_size_scores(widths, heights)
                score[~(np.isfinite(widths) & np.isfinite(heights))] = np.nan
        if score is None:
            raise ValueError(f"rows lacks {issue}_score (and what it is computed from)")
        with np.errstate(invalid="ignore"):
            flags[f"is_{issue}"] = np.asarray(score < getattr(thresholds, issue), dtype=bool) & np.isfinite(score)
    unusable = np.zeros(length, dtype=bool)
    for issue in thresholds.unusable_issues:
        unusable |= flags[f"is_{issue}"]
    flags["is_unusable"] = unusable
    return flags


# ---------------------------------------------------------------------------------------------------------------
# Streaming over many images with a process pool
# ---------------------------------------------------------------------------------------------------------------

# The AWS environment is also handed to worker processes, so a forkserver started earlier (with an older
# environment) still talks to the caller's endpoint.


def measure_uri(uri: str, analysis_side: int = ANALYSIS_SIDE) -> dict:
    """Read ``uri`` (see :func:`read_uri`) and :func:`measure` it."""
    return measure(read_uri(uri), analysis_side)


def _worker_init(aws_environment: dict[str, str] | None = None) -> None:
    if aws_environment is not None:
        for name in [k for k in os.environ if k.startswith(AWS_ENVIRONMENT_PREFIXES)]:
            if name not in aws_environment:
                del os.environ[name]
        os.environ.update(aws_environment)
    forget_shared_s3_clients()
    _hashes()  # pay the imagehash/scipy import once, at start-up (a no-op when inherited through fork)


def _pool_context(start_method: str | None = None) -> multiprocessing.context.BaseContext:
    """The multiprocessing context for the worker pool.

    Default: "fork" when this process runs a single thread (measured: workers start in ~20 ms and inherit the
    imported modules), else "forkserver" (fork is unsafe once other threads may hold locks; forkserver is
    thread-safe and, with this module preloaded in the server, starts workers in ~0.5 s once, against ~0.9 s for
    "spawn"), else "spawn". With forkserver and spawn, a script's main module is re-imported in every worker, so
    scripts must guard their entry point with ``if __name__ == "__main__":``.
    """
    methods = multiprocessing.get_all_start_methods()
    if start_method is None:
        if "fork" in methods and threading.active_count() == 1:
            start_method = "fork"
        elif "forkserver" in methods:
            start_method = "forkserver"
        else:
            start_method = "spawn"
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        try:
            context.set_forkserver_preload([__name__, "imagehash"])
        except Exception:  # noqa: BLE001 - preloading is only an optimisation
            pass
    return context


def _portable_error(error: BaseException) -> Exception:
    """``error`` if it survives pickling (to cross the process boundary), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error if isinstance(error, Exception) else RuntimeError(f"{type(error).__name__}: {error}")


def _measure_batch(uris: list[str], analysis_side: int) -> list[dict | Exception]:
    """Worker task: measure several URIs, one result or exception each (a bad image never fails the batch)."""
    results: list[dict | Exception] = []
    for uri in uris:
        try:
            results.append(measure_uri(uri, analysis_side))
        except Exception as error:  # noqa: BLE001 - reported per item, by design
            results.append(_portable_error(error))
    return results


def measure_stream(items: Iterable[tuple[str, str]], workers: int = 2, max_in_flight: int | None = None,
                   analysis_side: int = ANALYSIS_SIDE, chunk_size: int = 8, start_method: str | None = None
                   ) -> Iterator[tuple[str, dict | Exception]]:
    """Measure many images: ``items`` are ``(image_id, uri)`` with ``uri`` an absolute local path or
    ``s3://bucket/key``. Yields ``(image_id, measure() dict or the Exception it raised)`` as results complete
    (not in input order); one bad image never stops the stream.

    Workers (a process pool, or this process when ``workers <= 1``) read the bytes themselves; an S3 client is made
    once per worker process from the environment. Items go to workers in tasks of up to ``chunk_size`` (small
    images take well under a millisecond each, so per-task overhead matters), at most ``max_in_flight`` tasks
    (default ``4 * workers``) are outstanding at once, and ``items`` is consumed lazily: memory does not grow with
    the number of items. If a worker process dies (e.g. killed for memory), every item that was in flight is
    retried alone in a fresh pool, one at a time; an item that kills a worker again yields a BrokenProcessPool
    error, and the stream goes on.
    ``start_method`` overrides the multiprocessing start method (see :func:`_pool_context` for the default).
    """
    if workers <= 1:
        for image_id, uri in items:
            try:
                yield image_id, measure_uri(uri, analysis_side)
            except Exception as error:  # noqa: BLE001 - reported per item, by design
                yield image_id, error
        return

    window = max(1, max_in_flight if max_in_flight is not None else 4 * workers)
    chunk_size = max(1, int(chunk_size))
    iterator = iter(items)
    context = _pool_context(start_method)
    aws_environment = current_aws_environment()
    if context.get_start_method() == "fork":
        _hashes()  # import imagehash/scipy once here, so forked workers inherit it instead of each importing it
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                   initargs=(aws_environment,))
    in_flight: dict[Future, tuple[list[tuple[str, str]], int]] = {}
    retry: list[tuple[str, str]] = []   # items of a dead pool's tasks, resubmitted alone, one at a time
    exhausted = False
    try:
        while True:
            while len(in_flight) < window:
                if retry:
                    if in_flight:
                        break  # suspects of a crash run alone, so a second crash pins down the culprit
                    batch, attempt = [retry.pop()], 1
                elif not exhausted:
                    batch = list(itertools.islice(iterator, chunk_size))
                    if len(batch) < chunk_size:
                        exhausted = True
                    if not batch:
                        break
                    attempt = 0
                else:
                    break
                future = executor.submit(_measure_batch, [uri for _, uri in batch], analysis_side)
                in_flight[future] = (batch, attempt)
            if not in_flight:
                break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                batch, attempt = in_flight.pop(future)
                error = future.exception()
                if error is None:
                    for (image_id, _), result in zip(batch, future.result()):
                        yield image_id, result
                elif isinstance(error, BrokenProcessPool):
                    broken = True
                    if attempt == 0:
                        retry.extend(batch)
                    else:
                        for image_id, uri in batch:
                            yield image_id, BrokenProcessPool(f"a worker process died while measuring {uri}")
                else:  # the task itself failed (e.g. a result that could not be sent back)
                    for image_id, _ in batch:
                        yield image_id, error
            if broken:
                # Every other task of the dead pool fails too: retry their items alone in a fresh pool.
                for batch, attempt in in_flight.values():
                    if attempt == 0:
                        retry.extend(batch)
                    else:
                        for image_id, uri in batch:
                            yield image_id, BrokenProcessPool(f"a worker process died while measuring {uri}")
                in_flight.clear()
                executor.shutdown(wait=True, cancel_futures=True)
                executor = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                               initializer=_worker_init, initargs=(aws_environment,))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
