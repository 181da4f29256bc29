"""Fit the quality scores' constants and thresholds on the FIT photos only, and print them.

    python bench/fit_quality_thresholds.py [--work DIR]

Fit data (``bench/quality_dataset.py``): crops of the FIT_SOURCES photographs at long sides ~1024, ~256 and ~64 px
(clean: plain, soft, upscaled, heavily compressed; and each issue injected with known parameters), the
FIT_GRAY_SOURCES photographs as grayscale positives, and CIFAR-10 *train*. The benchmark
(``bench/quality_benchmark.py accuracy``) scores on HELD_OUT_SOURCES, CIFAR-10 *test* and scikit-learn's digits,
none of which this script reads.

What it fits:
* ``blurry``: a logistic regression (scikit-learn, C=1) of "blurred" on ln(edge_width / blur_unit + 0.05),
  ln(octave_ratio), ln(edge_steepness); the printed weights go into ``cv_dataops/quality/issues/blurry.py``.
* every per-image issue type's flag threshold: the value that maximises F1 on the fit data among those that flag at
  most 2% of its clean photos;
* the unusable thresholds of dark, light, blurry and low_information: the value that best separates (F1) the
  unusable injections (near-black, blown out, blank, blurred by 8% of the side) from every usable image (clean,
  and flag-level injections), among those that call at most 0.5% of the clean photos unusable.
The constants in the issue modules are these values, rounded, except odd_aspect_ratio, which keeps CleanVision's
0.35 (every value of its plateau scores the same F1 on the fit data); the table shows both. ``--check`` scores
the constants in force on the fit set instead of fitting.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quality_dataset import (  # noqa: E402
    FIT_GRAY_SOURCES,
    FIT_SOURCES,
    build,
    cifar_photos,
    load_source,
    photo_crops,
    photos_needed,
)
from report import update_section  # noqa: E402

from cv_dataops.images.decode import decode  # noqa: E402
from cv_dataops.quality.issues import issue_types  # noqa: E402
from cv_dataops.quality.measure import QualityThresholds, image_statistics  # noqa: E402

PER_IMAGE = ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "grayscale")
UNUSABLE = ("dark", "light", "blurry", "low_information")
MAX_CLEAN_FLAGGED = 0.02
FIT_CLEAN, FIT_PER_ISSUE = 90, 18   # clean photos per fit set (twice that for CIFAR-10), injections per issue type
MAX_CLEAN_UNUSABLE = 0.005


def fit_sets(work: Path) -> list[tuple[str, Path, list]]:
    sets = []
    for side in (1024, 256, 64):
        directory = work / f"fit_{side}"
        photos = photo_crops(FIT_SOURCES, photos_needed(FIT_CLEAN, FIT_PER_ISSUE), side, seed=side)
        gray = [] if side == 64 else [crop for name in FIT_GRAY_SOURCES
                                      for crop in photo_crops((name,), 1, side, seed=side + 1)]
        sets.append((f"fit photos ~{side} px", directory, build(directory, photos, f"f{side}", clean=FIT_CLEAN,
                                                                per_issue=FIT_PER_ISSUE, gray_photos=gray,
                                                                duplicates=0)))
    directory = work / "fit_cifar"
    photos = cifar_photos(photos_needed(2 * FIT_CLEAN, FIT_PER_ISSUE), "train")
    sets.append(("CIFAR-10 train", directory, build(directory, photos, "fc", clean=2 * FIT_CLEAN,
                                                    per_issue=FIT_PER_ISSUE, duplicates=0)))
    return sets


def statistics_of(sets) -> list[dict]:
    scorers = {issue.name: issue.score for issue in issue_types() if issue.score is not None}
    rows = []
    for title, directory, samples in sets:
        for sample in samples:
            decoded = decode((directory / sample.name).read_bytes(), 256)
            stats = image_statistics(decoded)
            rows.append({"set": title, "sample": sample, "stats": stats,
                         **{f"{name}_score": scorer(stats) for name, scorer in scorers.items()}})
    return rows


def blur_features(stats) -> list[float] | None:
    if stats.octave_ratio is None or stats.edge_steepness is None or stats.edge_width is None:
        return None
    return [math.log(stats.edge_width / stats.blur_unit + 0.05), math.log(stats.octave_ratio),
            math.log(max(stats.edge_steepness, 1e-6))]


def fit_blur(rows) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    features, labels = [], []
    for row in rows:
        values = blur_features(row["stats"])
        if values is not None:
            features.append(values)
            labels.append("blurry" in row["sample"].issues)
    model = LogisticRegression(C=1.0, max_iter=1000).fit(np.array(features), np.array(labels))
    return model.coef_[0], float(model.intercept_[0])


def _f1(flagged: np.ndarray, truth: np.ndarray) -> float:
    tp = int((flagged & truth).sum())
    return 2 * tp / (2 * tp + int((flagged & ~truth).sum()) + int((~flagged & truth).sum())) if truth.any() else 1.0


def fit_threshold(scores: np.ndarray, truth: np.ndarray, clean: np.ndarray) -> tuple[float, float, tuple]:
    """(threshold, its F1, (lowest, highest) threshold within 0.005 of that F1)."""
    results = []
    for threshold in np.round(np.arange(0.01, 1.0, 0.01), 2):
        flagged = scores < threshold
        if flagged[clean].mean() <= MAX_CLEAN_FLAGGED:
            results.append((_f1(flagged, truth), float(threshold)))
    f1, threshold = max(results)
    plateau = [t for value, t in results if value >= f1 - 0.005]
    return threshold, f1, (min(plateau), max(plateau))


def fit_unusable(scores: np.ndarray, unusable: np.ndarray, clean: np.ndarray) -> float:
    """The threshold that best separates the unusable injections from every usable image (F1), among those that
    call at most MAX_CLEAN_UNUSABLE of the clean photos unusable."""
    best = (-1.0, 0.0)
    for threshold in np.unique(np.round(np.concatenate([np.geomspace(1e-4, 0.5, 200), scores[unusable] + 1e-6]), 6)):
        called = scores < threshold
        if called[clean].mean() > MAX_CLEAN_UNUSABLE:
            continue
        best = max(best, (_f1(called, unusable), float(threshold)))
    return best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="where to write the fit files (default: a temp dir)")
    parser.add_argument("--check", action="store_true", help="score the constants in force instead of fitting")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cv-dataops-fit-"))
    for name in FIT_GRAY_SOURCES:
        load_source(name)
    rows = statistics_of(fit_sets(work))
    lines = [f"{len(rows)} fit images: crops of {', '.join(FIT_SOURCES)} at long sides ~1024, ~256 and ~64 px, "
             f"{', '.join(FIT_GRAY_SOURCES)} as grayscale photos, and CIFAR-10 train; none of them is in a "
             "held-out set. " + ("The constants in force, scored on the fit set (`--check`)." if args.check else
                                 "Fitted values (the issue modules hold them, rounded)."), ""]
    if not args.check:
        weights, bias = fit_blur(rows)
        lines += [f"blurry logistic model: `_W_WIDTH = {weights[0]:.2f}; _W_OCTAVE = {weights[1]:.2f}; "
                  f"_W_STEEP = {weights[2]:.2f}; _BIAS = {bias:.2f}`", ""]
        for row in rows:  # re-score blur with the fitted model
            values = blur_features(row["stats"])
            row["blurry_score"] = 1.0 if values is None else 1.0 / (1.0 + math.exp(
                min(50.0, float(np.dot(weights, values) + bias))))
    defaults = QualityThresholds()
    clean = np.array([not r["sample"].issues for r in rows])
    unusable = np.array([r["sample"].unusable for r in rows])
    lines += ["| issue | threshold (in force) | F1 within 0.005 for | fit F1 | clean flagged | unusable threshold "
              "(in force) | unusable recall | usable called unusable |", "|---|---|---|---|---|---|---|---|"]
    for name in PER_IMAGE:
        scores = np.array([r[f"{name}_score"] for r in rows])
        truth = np.array([name in r["sample"].issues for r in rows])
        in_force = defaults.by_issue[name]
        if args.check:
            threshold, f1, plateau = in_force, _f1(scores < in_force, truth), None
        else:
            threshold, f1, plateau = fit_threshold(scores, truth, clean)
        span = f"{plateau[0]:.2f}-{plateau[1]:.2f}" if plateau else "-"
        line = (f"| {name} | {threshold:.2f} ({in_force:.2f}) | {span} | {f1:.2f} | "
                f"{(scores[clean] < threshold).mean():.1%} |")
        if name in UNUSABLE:
            truly = unusable & truth
            limit = defaults.unusable_by_issue[name] if args.check else fit_unusable(scores, unusable & truth, clean)
            called = scores < limit
            line += (f" {limit:.4g} ({defaults.unusable_by_issue[name]:.4g}) | {called[truly].mean():.2f} | "
                     f"{called[~unusable].mean():.1%} |")
        else:
            line += " - | - | - |"
        lines.append(line)
    lines += ["", "Why a fit set of its own: the earlier blur score was fitted on the photos and blur family it was "
              "scored on, and on a held-out probe it flagged 72% of 36 clean ordinary photos as blurry (F1 0.20, "
              "CleanVision 0.46), and light found 2 of 10 washed-out images (F1 0.33). Now blur is judged "
              "relative to the image (edge width against 1% of the longer side, at least 1.5 px), light also "
              "counts pixels blown to white, and the held-out figures are in the section above."]
    update_section("quality-fit", "Quality: the fit set behind the thresholds", "\n".join(lines))


if __name__ == "__main__":
    main()
