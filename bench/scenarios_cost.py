"""What keeping the chosen scenarios saves per run (issue 13): ``update_scenarios`` choosing the clusters (k-means for
2..12 clusters, a silhouette each, on a sample of at most 4,000) against assigning to the kept ones, on catalogs of
synthetic vectors, one thread per process.

    .venv/bin/python bench/scenarios_cost.py [--sizes 20000 50000 200000] [--no-write]

Vectors: 512-dimensional unit rows around 8 random centres (what an embedder gives a catalog with a few scenarios),
float32, seeded; the catalog grows by 3,000 (one batch) between the choice and the assignment. Times are the
library call (``cv_dataops.discovery.scenarios.update_scenarios``), median of 3, CPU seconds of this process.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import update_section  # noqa: E402

from cv_dataops.discovery.scenarios import update_scenarios  # noqa: E402

BATCH = 3000


def catalog(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 512)) * 0.6
    x = centres[rng.integers(0, 8, n)] + rng.normal(size=(n, 512))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cpu(call) -> tuple[float, object]:
    start = time.process_time()
    result = call()
    return time.process_time() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 200_000])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = ["| catalog before the batch | choose the clusters (CPU s) | assign to the kept ones (CPU s) | ratio |",
            "|---|---|---|---|"]
    for n in args.sizes:
        vectors = catalog(n + BATCH)
        ids = [f"i{i}" for i in range(n + BATCH)]
        batches = ["old"] * n + ["new"] * BATCH
        choose, assign = [], []
        for repeat in range(3):
            seconds, first = cpu(lambda: update_scenarios(ids[:n], batches[:n], vectors[:n], "v1", None,
                                                          seed=repeat))
            choose.append(seconds)
            seconds, kept = cpu(lambda: update_scenarios(ids, batches, vectors, "v1", first.model))
            assert not kept.rechosen, kept.reason
            assign.append(seconds)
        c, a = float(np.median(choose)), float(np.median(assign))
        rows.append(f"| {n:,} | {c:.2f} | {a:.2f} | {c / a:.0f}x |")
        print(rows[-1], file=sys.stderr)
    body = "\n".join([
        f"`update_scenarios` on synthetic catalogs (512-dimensional unit vectors around 8 centres) when a batch of "
        f"{BATCH:,} arrives: choosing the clusters again (what every run did before) against assigning everything to "
        "the kept centres (what a run does now until the catalog has grown by `scenario_refit_growth`, a batch "
        "drifted or the embedder changed). Median of 3, CPU seconds, one thread. Both include the 2-D map "
        "(a PCA fit when choosing, a projection when assigning) and writing nothing (the library call).",
        "", *rows])
    if args.no_write:
        print(body)
    else:
        update_section("scenarios-cost", "Scenarios: choosing the clusters against keeping them (issue 13)", body)


if __name__ == "__main__":
    main()
