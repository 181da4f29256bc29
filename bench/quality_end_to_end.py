"""The quality stage end to end, as a user runs it, against CleanVision in the same run.

What a user types: ``cv-dataops run --landing L --data-root D --select image_quality`` on a fresh data root (the
whole process: interpreter start, planning, ingest and its checks, quality and its checks), timed from outside.
Beside it, CleanVision's ``Imagelab(filepaths).find_issues(n_jobs=2)`` in its own virtual environment
(``bench/setup_reference.sh``), timed both as its process and as the library call it reports. The two alternate,
``--repeats`` times each, and the table gives medians and the ratio (theirs / ours: above 1 means cv-dataops is
faster). Sets: 1024x768 JPEGs and PNGs (random crops of scikit-image's photographs, resized, each file distinct)
and 32x32 CIFAR-10 sample JPEGs (read in place from ../shared).

Usage: python bench/quality_end_to_end.py --reference-python bench/.reference/bin/python [--count 2000]
       [--repeats 3] [--sets jpeg png cifar] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from decode_cost import cifar_set, photo_set  # noqa: E402  (bench/ is not a package)

SECTION = "quality-end-to-end"


def write_set(name: str, count: int, directory: Path) -> int:
    """Write the set's files into ``directory`` (one folder: no labels); the number written."""
    if name == "cifar":
        files = cifar_set(count)
        if files is None:
            return 0
        suffix = "jpg"
    else:
        files = photo_set(count, "JPEG" if name == "jpeg" else "PNG")
        suffix = "jpg" if name == "jpeg" else "png"
    directory.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(files):
        (directory / f"{index:05d}.{suffix}").write_bytes(data)
    return len(files)


STEPS = ("ingest", "ingest checks", "quality", "GX suite", "other quality checks", "outside the run")


def step_seconds(home: Path, process_seconds: float) -> dict[str, float]:
    """Where the process's time went, from the Dagster event log of its runs: each step's start to its end,
    grouped (ingest = ``raw_images``; GX suite = the ``quality_expectations`` check), and *outside the run* =
    the process's time before its runs' first event and after their last (interpreter start, imports, the fresh
    instance's databases, planning, the summary)."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    groups = dict.fromkeys(STEPS, 0.0)
    spanned = 0.0
    for run in instance.get_runs():
        logs = instance.all_logs(run.run_id)
        spanned += logs[-1].timestamp - logs[0].timestamp
        started = {}
        for entry in logs:
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                started[entry.step_key] = entry.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                key, seconds = entry.step_key, entry.timestamp - started.pop(entry.step_key)
                group = ("ingest" if key == "raw_images" else "ingest checks" if key.startswith("raw_images_")
                         else "quality" if key == "image_quality" else "GX suite" if key.endswith("expectations")
                         else "other quality checks" if key.startswith("image_quality_") else None)
                if group:
                    groups[group] += seconds
    instance.dispose()
    groups["outside the run"] = process_seconds - spanned
    return groups


def run_ours(landing: Path, work: Path) -> dict:
    """One ``cv-dataops run --select image_quality`` on a fresh data root and Dagster home; wall seconds, and
    :func:`step_seconds`."""
    data_root = work / "data"
    shutil.rmtree(data_root, ignore_errors=True)
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("CV_DATAOPS_DATA_ROOT", None)
    command = [str(REPOSITORY / ".venv" / "bin" / "cv-dataops"), "run", "--landing", str(landing), "--data-root",
               str(data_root), "--labels", "none", "--select", "image_quality"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0,):
        raise SystemExit(f"cv-dataops run failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return {"seconds": seconds, "stdout": done.stdout, "steps": step_seconds(home, seconds)}


def run_theirs(python: str, landing: Path, work: Path, jobs: int) -> dict:
    """One CleanVision ``find_issues(n_jobs=jobs)`` in its own process; wall seconds and the library call's."""
    files = sorted(str(p) for p in landing.iterdir())
    listing = work / "files.txt"
    listing.write_text("\n".join(files))
    out = work / "cleanvision.json"
    start = time.perf_counter()
    subprocess.run([python, str(HERE / "cleanvision_runner.py"), str(listing), str(out), str(jobs)], check=True,
                   capture_output=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "call_seconds": json.loads(out.read_text())["seconds"]}


def measure(name: str, count: int, repeats: int, python: str, jobs: int, work: Path) -> dict | None:
    landing = work / "landing"
    written = write_set(name, count, landing)
    if not written:
        return None
    ours, theirs = [], []
    for _ in range(repeats):  # alternate, so both see the same machine load
        theirs.append(run_theirs(python, landing, work, jobs))
        ours.append(run_ours(landing, work))
    median = statistics.median
    return {"set": name, "files": written,
            "ours_seconds": median(r["seconds"] for r in ours),
            "theirs_seconds": median(r["seconds"] for r in theirs),
            "theirs_call_seconds": median(r["call_seconds"] for r in theirs),
            "steps": {name: median(r["steps"][name] for r in ours) for name in STEPS},
            "ours_all": [round(r["seconds"], 2) for r in ours],
            "theirs_all": [round(r["seconds"], 2) for r in theirs]}


LABELS = {"jpeg": "JPEG 1024x768", "png": "PNG 1024x768", "cifar": "CIFAR-10 32x32 JPEG"}


def markdown(results: list[dict], command: str, jobs: int) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"<!-- BEGIN {SECTION} -->", "## Quality end to end: the command against CleanVision", "",
             f"Command: `{command}` ({stamp}, {platform.machine()}, {platform.python_version()})", "",
             "`cv-dataops run --select image_quality` on a fresh data root, timed as a process (interpreter start, "
             "planning, ingest and its checks, quality and its checks) against CleanVision 0.3.7's "
             f"`Imagelab(filepaths).find_issues(n_jobs={jobs})` as a process and as the library call it times "
             "itself; medians of alternating runs. *Ratio* = CleanVision's time / ours (above 1: cv-dataops is "
             "faster).", "",
             "| set | files | cv-dataops run (process) s | CleanVision process s | CleanVision call s | "
             "ratio (process / process) | ratio (their call / our process) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {LABELS[r['set']]} | {r['files']} | {r['ours_seconds']:.1f} | {r['theirs_seconds']:.1f} | "
                     f"{r['theirs_call_seconds']:.1f} | {r['theirs_seconds'] / r['ours_seconds']:.2f}x | "
                     f"{r['theirs_call_seconds'] / r['ours_seconds']:.2f}x |")
    lines += ["", "Where cv-dataops's time went (medians of the runs, seconds, from the Dagster event log: each "
              "step's start to end; *outside the run*: interpreter start, imports, creating the fresh instance's "
              "databases, planning, the summary; the remainder is Dagster's own bookkeeping between steps):", "",
              "| set | " + " | ".join(STEPS) + " | process |", "|---|" + "---|" * (len(STEPS) + 1)]
    for r in results:
        lines.append(f"| {LABELS[r['set']]} | " + " | ".join(f"{r['steps'][name]:.2f}" for name in STEPS)
                     + f" | {r['ours_seconds']:.2f} |")
    lines += ["", "Every run: " + "; ".join(f"{LABELS[r['set']]}: ours {r['ours_all']}, CleanVision "
                                             f"{r['theirs_all']}" for r in results), f"<!-- END {SECTION} -->"]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    doc = REPOSITORY / "docs" / "benchmarks.md"
    current = doc.read_text()
    begin, end = f"<!-- BEGIN {SECTION} -->", f"<!-- END {SECTION} -->"
    if begin in current:
        head, rest = current.split(begin, 1)
        current = head + text.rstrip("\n") + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text
    doc.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-python", required=True, help="CleanVision's Python (bench/setup_reference.sh)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sets", nargs="+", default=["jpeg", "png", "cifar"], choices=sorted(LABELS))
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    parser.add_argument("--keep", help="work directory to keep (default: a temporary one, removed)")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="quality-e2e-"))
    try:
        results = [r for name in args.sets
                   if (r := measure(name, args.count, args.repeats, args.reference_python, args.jobs, work / name))]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    command = "python bench/quality_end_to_end.py " + " ".join(sys.argv[1:])
    text = markdown(results, command, args.jobs)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
