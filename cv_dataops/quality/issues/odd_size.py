"""odd_size: an area far from the catalog's usual areas.

Catalog-relative, so it is scored over a batch against the whole catalog (:func:`odd_size_scores`), not per image.
The default threshold 0.5 marks "outside the catalog's usual sizes" as CleanVision's IQR fences do, but measured in
log scale and with a minimum tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cv_dataops.quality.issues import IssueType, column, register

# An image's size is log2(sqrt(width * height)) (the geometric-mean side, in octaves). Its distance outside the
# reference set's interquartile box [q1, q3] is compared with a tolerance of max(IQR_FACTOR * IQR, MIN_OCTAVES):
# score = 0.5 ** ((distance / tolerance) ** 2), so score 0.5 is exactly one tolerance out.
IQR_FACTOR = 1.5
MIN_OCTAVES = 1.5  # never call an image odd for being less than 2 ** 1.5 ~ 2.8x off in side length


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
    tolerance = max(IQR_FACTOR * (q3 - q1), MIN_OCTAVES)
    octaves = 0.5 * np.log2(areas[valid])
    distance = np.maximum(np.maximum(q1 - octaves, octaves - q3), 0.0)
    scores[valid] = np.power(0.5, (distance / tolerance) ** 2)
    return scores


def catalog_score(rows: Any, catalog: Any | None) -> np.ndarray:
    """The rows' odd_size scores against the catalog's areas (the rows' own when ``catalog`` is None); NaN for a
    row without a width or height."""
    widths, heights = column(rows, "width"), column(rows, "height")
    if widths is None or heights is None:
        raise ValueError("odd_size needs the rows' width and height")
    reference = None
    if catalog is not None:
        reference = column(catalog, "width") * column(catalog, "height")
    scores = odd_size_scores(widths, heights, reference)
    scores[~(np.isfinite(widths) & np.isfinite(heights))] = np.nan
    return scores


ISSUE = register(IssueType(
    name="odd_size", meaning="area far from the typical area of the whole catalog", threshold=0.5, unusable=False,
    catalog_score=catalog_score, catalog_columns=("width", "height")))
