"""Two-sample tests of every image property: KS for measurements, chi-squared for categories.

Every test returns a :class:`DriftTest` with its statistic, its own p-value and an effect size on a scale that does
not grow with the sample: KS D for measurements, total variation distance (TV, half the L1 distance between the
two category distributions) for categories. TV is KS D's counterpart: for a category with two values they are the
same number, so both share one severity threshold (see :data:`LARGE_EFFECT`). Missing values (NaN, None) are
dropped and counted, never a crash; a property with too few values on either side is reported as not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

# Effect sizes at or above these make a drifted test "large" (ERROR). Each is the value the measure takes between
# two unit-variance normals whose means differ by Cohen's d = 0.8, his "large" effect: KS D = 2 Phi(d / 2) - 1 =
# 0.311 (and TV, KS D's counterpart for categories), AUC = Phi(d / sqrt 2) = 0.714 (Rice & Harris 2005). A share of
# novel images rising by 0.31 is, on a 5 % baseline, Cohen's h = 0.8 too. MMD has no agreed scale: it decides
# "drifted" but never "large" alone.
LARGE_EFFECT: dict[str, float] = {"ks_d": 0.311, "total_variation": 0.311, "auc": 0.714, "share_increase": 0.31}

# Fewer values than this on either side: the test is not run (it could not reach alpha after correction anyway).
MIN_VALUES = 5


@dataclass(frozen=True)
class ImageProperty:
    column: str          # in the frame the caller passes (quality columns, plus `aspect` and `camera`)
    kind: str            # "numeric" or "categorical"
    cause: str           # what the explanation names when this property drifted first
    words: str           # how a sentence says it
    cause_when_lower: str | None = None   # another cause when the batch's median is the lower one


# The quality table's measurements and the images table's EXIF camera (see cv_dataops/quality/tables.py and
# cv_dataops/ingest/tables.py); `aspect` and `camera` are derived by :func:`property_frame`.
PROPERTIES: tuple[ImageProperty, ...] = (
    ImageProperty("brightness", "numeric", "exposure", "brightness"),
    ImageProperty("dark_clipped_fraction", "numeric", "exposure", "share of black-clipped pixels"),
    ImageProperty("light_clipped_fraction", "numeric", "exposure", "share of white-clipped pixels"),
    ImageProperty("rms_contrast", "numeric", "contrast", "contrast"),
    ImageProperty("sharpness", "numeric", "sharpness", "sharpness"),
    # Blur and denoising lower the noise estimate as much as the sharpness (Immerkaer's estimate reads fine
    # texture as noise): less noise is named as smoothing, under sharpness; more noise is noise.
    ImageProperty("noise_sigma", "numeric", "noise", "noise", cause_when_lower="sharpness"),
    ImageProperty("colourfulness", "numeric", "colour", "colourfulness"),
    ImageProperty("entropy", "numeric", "information", "entropy"),
    ImageProperty("width", "numeric", "size", "width"),
    ImageProperty("height", "numeric", "size", "height"),
    ImageProperty("aspect", "numeric", "size", "aspect ratio"),
    ImageProperty("jpeg_quality", "numeric", "compression", "JPEG quality"),
    ImageProperty("format", "categorical", "format", "file format"),
    ImageProperty("camera", "categorical", "camera", "camera"),
)
PROPERTY_BY_COLUMN = {p.column: p for p in PROPERTIES}


@dataclass
class DriftTest:
    """One test of a batch against its reference. ``drifted`` is set by the batch-wide correction."""

    family: str                  # the group the correction gives one share of alpha: properties, embedding, ...
    test: str                    # ks, chi_squared, mmd, domain_classifier, fisher
    feature: str
    statistic: float | None
    p_value: float | None        # None: not run (see ``note``)
    effect_size: float | None
    effect_measure: str          # ks_d, total_variation, auc, mmd, share_increase
    cause: str = ""              # the words-level cause this test stands for (sharpness, camera, scenario, ...)
    n_reference: int = 0
    n_batch: int = 0
    missing_reference: int = 0
    missing_batch: int = 0
    note: str = ""
    details: dict = field(default_factory=dict)   # medians, shares, ... for the explanation and the report
    drifted: bool = False
    adjusted_p_value: float | None = None

    @property
    def ran(self) -> bool:
        return self.p_value is not None

    @property
    def large(self) -> bool:
        threshold = LARGE_EFFECT.get(self.effect_measure)
        return threshold is not None and self.effect_size is not None and self.effect_size >= threshold

    @property
    def strength(self) -> float:
        """Effect size relative to its large threshold (scale-free, so causes of different tests rank together)."""
        threshold = LARGE_EFFECT.get(self.effect_measure)
        if self.effect_size is None or not np.isfinite(self.effect_size):
            return 0.0
        return float(self.effect_size / threshold) if threshold else 0.0


def property_frame(quality: pd.DataFrame, images: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-image property frame the tests read: the quality rows, ``aspect`` = width / height, and, from the
    images rows where given (joined on image_id), ``format`` and ``camera`` = "make model" ("unknown" when EXIF has
    neither)."""
    frame = quality.copy()
    if images is not None and len(images.columns):
        extra = [c for c in ("format", "camera_make", "camera_model") if c in images.columns and c not in frame]
        if extra and "image_id" in images and "image_id" in frame:
            frame = frame.merge(images[["image_id", *extra]].drop_duplicates("image_id"), on="image_id", how="left")
    if "width" in frame and "height" in frame:
        width = pd.to_numeric(frame["width"], errors="coerce").astype(float)
        height = pd.to_numeric(frame["height"], errors="coerce").astype(float)
        frame["aspect"] = width / height.where(height > 0)
    if "camera" not in frame and ("camera_make" in frame or "camera_model" in frame):
        make = frame.get("camera_make", pd.Series(None, index=frame.index)).astype("string").str.strip()
        model = frame.get("camera_model", pd.Series(None, index=frame.index)).astype("string").str.strip()
        camera = (make.fillna("") + " " + model.fillna("")).str.strip()
        frame["camera"] = camera.mask(camera == "", "unknown").astype(object)
    return frame


def _numbers(values: pd.Series) -> tuple[np.ndarray, int]:
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    finite = np.isfinite(x)
    return x[finite], int((~finite).sum())


def ks_test(reference: pd.Series, batch: pd.Series, *, feature: str, family: str = "properties",
            cause: str = "") -> DriftTest:
    """Two-sample KS (scipy's exact or asymptotic p-value, two-sided); effect size KS D; medians for the words."""
    r, r_missing = _numbers(reference)
    b, b_missing = _numbers(batch)
    result = DriftTest(family, "ks", feature, None, None, None, "ks_d", cause or feature, len(r), len(b),
                       r_missing, b_missing)
    if len(r) < MIN_VALUES or len(b) < MIN_VALUES:
        result.note = f"not run: {len(r)} reference and {len(b)} batch values (at least {MIN_VALUES} each needed)"
        return result
    test = stats.ks_2samp(r, b)
    result.statistic = result.effect_size = float(test.statistic)
    result.p_value = float(test.pvalue)
    result.details = {"reference_median": float(np.median(r)), "batch_median": float(np.median(b)),
                      "reference_values": r, "batch_values": b}
    return result


def _categories(values: pd.Series) -> pd.Series:
    values = pd.Series(values).reset_index(drop=True)
    return values.astype(object).where(values.notna(), "(missing)").astype(str)


def _pooled_counts(reference: pd.Series, batch: pd.Series) -> tuple[list[str], np.ndarray]:
    """2 x k counts; categories expected fewer than 5 times in the batch are pooled into one (Cochran's rule, so the
    chi-squared p-value can be trusted at small batches)."""
    counts = pd.concat([reference.value_counts().rename("reference"), batch.value_counts().rename("batch")],
                       axis=1).fillna(0).sort_index()
    names, table = [str(n) for n in counts.index], counts.to_numpy(dtype=float).T
    expected_batch = table.sum(axis=0) * len(batch) / max(1, len(reference) + len(batch))
    rare = expected_batch < 5
    if rare.sum() >= 2 or (rare.any() and len(names) > 2):
        keep = ~rare
        names = [n for n, k in zip(names, keep) if k] + ["(rare, pooled)"]
        table = np.column_stack([table[:, keep], table[:, rare].sum(axis=1)])
    return names, table


def chi_squared_test(reference: pd.Series, batch: pd.Series, *, feature: str, family: str = "properties",
                     cause: str = "") -> DriftTest:
    """Chi-squared test of homogeneity on the category counts (missing is a category of its own); effect size
    total variation distance between the two distributions (over the categories before pooling)."""
    raw_reference, raw_batch = pd.Series(reference), pd.Series(batch)
    result = DriftTest(family, "chi_squared", feature, None, None, None, "total_variation", cause or feature,
                       len(raw_reference), len(raw_batch), int(raw_reference.isna().sum()),
                       int(raw_batch.isna().sum()))
    if len(raw_reference) < MIN_VALUES or len(raw_batch) < MIN_VALUES:
        result.note = f"not run: {len(raw_reference)} reference and {len(raw_batch)} batch values"
        return result
    reference, batch = _categories(raw_reference), _categories(raw_batch)
    shares = pd.concat([reference.value_counts(normalize=True).rename("reference"),
                        batch.value_counts(normalize=True).rename("batch")], axis=1).fillna(0.0)
    result.effect_size = float(0.5 * (shares["reference"] - shares["batch"]).abs().sum())
    result.details = {"shares": shares.sort_values("batch", ascending=False)}
    _, counts = _pooled_counts(reference, batch)
    counts = counts[:, counts.sum(axis=0) > 0]
    if counts.shape[1] < 2:
        result.statistic, result.p_value = 0.0, 1.0
        result.note = "one category on both sides"
        return result
    test = stats.chi2_contingency(counts, correction=counts.shape[1] == 2)
    result.statistic, result.p_value = float(test.statistic), float(test.pvalue)
    return result


def property_tests(reference: pd.DataFrame, batch: pd.DataFrame,
                   properties: tuple[ImageProperty, ...] = PROPERTIES) -> list[DriftTest]:
    """One test per property present in both frames (use :func:`property_frame` to build them); a property that
    is in neither frame is skipped, one missing on one side is reported as not run."""
    tests = []
    for prop in properties:
        in_r, in_b = prop.column in reference.columns, prop.column in batch.columns
        if not in_r and not in_b:
            continue
        if not (in_r and in_b):
            tests.append(DriftTest("properties", "ks" if prop.kind == "numeric" else "chi_squared", prop.column,
                                   None, None, None, "ks_d" if prop.kind == "numeric" else "total_variation",
                                   prop.cause, note=f"not run: column missing from the "
                                                    f"{'batch' if in_r else 'reference'}"))
            continue
        if prop.kind == "numeric":
            test = ks_test(reference[prop.column], batch[prop.column], feature=prop.column, cause=prop.cause)
            if prop.cause_when_lower and test.ran and test.details["batch_median"] < test.details["reference_median"]:
                test.cause = prop.cause_when_lower
            tests.append(test)
        else:
            tests.append(chi_squared_test(reference[prop.column], batch[prop.column], feature=prop.column,
                                          cause=prop.cause))
    return tests


def tail_atypicality(reference: pd.DataFrame, batch: pd.DataFrame,
                     properties: tuple[ImageProperty, ...] = PROPERTIES) -> np.ndarray:
    """Per batch image, 1 - the smallest two-sided tail share of its numeric properties among the reference's
    values (conformal, (count + 1) / (n + 1)), times the number of properties placed (Bonferroni: the most extreme
    of ten properties is not ten times as telling), so the score reads like the embedding's; NaN where no property
    could be placed."""
    best = np.full(len(batch), np.inf)
    placed = np.zeros(len(batch))
    for prop in properties:
        if prop.kind != "numeric" or prop.column not in reference or prop.column not in batch:
            continue
        r, _ = _numbers(reference[prop.column])
        if len(r) < MIN_VALUES:
            continue
        r = np.sort(r)
        x = pd.to_numeric(batch[prop.column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        below = np.searchsorted(r, x, side="right")
        above = len(r) - np.searchsorted(r, x, side="left")
        tail = np.minimum(1.0, 2.0 * (np.minimum(below, above) + 1) / (len(r) + 1))
        best = np.where(np.isfinite(x), np.minimum(best, tail), best)
        placed += np.isfinite(x)
    return np.where(np.isfinite(best), 1.0 - np.minimum(1.0, best * np.maximum(placed, 1)), np.nan)
