"""The whole pipeline end to end, as a user runs it, against CleanVision and fastdup in the same run (issue 13).

What a user types: ``cv-dataops run --landing L --data-root D --labels none`` on a fresh data root (the whole
process: ingest, quality, embeddings, duplicates, scenarios, curation, drift, the labels assets and every check),
timed from outside. The built-in embedder's fit (once per catalog) is reported apart: a first run on a scratch data
root fits it, and each timed run starts from a fresh data root holding only that fitted model. Beside it, in the
same run and alternating: CleanVision 0.3.7's ``Imagelab(filepaths).find_issues(n_jobs=2)`` (bench/.reference) and
fastdup 2.54's ``create(work_dir, input_dir).run()`` with its defaults (bench/.fastdup), each as a process. Wall
seconds and the CPU seconds of the process tree (children's rusage). The table gives each tool's time relative to
CleanVision's (below 1: faster than CleanVision). Sets as in quality_end_to_end.py: 1024x768 JPEGs and PNGs
(scikit-image photographs, cropped and resized, each file distinct) and CIFAR-10 sample JPEGs (32x32).

Set up the references: bench/setup_reference.sh (CleanVision) and
``python3 -m venv bench/.fastdup && bench/.fastdup/bin/pip install fastdup==2.54``.

Usage: python bench/pipeline_end_to_end.py [--counts jpeg=2000 png=2000 cifar=4000] [--repeats 1] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
sys.path.insert(0, str(HERE))

from quality_end_to_end import LABELS, write_set  # noqa: E402
from report import update_section  # noqa: E402

CLEANVISION = HERE / ".reference" / "bin" / "python"
FASTDUP = HERE / ".fastdup" / "bin" / "python"
MODEL = "models/patch-kmeans.npz"


def timed(command: list[str], env: dict | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (the process and its descendants) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done


def run_ours(landing: Path, work: Path, model: Path | None) -> tuple[float, float]:
    data_root, home = work / "data", work / "home"
    for folder in (data_root, home):
        shutil.rmtree(folder, ignore_errors=True)
    home.mkdir(parents=True)
    if model is not None:
        (data_root / "models").mkdir(parents=True)
        shutil.copy(model, data_root / MODEL)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("CV_DATAOPS_DATA_ROOT", None)
    wall, cpu, done = timed([str(REPOSITORY / ".venv" / "bin" / "cv-dataops"), "run", "--landing", str(landing),
                             "--data-root", str(data_root), "--labels", "none"], env)
    if done.returncode not in (0, 3):  # 3: an ERROR check failed (the command still ran everything)
        raise SystemExit(f"cv-dataops run failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall, cpu


def run_cleanvision(landing: Path, work: Path) -> tuple[float, float]:
    listing = work / "files.txt"
    listing.write_text("\n".join(sorted(str(p) for p in landing.iterdir())))
    wall, cpu, done = timed([str(CLEANVISION), str(HERE / "cleanvision_runner.py"), str(listing),
                             str(work / "cleanvision.json"), "2"])
    if done.returncode:
        raise SystemExit(f"CleanVision failed:\n{done.stderr[-2000:]}")
    return wall, cpu


def run_fastdup(landing: Path, work: Path) -> tuple[float, float]:
    shutil.rmtree(work / "fastdup", ignore_errors=True)
    wall, cpu, done = timed([str(FASTDUP), str(HERE / "fastdup_runner.py"), str(landing), str(work / "fastdup"),
                             str(work / "fastdup.json")])
    if done.returncode:
        raise SystemExit(f"fastdup failed:\n{done.stderr[-2000:]}")
    return wall, cpu


def measure(name: str, count: int, repeats: int, work: Path) -> dict | None:
    landing = work / "landing"
    written = write_set(name, count, landing)
    if not written:
        return None
    fit_wall, fit_cpu = run_ours(landing, work / "fit", None)
    model = work / "patch-kmeans.npz"
    shutil.copy(work / "fit" / "data" / MODEL, model)
    runs = {"cv-dataops": [], "CleanVision": [], "fastdup": []}
    for _ in range(repeats):  # alternate, so all three see the same machine load
        runs["CleanVision"].append(run_cleanvision(landing, work))
        runs["fastdup"].append(run_fastdup(landing, work))
        runs["cv-dataops"].append(run_ours(landing, work / "ours", model))
    return {"set": name, "files": written, "fit": (fit_wall, fit_cpu),
            "median": {tool: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
                       for tool, r in runs.items()},
            "all": {tool: [round(w, 1) for w, _ in r] for tool, r in runs.items()}}


def markdown(results: list[dict]) -> str:
    lines = [(__doc__ or "").split("\n\n")[1].replace("\n", " "), "",
             "| set | files | cv-dataops run s (CPU s) | CleanVision s (CPU s) | fastdup s (CPU s) | "
             "cv-dataops / CleanVision | fastdup / CleanVision | cv-dataops / fastdup | embedder fit, once: "
             "first run s (CPU s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["median"]
        ours, clean, fast = m["cv-dataops"], m["CleanVision"], m["fastdup"]
        lines.append(f"| {LABELS[r['set']]} | {r['files']} | {ours[0]:.1f} ({ours[1]:.1f}) | {clean[0]:.1f} "
                     f"({clean[1]:.1f}) | {fast[0]:.1f} ({fast[1]:.1f}) | {ours[0] / clean[0]:.2f}x | "
                     f"{fast[0] / clean[0]:.2f}x | {ours[0] / fast[0]:.2f}x | {r['fit'][0]:.1f} ({r['fit'][1]:.1f}) |")
    lines += ["", "Ratios are of wall seconds (medians); below 1 the left tool is faster. Every run (wall s): "
              + "; ".join(f"{LABELS[r['set']]}: " + ", ".join(f"{tool} {times}" for tool, times in r["all"].items())
                          for r in results)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", nargs="+", default=["jpeg=2000", "png=2000", "cifar=4000"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    for tool in (CLEANVISION, FASTDUP):
        if not tool.exists():
            raise SystemExit(f"{tool} is missing: see this script's docstring to set up the reference tools")
    work = Path(tempfile.mkdtemp(prefix="pipeline-e2e-"))
    results = []
    try:
        for item in args.counts:
            name, count = item.split("=")
            result = measure(name, int(count), args.repeats, work / name)
            if result:
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(results)
    print(text)
    if args.write:
        update_section("pipeline-end-to-end", "The whole pipeline end to end against CleanVision and fastdup "
                       "(issue 13)", text)


if __name__ == "__main__":
    main()
