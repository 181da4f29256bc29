"""Fit the knobs of ``find_label_issues`` (and the baseline's ``C``) on data the benchmark never reports on.

    .venv/bin/python bench/fit_label_issues.py [--seeds 100 101]

Data: the FIT half of each data set (bench/label_errors.py ``halves``: a stratified half drawn with split seed
2026; the benchmark reports on the other half), with noise seeds 100 and 101 (the report uses 0-2), 10 % and 20 %
noise, symmetric and asymmetric. Every combination of the grid below is scored on every such setting; the
combination with the highest mean F1 is printed as ``LabelIssueSettings`` defaults, and, separately, the ``C``
under which cleanlab's own ``find_label_issues`` (defaults, plain standardised logistic regression) has its
highest mean F1, so the baseline is fitted as carefully as ours.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import label_errors as bench  # noqa: E402  (sets one BLAS thread before numpy loads)
import numpy as np  # noqa: E402
from cleanlab.rank import get_label_quality_scores  # noqa: E402

from cv_dataops.embeddings.neighbors import NeighborIndex  # noqa: E402
from cv_dataops.labels.label_issues import (  # noqa: E402
    LabelIssueSettings,
    audit_probabilities,
    issues_from_probabilities,
    neighbor_probabilities,
)

CS = (0.01, 0.03)  # the label model's C (each costs a temperature-calibrated cross-validation; 0.1 and 0.3 lost)
BASELINE_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # cleanlab's logistic regression (no calibration)
NEIGHBORS = (10, 20, 30)
WEIGHTS = (0.25, 0.4, 0.5, 0.6, 0.75, 1.0)  # 0 (the neighbour vote alone) was never near the top
FILTERS = ("prune_by_noise_rate", "both")  # confident_learning was never near the top
SCORE_METHODS = ("self_confidence", "normalized_margin")
MAX_SCORES = (0.3, 0.35, 0.4, 0.45, 1.0)
RATES = (0.1, 0.2)
KINDS = ("symmetric", "asymmetric")


def settings_data(seeds: list[int]):
    """Yield ``(dataset, rate, kind, seed, vectors, noisy, truth, neighbour rows)`` of every fit setting."""
    for name, (x, y) in bench.datasets("fit").items():
        _, rows = NeighborIndex(x).kneighbors(None, k=max(NEIGHBORS))
        for rate, kind, seed in itertools.product(RATES, KINDS, seeds):
            noisy, truth, _ = bench.add_noise(y, rate, kind, seed)
            yield name, rate, kind, seed, x, noisy, truth, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    args = parser.parse_args()
    if set(args.seeds) & set(bench.REPORT_SEEDS):
        sys.exit(f"fit seeds must differ from the report seeds {bench.REPORT_SEEDS}")
    started = time.perf_counter()
    ours: dict[tuple, list[dict]] = {}
    baseline: dict[float, list[dict]] = {}
    for name, rate, kind, seed, x, noisy, truth, rows in settings_data(args.seeds):
        index = np.unique(noisy, return_inverse=True)[1]
        n_classes = int(index.max()) + 1
        for C in BASELINE_CS:
            plain = bench.classifier_probabilities(x, noisy, C, "none", seed)
            flagged, score = bench.cleanlab_baseline(noisy, plain)
            baseline.setdefault(C, []).append(bench.detection_scores(truth, flagged, score) | {"data": name})
        for C in CS:
            calibrated = bench.classifier_probabilities(x, noisy, C, "temperature", seed)
            for k, w in itertools.product(NEIGHBORS, WEIGHTS):
                if w == 1.0 and k != NEIGHBORS[0]:
                    continue  # no neighbour vote: k does not matter
                # audit_probabilities, with cleanlab's filter run once for every max_score (the cost here)
                knn = neighbor_probabilities(x, index, n_classes, k, 1.0, rows)
                averaged = w * calibrated + (1 - w) * knn
                for filter_by in FILTERS:
                    base_flags, _ = issues_from_probabilities(averaged, index, filter_by, SCORE_METHODS[0])
                    for method in SCORE_METHODS:
                        score = get_label_quality_scores(index, averaged / averaged.sum(1, keepdims=True),
                                                         method=method)
                        for max_score in MAX_SCORES:
                            flagged = base_flags & (score < max_score) if max_score < 1 else base_flags
                            ours.setdefault((C, k, w, filter_by, method, max_score), []).append(
                                bench.detection_scores(truth, flagged, score) | {"data": name})
        print(f"{name} {rate:.0%} {kind} seed {seed}: done ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr)

    def mean(results: list[dict], key: str, data: str | None = None) -> float:
        return float(np.mean([r[key] for r in results if data in (None, r["data"])]))

    ranked = sorted(ours, key=lambda knobs: (mean(ours[knobs], "f1"), mean(ours[knobs], "ap")), reverse=True)
    print("top 10 (C, neighbors, classifier_weight, filter_by, score_method, max_score): mean F1, mean AP over",
          len(ours[ranked[0]]), "fit settings")
    for knobs in ranked[:10]:
        by_data = ", ".join(f"{d} {mean(ours[knobs], 'f1', d):.4f}" for d in sorted({r["data"] for r in ours[knobs]}))
        print(f"  {knobs}: F1 {mean(ours[knobs], 'f1'):.4f} ({by_data})  AP {mean(ours[knobs], 'ap'):.4f}")
    best_c = max(baseline, key=lambda C: mean(baseline[C], "f1"))
    for C, results in baseline.items():
        by_data = ", ".join(f"{d} {mean(results, 'f1', d):.4f}" for d in sorted({r["data"] for r in results}))
        print(f"cleanlab baseline C={C}: F1 {mean(results, 'f1'):.4f} ({by_data})  AP {mean(results, 'ap'):.4f}")
    C, k, w, filter_by, method, max_score = ranked[0]
    chosen = LabelIssueSettings(neighbors=k, classifier_weight=w, filter_by=filter_by, score_method=method,
                                max_score=max_score, C=C)
    # The shortcut above must be what the library does: check the chosen knobs on the last setting.
    flagged, score, _ = audit_probabilities(x, index, n_classes, bench.classifier_probabilities(
        x, noisy, C, "temperature", seed), chosen, rows)
    assert bench.detection_scores(truth, flagged, score)["f1"] == ours[ranked[0]][-1]["f1"]
    print(f"chosen: {chosen}; baseline C = {best_c} (fit in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
