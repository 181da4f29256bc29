"""Per-image quality measurements and issue flags. The issue types themselves (dark, light, blurry, low
information, odd aspect ratio, odd size, grayscale, and any added later) live in :mod:`cv_dataops.quality.issues`,
one module each; this module measures what they score, and turns scores into flags.

Design
------
* **One decode, at reduced size.** :func:`measure` decodes each image once (``cv_dataops.images.decode``), at about
  ``ANALYSIS_SIDE`` pixels on its longest side. JPEGs use Pillow's draft mode, which decodes at 1/2, 1/4 or 1/8 scale
  in the DCT domain, so a 12-megapixel photo costs a fraction of a full decode; everything else is decoded and
  resized once. Images smaller than the analysis size are analysed at their own size (never upscaled).
* **Shared statistics, then one score per issue type.** Histograms, percentiles, gradients and the blur features are
  computed once, vectorised with numpy, into :class:`ImageStatistics`; each registered issue type turns them into
  its score. Pixel-level scores are measured at the analysis size, and blur is judged relative to the image: its
  edges' width against 1% of the longer side (never under 1.5 of the file's own pixels), so a soft 4000 px photo
  and a sharp 32 px thumbnail both pass.
* **Flagged is not unusable.** ``is_<T>`` flags an image worth a look; ``is_unusable`` (with ``unusable_reason``)
  uses each issue type's far stricter unusable threshold (:class:`QualityThresholds`).
* **Scores mean what CleanVision's mean**: one ``<issue>_score`` per issue type in 0..1, lower is worse, and an
  image has issue T when ``T_score < threshold[T]`` (:class:`QualityThresholds`). Catalog-relative issue types
  (``odd_size``) are scored over a batch by :func:`catalog_scores` rather than by :func:`measure`.
* **Plain Python** (numpy, scipy, Pillow, imagehash): no orchestration imports, so it runs in worker processes cheaply.
  :func:`measure_stream` fans the work out over a process pool with a bounded number of tasks in flight.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import multiprocessing
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from cv_dataops.core.storage import read_uri
from cv_dataops.core.versioning import versioned
from cv_dataops.images.analysis_cache import AnalysisImage
from cv_dataops.images.decode import DecodedImage, decode
from cv_dataops.quality.issues import column, issue_names, issue_types

MEASUREMENTS: tuple[str, ...] = ("brightness", "dark_clipped_fraction", "light_clipped_fraction", "rms_contrast",
                                 "colourfulness", "noise_sigma", "sharpness", "entropy", "jpeg_quality")

HASH_COLUMNS: tuple[str, ...] = ("phash", "dhash", "pixel_hash")

SIZE_COLUMNS: tuple[str, ...] = ("width", "height", "analysis_width", "analysis_height")


def __getattr__(name: str) -> tuple[str, ...]:
    """``ISSUE_TYPES`` (every issue type's name), ``SCORE_COLUMNS`` (the scores :func:`measure` returns: the per-image
    issue types') and ``MEASURE_COLUMNS`` (every key :func:`measure` returns, in a stable order), read from the
    issue registry each time, so they follow it."""
    if name == "ISSUE_TYPES":
        return issue_names()
    if name == "SCORE_COLUMNS":
        return tuple(f"{issue.name}_score" for issue in issue_types() if issue.score is not None)
    if name == "MEASURE_COLUMNS":
        return SIZE_COLUMNS + __getattr__("SCORE_COLUMNS") + MEASUREMENTS + HASH_COLUMNS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Longest side of the image every pixel metric is computed on. 256 keeps JPEG decoding at 1/4 or 1/8 scale for
# ordinary photos (the main cost), is large enough to see blur of ~1% of the image width, and matches the input size
# of most vision models.
ANALYSIS_SIDE = 256

# Pixels whose luma is within this many levels of 0 (or 255) count as clipped.
CLIP_LEVELS = 4

# Bump when the metrics change: the quality rows of every batch then carry an out-of-date quality_version.
QUALITY_VERSION = "2"

# ``<issue>_unusable`` names an issue type's unusable threshold in QualityThresholds and in configuration.
UNUSABLE_SUFFIX = "_unusable"


@dataclass(frozen=True, init=False)
class QualityThresholds:
    """An image has issue T (is flagged) when ``T_score < T`` (the threshold for T). It is unusable when, for an
    issue type T in ``unusable_issues``, ``T_score < T_unusable`` (a stricter threshold: near-black, blown out,
    blank, blurred beyond recognition). Unset values take each issue type's defaults (its ``threshold``,
    ``unusable_threshold`` and ``unusable``; each module of :mod:`cv_dataops.quality.issues` says how its
    default relates to CleanVision's).

    ``QualityThresholds(dark=0.4, dark_unusable=0.05)`` or ``QualityThresholds({"dark": 0.4})`` override
    thresholds, and ``thresholds.dark`` reads one; ``dataclasses.replace(thresholds, dark=0.4)`` works too. An
    unusable threshold is never above its flag threshold (it is lowered to it). An unknown issue type or a
    non-finite threshold raises ValueError naming the known ones.
    """

    by_issue: Mapping[str, float]
    unusable_issues: tuple[str, ...]
    unusable_by_issue: Mapping[str, float]

    def __init__(self, by_issue: Mapping[str, float] | None = None, unusable_issues: Iterable[str] | None = None,
                 unusable_by_issue: Mapping[str, float] | None = None, **thresholds: float) -> None:
        known = issue_types()
        names = [issue.name for issue in known]
        overrides = {**(by_issue or {}), **{k: v for k, v in thresholds.items() if not k.endswith(UNUSABLE_SUFFIX)}}
        unusable_overrides = {**(unusable_by_issue or {}),
                              **{k[: -len(UNUSABLE_SUFFIX)]: v for k, v in thresholds.items()
                                 if k.endswith(UNUSABLE_SUFFIX)}}
        unknown = sorted(set(overrides) - set(names)) + sorted(
            f"{name}{UNUSABLE_SUFFIX}" for name in set(unusable_overrides) - set(names))
        if unknown:
            raise ValueError(f"unknown issue types {unknown} in the quality thresholds; known: {names} (and "
                             f"<name>{UNUSABLE_SUFFIX} for their unusable thresholds)")
        values = {issue.name: overrides.get(issue.name, issue.threshold) for issue in known}
        unusable_values = {}
        for issue in known:
            default = issue.threshold if issue.unusable_threshold is None else issue.unusable_threshold
            # never above the flag threshold (an unusable image is always flagged too): a flag threshold lowered
            # below the unusable one takes the unusable one down with it
            unusable_values[issue.name] = unusable_overrides.get(issue.name, default)
        for name, value in [*values.items(), *((f"{n}{UNUSABLE_SUFFIX}", v) for n, v in unusable_values.items())]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"threshold {name} must be a finite number, got {value!r}")
        unusable_values = {name: min(value, values[name]) for name, value in unusable_values.items()}
        unusable = (tuple(issue.name for issue in known if issue.unusable) if unusable_issues is None
                    else tuple(unusable_issues))
        unknown = [name for name in unusable if name not in values]
        if unknown:
            raise ValueError(f"unusable_issues has unknown issue types {unknown}; known: {names}")
        object.__setattr__(self, "by_issue", values)
        object.__setattr__(self, "unusable_issues", unusable)
        object.__setattr__(self, "unusable_by_issue", unusable_values)

    def __getattr__(self, name: str) -> float:
        # Only called when ordinary lookup fails: an issue type's threshold (or <name>_unusable), as an attribute.
        try:
            if name.endswith(UNUSABLE_SUFFIX):
                return self.__dict__["unusable_by_issue"][name[: -len(UNUSABLE_SUFFIX)]]
            return self.__dict__["by_issue"][name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__!r} has no threshold {name!r}") from None

    def __hash__(self) -> int:
        return hash((tuple(self.by_issue.items()), self.unusable_issues, tuple(self.unusable_by_issue.items())))

    def as_dict(self) -> dict[str, Any]:
        return {**self.by_issue, **{f"{name}{UNUSABLE_SUFFIX}": self.unusable_by_issue[name]
                                    for name in self.unusable_issues},
                "unusable_issues": list(self.unusable_issues)}


def quality_version(thresholds: QualityThresholds) -> str:
    """The metrics' version plus the thresholds in force: either changing makes stored quality rows out of date."""
    return versioned(QUALITY_VERSION, thresholds.as_dict())


@dataclass(frozen=True)
class ImageStatistics:
    """What is measured once per image, for every issue type to score. All pixel statistics are taken at the
    analysis size; luma levels are 0..255, brightness 0..1."""

    width: int                              # original size, after EXIF orientation
    height: int
    analysis_width: int
    analysis_height: int
    source_gray: bool                       # the file has a single (gray) channel
    # the plain measurements the quality table keeps (see measure())
    brightness: float
    dark_clipped_fraction: float
    light_clipped_fraction: float
    rms_contrast: float
    colourfulness: float
    noise_sigma: float
    sharpness: float
    entropy: float
    jpeg_quality: int | None
    # statistics the scores are made of
    perceived_brightness_p05: float         # percentiles of HSP perceived brightness (Finley 2006), 0..1
    perceived_brightness_p99: float
    luma_p01: float                         # luma histogram percentiles (bin index)
    luma_p02: float
    luma_p98: float
    luma_p99: float
    pooled_entropy: float                   # luma entropy (bits) after 4x4 averaging, which removes pixel noise
    chroma_p99: float                       # 99th percentile of max - min of R, G, B (0 for single-channel files)
    octave_ratio: float | None              # blur features (see _blur_features); None: no structure to judge
    edge_steepness: float | None
    edge_width: float | None = None         # blur sigma of the strongest edges, analysis px (_edge_width)
    blur_unit: float = 1.0                  # the blur that counts as "blurry", analysis px (_blur_unit)

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

_MIN_STRUCTURE_LEVELS = 10.0   # below this 2..98 percentile luma range there is nothing to judge blur on


def _blur_features(g: np.ndarray, pooled: np.ndarray, noise: float, lo: float, hi: float
                   ) -> tuple[float | None, float | None]:
    """(octave_ratio, edge_steepness) of a float32 luma image (0..255); the ``blurry`` issue type scores them.

    * octave_ratio: gradient energy at the analysis size over gradient energy after 2x2 averaging, both with the
      estimated white-noise contribution removed. An image with no detail at the finest scale (blurred) tends to
      0.25 (halving the resolution doubles every smooth gradient); sharp photos are ~0.4-1.
    * edge_steepness: 99th percentile of the gradient magnitude (or, if larger, the 90th percentile among pixels
      with a gradient above the noise, for images whose edges are sparse) over the 2..98 percentile luma range:
      how abrupt the strongest edges are relative to the image's contrast (blurred edges are ramps, not steps).
    Both are contrast-invariant, unlike the Laplacian variance (``sharpness``). (None, None) when there is no
    structure to judge: under 8 px, less than _MIN_STRUCTURE_LEVELS of luma range, or no coarse gradient at all.
    """
    if g.shape[0] < 8 or g.shape[1] < 8 or hi - lo < _MIN_STRUCTURE_LEVELS:
        return None, None
    n2 = noise * noise
    dx = g[:, 1:] - g[:, :-1]
    dy = g[1:, :] - g[:-1, :]
    dx2, dy2 = dx * dx, dy * dy
    fine = float(dx2.mean()) + float(dy2.mean()) - 4.0 * n2
    coarse = _gradient_energy(pooled) - n2
    if coarse <= 1e-6:
        return None, None
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
    return octave, steepness


# Edge-width estimate: Hu and de Haan (2006), "Low cost robust blur estimator". An ideal step blurred by s, re-blurred
# by Gaussians of _REBLUR_A and _REBLUR_B pixels, has peak gradients in the ratio r = sqrt((s^2 + b^2) / (s^2 + a^2)),
# whatever its contrast; so s = sqrt((b^2 - r^2 a^2) / (r^2 - 1)) at each edge maximum. The ratio is sensitive for s
# up to ~2 px, so wider blur is measured on 2x-pooled copies (up to _EDGE_LEVELS levels).
_REBLUR_A, _REBLUR_B = 1.0, 2.0
_EDGE_LEVELS = 3
_EDGE_STRONGEST = 0.1       # the share of edge maxima (by strength) that are measured
_EDGE_PERCENTILE = 30       # per direction: the sharper part, so a blurred background does not count as blur
_EDGE_SENSITIVE = 1.6       # px: above this the next (coarser) level is measured too


def _pool2(g: np.ndarray) -> np.ndarray:
    h, w = g.shape[0] // 2 * 2, g.shape[1] // 2 * 2
    c = g[:h, :w]
    return 0.25 * (c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2])


_TAN_22_5 = math.tan(math.pi / 8)
_NEIGHBOURS = ((0, 1), (1, 1), (1, 0), (1, -1))   # across an edge whose gradient points at 0, 45, 90, 135 degrees


def _edge_sigmas(g: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(blur sigma, direction 0..3) at the strongest edge maxima of ``g``; None with fewer than 8 edges."""
    from scipy import ndimage

    a = ndimage.gaussian_filter(g, _REBLUR_A, mode="reflect", truncate=3.0)
    b = ndimage.gaussian_filter(g, _REBLUR_B, mode="reflect", truncate=3.0)
    h, w = g.shape
    ax, ay = 0.5 * (a[2:-2, 3:-1] - a[2:-2, 1:-3]), 0.5 * (a[3:-1, 2:-2] - a[1:-3, 2:-2])
    magnitude = np.zeros_like(a)
    m = magnitude[2:-2, 2:-2]
    np.sqrt(ax * ax + ay * ay, out=m)
    # the gradient's direction to the nearest 45 degrees (0: horizontal, 2: vertical, 1 and 3: the diagonals)
    abs_x, abs_y = np.abs(ax), np.abs(ay)
    direction = np.where(abs_y <= _TAN_22_5 * abs_x, 0,
                         np.where(abs_x <= _TAN_22_5 * abs_y, 2, np.where((ax > 0) == (ay > 0), 1, 3)))
    maxima = m > noise / (math.sqrt(math.pi) * _REBLUR_A) + 1.0   # above what the noise alone gives
    for k, (dy, dx) in enumerate(_NEIGHBOURS):   # non-maximum suppression across the edge
        ahead = magnitude[2 + dy:h - 2 + dy, 2 + dx:w - 2 + dx]
        behind = magnitude[2 - dy:h - 2 - dy, 2 - dx:w - 2 - dx]
        maxima &= (direction != k) | ((m >= ahead) & (m > behind))
    ys, xs = np.nonzero(maxima)
    if ys.size < 8:
        return None
    strength = m[ys, xs]
    ys, xs = ys + 2, xs + 2
    bx = 0.5 * (b[ys, xs + 1] - b[ys, xs - 1])
    by = 0.5 * (b[ys + 1, xs] - b[ys - 1, xs])
    ratio = strength / np.maximum(np.sqrt(bx * bx + by * by), 1e-6)
    strongest = strength >= (np.quantile(strength, 1 - _EDGE_STRONGEST) if ys.size > 80 else 0.0)
    r2 = np.clip(ratio[strongest], 1.0 + 1e-4, _REBLUR_B / _REBLUR_A - 1e-4) ** 2
    sigma = np.sqrt(np.maximum((_REBLUR_B ** 2 - r2 * _REBLUR_A ** 2) / (r2 - 1.0), 0.0))
    return sigma, direction[maxima][strongest].astype(np.int8)


def _edge_width(g: np.ndarray, noise: float) -> float | None:
    """The blur sigma of an image's sharper edges, in analysis pixels (None: no edges to measure).

    Per edge direction, the _EDGE_PERCENTILE-th percentile of the edge maxima's sigmas; the image's is the largest
    of the four, so motion blur (which leaves edges along the motion sharp) counts. Wide blur is measured on
    pooled copies, and the widest measurement of the levels visited wins."""
    width = None
    scale = 1.0
    for _ in range(_EDGE_LEVELS):
        if min(g.shape) < 12:
            break
        measured = _edge_sigmas(g, noise / scale)
        if measured is None:
            break
        sigma, direction = measured
        enough = max(8, 0.08 * sigma.size)
        by_direction = [float(np.percentile(sigma[direction == k], _EDGE_PERCENTILE)) for k in range(4)
                        if (direction == k).sum() >= enough]
        level = max(by_direction) if by_direction else float(np.percentile(sigma, _EDGE_PERCENTILE))
        width = level * scale if width is None else max(width, level * scale)
        if level < _EDGE_SENSITIVE or min(g.shape) < 24:
            break
        g = _pool2(g)
        scale *= 2.0
    return width


# What counts as blurry is relative to the image: a blur of 1% of its longer side, but never under 1.5 of its own
# pixels (less is the softness of an ordinary resample); in analysis pixels.
BLUR_UNIT_FRACTION = 0.01
BLUR_UNIT_MIN_PIXELS = 1.5


def _blur_unit(width: int, height: int, analysis_width: int, analysis_height: int) -> float:
    analysis_side, side = max(analysis_width, analysis_height), max(width, height, 1)
    return max(BLUR_UNIT_FRACTION * analysis_side, BLUR_UNIT_MIN_PIXELS * analysis_side / side)


def measure(data: bytes, analysis_side: int = ANALYSIS_SIDE) -> dict:
    """Decode ``data`` once at the analysis size and compute every per-image metric.

    Returns a flat dict (keys in ``MEASURE_COLUMNS``):

    * ``width``, ``height``: original size after EXIF orientation; ``analysis_width``, ``analysis_height``.
    * ``<T>_score`` for every per-image issue type T of :mod:`cv_dataops.quality.issues` (0..1, lower is worse):
      ``dark_score``, ``light_score``, ``blurry_score``, ``low_information_score``, ``odd_aspect_ratio_score``,
      ``grayscale_score``. Catalog-relative ones (``odd_size``) come from :func:`catalog_scores`.
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


def _measure_decoded(decoded: DecodedImage) -> dict:
    rgb = np.asarray(decoded.rgb)
    statistics = image_statistics(decoded, rgb)
    scores = {f"{issue.name}_score": issue.score(statistics) for issue in issue_types() if issue.score is not None}
    return {**{name: getattr(statistics, name) for name in SIZE_COLUMNS}, **scores,
            **{name: getattr(statistics, name) for name in MEASUREMENTS}, **_image_hashes(decoded, rgb)}


def image_statistics(decoded: DecodedImage, rgb: np.ndarray | None = None) -> ImageStatistics:
    """Every statistic the issue types score, from one decoded image (``rgb``: its pixels, if already at hand)."""
    rgb = np.asarray(decoded.rgb) if rgb is None else rgb
    ah, aw = rgb.shape[:2]
    gray8 = np.asarray(decoded.gray)
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
    if decoded.source_gray:
        chroma_p99 = 0.0
    else:
        chroma = np.maximum(np.maximum(r8, g8), b8) - np.minimum(np.minimum(r8, g8), b8)
        chroma_p99 = _quantile_from_hist(np.bincount(chroma.ravel(), minlength=256), 0.99)

    # --- luma histogram: brightness, clipping, entropy, robust range
    hist = np.bincount(gray8.ravel(), minlength=256)
    cumulative = np.cumsum(hist)
    levels = np.arange(256)
    brightness = float(np.dot(hist, levels)) / n / 255.0
    entropy = _entropy_bits(hist)
    p01, p02, p98, p99l = (float(v) for v in np.searchsorted(cumulative, np.array([0.01, 0.02, 0.98, 0.99]) * n))
    mean_level = brightness * 255.0

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
    octave, steepness = _blur_features(g, pooled, noise_sigma, p02, p98)
    # Entropy after 4x4 averaging when the image is large enough (averages pixel noise down 4x, so a flat image
    # with sensor noise is still flat; content survives it), else after 2x2, else none.
    if min(aw, ah) >= 32:
        coarse = _box2(pooled)
        pooled_entropy = _entropy_bits(np.bincount((coarse + 0.5).astype(np.uint8).ravel(), minlength=256))
    elif min(aw, ah) >= 16:
        pooled_entropy = _entropy_bits(np.bincount((pooled + 0.5).astype(np.uint8).ravel(), minlength=256))
    else:
        pooled_entropy = entropy

    return ImageStatistics(
        width=decoded.width, height=decoded.height, analysis_width=aw, analysis_height=ah,
        source_gray=bool(decoded.source_gray),
        brightness=brightness,
        dark_clipped_fraction=float(cumulative[CLIP_LEVELS]) / n,
        light_clipped_fraction=float(n - cumulative[254 - CLIP_LEVELS]) / n,
        rms_contrast=math.sqrt(max(float(np.dot(hist, (levels - mean_level) ** 2)) / n, 0.0)) / 255.0,
        colourfulness=colourfulness, noise_sigma=noise_sigma, sharpness=sharpness, entropy=entropy,
        jpeg_quality=estimate_jpeg_quality(decoded.quantization),
        perceived_brightness_p05=p05, perceived_brightness_p99=p99,
        luma_p01=p01, luma_p02=p02, luma_p98=p98, luma_p99=p99l,
        pooled_entropy=pooled_entropy, chroma_p99=chroma_p99, octave_ratio=octave, edge_steepness=steepness,
        edge_width=_edge_width(g, noise_sigma) if octave is not None else None,
        blur_unit=_blur_unit(decoded.width, decoded.height, aw, ah))


def _image_hashes(decoded: DecodedImage, rgb: np.ndarray) -> dict:
    imagehash = _hashes()
    gray_img = decoded.gray
    aw, ah = decoded.rgb.size
    reduce_by = max(1, min(aw, ah) // _HASH_SOURCE_SIDE)
    hash_source = gray_img.reduce(reduce_by) if reduce_by > 1 else gray_img
    digest = hashlib.sha256(f"{decoded.rgb.mode}:{aw}x{ah}:".encode())
    digest.update(np.ascontiguousarray(rgb))
    return {"phash": _hash_to_int(imagehash.phash(hash_source, hash_size=8)),
            "dhash": _hash_to_int(imagehash.dhash(hash_source, hash_size=8)),
            "pixel_hash": digest.hexdigest()}

# ---------------------------------------------------------------------------------------------------------------
# Catalog-relative scores, and flags
# ---------------------------------------------------------------------------------------------------------------

def catalog_columns() -> tuple[str, ...]:
    """The `images` columns the catalog-relative issue types judge a batch against."""
    return tuple(dict.fromkeys(name for issue in issue_types() for name in issue.catalog_columns))


def catalog_scores(rows: Any, catalog: Any | None = None) -> dict[str, np.ndarray]:
    """``<T>_score`` arrays for every catalog-relative issue type T (``odd_size``): ``rows`` (a mapping of column
    to array, or a DataFrame, of :func:`measure` results) judged against ``catalog`` (the same of the `images`
    table's :func:`catalog_columns`), or against the rows themselves when ``catalog`` is None."""
    return {f"{issue.name}_score": issue.catalog_score(rows, catalog)
            for issue in issue_types() if issue.catalog_score is not None}


def flag_issues(rows: Any, thresholds: QualityThresholds | None = None) -> dict[str, np.ndarray]:
    """Boolean ``is_<T>`` arrays for every issue type T (``T_score < thresholds.T``: flagged), ``is_unusable``
    (``T_score < thresholds.T_unusable`` for some T of ``thresholds.unusable_issues``) and ``unusable_reason``
    (object array: the unusable issue types of each row joined by "," in registration order, None when usable).

    ``rows`` is a mapping of column name to array (or a pandas DataFrame) holding the ``<T>_score`` columns that
    :func:`measure` returns. A catalog-relative score (``odd_size_score``) is used when present; otherwise it is
    computed from the rows themselves as the reference set (:func:`catalog_scores`). A missing score (NaN/None,
    e.g. an image that failed to decode) is never flagged.
    """
    thresholds = thresholds or QualityThresholds()
    length = None
    for name in ("width", *(f"{issue}_score" for issue in issue_names())):
        values = column(rows, name)
        if values is not None:
            length = len(values)
            break
    if length is None:
        raise ValueError("rows has none of the score columns measure() returns")
    flags: dict[str, np.ndarray] = {}
    reasons: list[list[str]] = [[] for _ in range(length)]
    for issue in issue_types():
        score = column(rows, f"{issue.name}_score")
        if score is None and issue.catalog_score is not None and all(
                column(rows, name) is not None for name in issue.catalog_columns):
            score = issue.catalog_score(rows, None)
        if score is None:
            raise ValueError(f"rows lacks {issue.name}_score (and what it is computed from)")
        with np.errstate(invalid="ignore"):
            flags[f"is_{issue.name}"] = (np.asarray(score < thresholds.by_issue[issue.name], dtype=bool)
                                         & np.isfinite(score))
            if issue.name in thresholds.unusable_issues:
                for index in np.flatnonzero((score < thresholds.unusable_by_issue[issue.name]) & np.isfinite(score)):
                    reasons[index].append(issue.name)
    flags["is_unusable"] = np.fromiter((bool(r) for r in reasons), dtype=bool, count=length)
    flags["unusable_reason"] = np.array([",".join(r) if r else None for r in reasons], dtype=object)
    return flags


# ---------------------------------------------------------------------------------------------------------------
# Streaming over many images with a process pool
# ---------------------------------------------------------------------------------------------------------------

# Worker processes get the caller's reader (a picklable UriReader carries the S3 settings, not a client), so they
# read through the same S3 configuration as the tables, whatever environment a forkserver started with.
_worker_read: Callable[[str], bytes] = read_uri


def measure_uri(uri: str | AnalysisImage, analysis_side: int = ANALYSIS_SIDE,
                read: Callable[[str], bytes] | None = None) -> dict:
    """Read ``uri`` with ``read`` (e.g. the catalog resource's ``uri_reader()``; default: this worker's reader)
    and :func:`measure` it; an analysis image decoded at ingest (:mod:`cv_dataops.images.analysis_cache`) is
    measured as it is, with the same results."""
    if isinstance(uri, AnalysisImage):
        return _measure_decoded(uri.decoded())
    return measure((read or _worker_read)(uri), analysis_side)


def _die_with_parent() -> None:
    """Make this worker die when the process that owns the pool does, even by SIGKILL (which leaves no chance to
    shut the pool down). On Linux, PR_SET_PDEATHSIG: the kernel kills us when our parent dies (fork, spawn). With
    forkserver our parent is the fork server, which outlives the owner while we live (we hold its "alive" pipe),
    so a daemon thread also waits on the owner's sentinel (a pipe the owner holds open) and exits when it closes."""
    import ctypes
    import os
    import signal
    import sys
    from multiprocessing.connection import wait as wait_for

    owner = multiprocessing.parent_process()
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent or (owner is not None and not owner.is_alive()):  # died before we asked
        os._exit(1)
    if owner is not None and owner.pid != parent and owner.sentinel is not None:

        def exit_when_owner_dies() -> None:
            wait_for([owner.sentinel])
            os._exit(1)

        threading.Thread(target=exit_when_owner_dies, name="owner-watch", daemon=True).start()


def _worker_init(read: Callable[[str], bytes] = read_uri) -> None:
    global _worker_read
    _die_with_parent()
    _worker_read = read
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
                   analysis_side: int = ANALYSIS_SIDE, chunk_size: int = 8, start_method: str | None = None,
                   read: Callable[[str], bytes] = read_uri) -> Iterator[tuple[str, dict | Exception]]:
    """Measure many images: ``items`` are ``(image_id, uri)`` with ``uri`` an absolute local path or
    ``s3://bucket/key``, or the image's :class:`AnalysisImage` from the batch's cache (never fetched or decoded). Yields ``(image_id, measure() dict or the Exception it raised)`` as results complete
    (not in input order); one bad image never stops the stream.

    Workers (a process pool, or this process when ``workers <= 1``) read the bytes themselves with ``read`` (pass
    the catalog resource's ``uri_reader()``: it is picklable and each worker builds one S3 client from its
    settings). Items go to workers in tasks of up to ``chunk_size`` (small
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
                yield image_id, measure_uri(uri, analysis_side, read)
            except Exception as error:  # noqa: BLE001 - reported per item, by design
                yield image_id, error
        return

    window = max(1, max_in_flight if max_in_flight is not None else 4 * workers)
    chunk_size = max(1, int(chunk_size))
    iterator = iter(items)
    context = _pool_context(start_method)
    if context.get_start_method() == "fork":
        _hashes()  # import imagehash/scipy once here, so forked workers inherit it instead of each importing it
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                   initargs=(read,))
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
                                               initializer=_worker_init, initargs=(read,))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
