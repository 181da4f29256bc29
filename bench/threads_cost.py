"""Native threads per process (issue 13): `cv-dataops run` end to end, as a user runs it, with cv-dataops' default of
one BLAS/OpenMP thread per process against the libraries' default of one per core in every process.

    .venv/bin/python bench/threads_cost.py [--repeats 2] [--no-write]

Landing: the CIFAR-10 sample's test split (1,000 files in ImageFolder layout), read in place; each run into a fresh
data root and Dagster home, the two settings alternating. "Libraries' default" sets ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` to the number of cores, which is what those libraries do when
nothing is set and what cv-dataops leaves alone when a user sets them (``cv_dataops/core/threads.py``).
Wall seconds of the command, and CPU seconds of it and its children (``os.wait4``-style, via ``resource``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CIFAR_TEST = ROOT.parent / "shared" / "datasets" / "cifar10-sample" / "test"
VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
             "NUMEXPR_NUM_THREADS")


def run_once(threads: int | None, work: Path) -> tuple[float, float]:
    environment = {k: v for k, v in os.environ.items() if k not in VARIABLES and not k.startswith("CV_DATAOPS_")}
    if threads is not None:
        environment |= {name: str(threads) for name in VARIABLES[:3]}
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    environment["DAGSTER_HOME"] = str(work / "home")
    shutil.rmtree(work / "home", ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "cv-dataops"), "run", "--landing", str(CIFAR_TEST),
                          "--data-root", str(data)], env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 3):  # 3: a non-blocking check failed, the run itself completed
        sys.exit(f"cv-dataops run failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not CIFAR_TEST.exists():
        sys.exit(f"the CIFAR-10 sample is absent ({CIFAR_TEST})")
    cores = os.cpu_count() or 1
    results: dict[str, list[tuple[float, float]]] = {"one per process (cv-dataops)": [],
                                                     f"{cores} per process (libraries' default)": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for name, threads in zip(results, (None, cores), strict=True):
                results[name].append(run_once(threads, Path(folder)))
                print(name, results[name][-1], file=sys.stderr)
    rows = ["| native threads | wall s (each run) | CPU s (each run) |", "|---|---|---|"]
    for name, runs in results.items():
        rows.append(f"| {name} | {', '.join(f'{w:.1f}' for w, _ in runs)} | {', '.join(f'{c:.1f}' for _, c in runs)} |")
    one, many = (min(w for w, _ in runs) for runs in results.values())
    body = "\n".join([
        f"`cv-dataops run` over the CIFAR-10 sample's test split (1,000 photos, 32x32), a fresh data root each run, "
        f"{cores} cores, the two settings alternating. Best wall time: {one:.1f} s with one thread per process "
        f"against {many:.1f} s with the libraries' default ({many / one:.1f}x). The runs are the whole pipeline "
        "(ingest, quality, the embedder's fit and embeddings, duplicates, scenarios, curation, labels, drift).",
        "", *rows])
    if args.no_write:
        print(body)
    else:
        update_section("threads", "Native threads per process: the whole run (issue 13)", body)


if __name__ == "__main__":
    main()
