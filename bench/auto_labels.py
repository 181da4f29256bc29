"""Benchmark 3 of issue 11: auto-label accuracy against coverage, with the acceptance threshold of
:mod:`cv_dataops.labels.acceptance`.

    .venv/bin/python bench/auto_labels.py [--seeds 10] [--no-cifar]

Per seed: a stratified 30 % of the data set is *verified* (its labels known), the other 70 % unlabelled (its
ground truth kept for scoring only). On the verified 30 % alone: the classifier's ``C`` by 5-fold
cross-validation, then :func:`~cv_dataops.labels.acceptance.acceptance_threshold` (5-fold out-of-sample
probabilities; the lowest confidence whose accepted verified images reach 98 % precision). The classifier fitted
on all the verified labels then labels the 70 %, :func:`~cv_dataops.labels.acceptance.apply_threshold` accepts
or sends to review, and precision (accuracy of the accepted) and coverage (share accepted) are measured on the
70 %: never the data the threshold was chosen on. Nothing is tuned: the acceptance settings are the defaults.

Classifiers: standardised logistic regression and a standardised RBF support-vector machine (Platt probabilities)
from scikit-learn, and the label domain's ``LabelModel`` (standardised logistic regression with temperature-scaled
probabilities) when it imports: any estimator with ``fit``/``predict_proba``/``classes_`` plugs in. The SVM row
was added after logistic regression fell just short of 90 % coverage on two sanity seeds (100, 101) that the
reported figures (seeds 0..) do not use; every row is reported.

Data: scikit-learn's digits (1,797 images; the 64 pixels); the CIFAR-10 sample's 4,000 images (train and test
pooled) embedded with ``PatchKMeansEmbedder`` (vectors cached by ``bench/active_learning.py``), when present.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: one BLAS thread (a shared, busy machine)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from active_learning import CIFAR, cifar_vectors  # noqa: E402
from report import update_section  # noqa: E402

from cv_dataops.labels.acceptance import (  # noqa: E402
    AUTO,
    AcceptanceSettings,
    acceptance_threshold,
    apply_threshold,
)

VERIFIED = 0.30
COVERAGES = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0)


def logistic_regression(x: np.ndarray, y: np.ndarray, seed: int):
    """Standardised logistic regression, ``C`` by 5-fold cross-validation on ``x``, ``y`` (the verified only)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    search = GridSearchCV(pipeline, {"logisticregression__C": [0.001, 0.01, 0.1, 1.0, 10.0]}, cv=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(x, y)
    return search.best_estimator_


def rbf_svm(x: np.ndarray, y: np.ndarray, seed: int):
    """Standardised RBF support-vector machine with libsvm's probabilities (Platt scaling of each class pair,
    coupled), ``C`` and ``gamma`` by 5-fold cross-validation on the verified only. ``SVC(probability=True)`` is
    deprecated in scikit-learn 1.9 for ``CalibratedClassifierCV(SVC(), ensemble=False)``, but that one's one-vs-rest
    sigmoids on the SVM's vote-based scores rank far worse (on a sanity seed, 100: accuracy of the most confident
    90 % 0.961 against 0.995): kept, with the warning silenced, until 1.11 removes it."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    grid = {"svc__C": [1.0, 10.0, 100.0], "svc__gamma": ["scale", 0.3 / x.shape[1], 3.0 / x.shape[1]]}
    search = GridSearchCV(make_pipeline(StandardScaler(), SVC(random_state=seed)), grid, cv=5).fit(x, y)
    return search.best_estimator_.set_params(svc__probability=True)


def label_model(x: np.ndarray, y: np.ndarray, seed: int):
    from cv_dataops.labels.model import LabelModel

    return LabelModel()


def classifiers() -> dict:
    found = {"logistic regression (C by CV on the verified)": logistic_regression,
             "RBF SVM (C, gamma by CV on the verified; Platt probabilities)": rbf_svm}
    try:
        from cv_dataops.labels.model import LabelModel  # noqa: F401
    except ImportError as error:
        print(f"LabelModel not importable ({error}): left out", file=sys.stderr)
    else:
        found["`LabelModel` (defaults)"] = label_model
    return found


def held_out_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[list[float], float]:
    """Accuracy of the most confident share at each of :data:`COVERAGES`, and the largest coverage whose accuracy
    reaches 98 % (what an oracle threshold on the 70 % would give: the ceiling for the chosen one)."""
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    at = [float(hits[max(0, int(round(c * len(order))) - 1)]) for c in COVERAGES]
    reaching = np.flatnonzero(hits >= 0.98)
    return at, float((reaching[-1] + 1) / len(order)) if len(reaching) else 0.0


def run_seed(x: np.ndarray, y: np.ndarray, build, seed: int, settings: AcceptanceSettings) -> dict:
    from sklearn.base import clone
    from sklearn.model_selection import train_test_split

    warnings.filterwarnings("ignore", message="The `probability` parameter was deprecated", category=FutureWarning)
    verified, unseen = train_test_split(np.arange(len(y)), train_size=VERIFIED, stratify=y, random_state=seed)
    estimator = build(x[verified], y[verified], seed)
    chosen = acceptance_threshold(clone(estimator), x[verified], y[verified], settings)
    model = clone(estimator).fit(x[verified], y[verified])
    probabilities = model.predict_proba(x[unseen])
    decisions = apply_threshold(probabilities, model.classes_, chosen)
    accepted = (decisions["decision"] == AUTO).to_numpy()
    correct = decisions["label"].to_numpy() == y[unseen]
    curve, oracle = held_out_curve(decisions["confidence"].to_numpy(), correct)
    return {"threshold": chosen.threshold, "verified_precision": chosen.precision, "verified_coverage": chosen.coverage,
            "precision": float(correct[accepted].mean()) if accepted.any() else float("nan"),
            "coverage": float(accepted.mean()), "accuracy": float(correct.mean()), "curve": curve, "oracle": oracle,
            "verified": len(verified), "unseen": len(unseen)}


def mean_sd(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}"


def dataset_section(name: str, x: np.ndarray, y: np.ndarray, seeds: int, goal: bool,
                    first_seed: int = 0) -> tuple[str, list[str]]:
    settings = AcceptanceSettings()
    rows = ["| classifier | accuracy on the 70 % (all) | threshold | precision on the verified (CV) | coverage on the "
            "verified (CV) | **precision on the 70 %** | **coverage on the 70 %** | seeds at >= 98 % | seeds "
            "accepting nothing | oracle coverage at 98 % |", "|---|---|---|---|---|---|---|---|---|---|"]
    curve_rows = ["| classifier | " + " | ".join(f"{c:.0%}" for c in COVERAGES) + " |",
                  "|---|" + "---|" * len(COVERAGES)]
    verdicts = []
    for label, build in classifiers().items():
        started = time.perf_counter()
        results = [run_seed(x, y, build, seed, settings) for seed in range(first_seed, first_seed + seeds)]
        print(f"{name}, {label}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        precision = np.array([r["precision"] for r in results])
        coverage = np.array([r["coverage"] for r in results])
        thresholds = [r["threshold"] for r in results if r["threshold"] is not None]
        rows.append(f"| {label} | {mean_sd([r['accuracy'] for r in results])} | "
                    f"{mean_sd(thresholds) if thresholds else 'none'} | "
                    f"{mean_sd([r['verified_precision'] or np.nan for r in results])} | "
                    f"{mean_sd([r['verified_coverage'] for r in results])} | {mean_sd(precision)} | "
                    f"{mean_sd(coverage)} | {int((precision >= 0.98).sum())}/{seeds} | "
                    f"{len(results) - len(thresholds)}/{seeds} | {mean_sd([r['oracle'] for r in results])} |")
        curve = np.array([r["curve"] for r in results]).mean(axis=0)
        curve_rows.append(f"| {label} | " + " | ".join(f"{a:.3f}" for a in curve) + " |")
        if goal:
            met = np.nanmean(precision) >= 0.98 and coverage.mean() >= 0.90
            verdicts.append(f"* {label}: precision {np.nanmean(precision):.3f}, coverage {coverage.mean():.1%} on "
                            f"the held-out 70 % (mean of {seeds} seeds; precision at least 98 % on "
                            f"{int((precision >= 0.98).sum())} of them) — **{'met' if met else 'NOT met'}**")
    verified, unseen = results[0]["verified"], results[0]["unseen"]
    text = (f"{len(y)} images: {verified} verified (30 %, stratified, one draw per seed), {unseen} held out. Mean ± "
            f"standard deviation over {seeds} seeds (0..{seeds - 1}).\n\n" + "\n".join(rows) +
            "\n\nAccuracy of the most confident share of the held-out 70 % (the accuracy-coverage curve, mean over "
            "seeds):\n\n" + "\n".join(curve_rows))
    return text, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--no-cifar", action="store_true")
    args = parser.parse_args()
    from sklearn.datasets import load_digits

    started = time.perf_counter()
    images, labels = load_digits(return_X_y=True)
    parts, verdicts = [], []
    text, verdicts = dataset_section("digits", images.astype(np.float64), labels.astype(str), args.seeds, goal=True)
    parts.append("### digits (scikit-learn `load_digits`, the 64 pixels)\n\n" + text)
    if not args.no_cifar:
        loaded = cifar_vectors()
        if loaded is None:
            parts.append(f"The CIFAR-10 sample is not at `{CIFAR}`: skipped.")
        else:
            train_x, train_y, test_x, test_y, version = loaded
            x, y = np.vstack([train_x, test_x]).astype(np.float64), np.concatenate([train_y, test_y])
            text, _ = dataset_section("CIFAR-10 sample", x, y, min(args.seeds, 5), goal=False)
            parts.append(f"### CIFAR-10 sample (`PatchKMeansEmbedder`, version `{version}`, train and test pooled; "
                         "no goal)\n\n" + text)
    body = """
Auto-label acceptance (`cv_dataops.labels.acceptance`, default settings: target precision 0.98, 5 folds). Split:
per seed a stratified 30 % is verified; the classifier's `C` and the acceptance threshold are chosen on those
alone (the threshold from 5-fold out-of-sample probabilities); the classifier fitted on all of them then labels
the other 70 %, and precision (accuracy of the accepted auto-labels) and coverage (share accepted, the rest goes
to review) are measured there, never on the data the threshold was chosen on. Nothing was tuned for this
benchmark. *Oracle coverage* is the largest share of the 70 % whose most confident predictions reach 98 %: the
ceiling for a threshold chosen without their labels. Threshold and precision columns average the seeds that
accepted something; a goal is met when the mean precision on the 70 % is at least 98 % and the mean coverage at
least 90 %. Classifiers: standardised logistic regression, a standardised
RBF SVM (Platt probabilities) and the label domain's `LabelModel`; the SVM row was added after logistic regression
fell just short of 90 % coverage on two sanity seeds (100, 101) that these figures do not use.

Goal (issue 11, benchmark 3): on digits with 30 % verified, at least 90 % coverage at 98 % precision.

""" + "\n".join(verdicts) + "\n\n" + "\n\n".join(parts) + (f"\n\nWhole run: {time.perf_counter() - started:.0f} s "
                                                             "with one BLAS thread.")
    update_section("auto-labels", "Auto-labelling: accuracy against coverage (issue 11, benchmark 3)", body)


if __name__ == "__main__":
    main()
