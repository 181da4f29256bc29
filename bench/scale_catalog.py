"""What one `cv-dataops run` adding a 3,000-image batch costs as the catalog grows to 100,000 images (issue 13).

A real data root, built the way a user builds one: synthetic 32x32 JPEGs (each distinct: coloured 1/f noise, the
spectrum of natural images, from a seeded generator) are landed in batches and each batch goes through the whole
command, ``cv-dataops run --landing L --data-root D --labels none`` (ingest, quality, embeddings, duplicates,
scenarios, curation, drift, the labels assets and every check). The catalog grows in ``--step`` images at a time
(one run each, not measured as "a batch added"); at each size in ``--sizes`` a batch of ``--added`` images is
landed and that run is measured: wall and CPU seconds of the process tree, its peak RSS (wait4's rusage, the
CLI's process and every worker it waited for) and each step's seconds from the run's event log. The built-in
embedder is fitted by the first run (its time is reported apart). One run per size on a shared 2-core machine.

Usage: python bench/scale_catalog.py [--sizes 25000 50000 100000] [--step 25000] [--added 3000] [--write]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
sys.path.insert(0, str(HERE))

from report import update_section  # noqa: E402

SIDE = 32


def synthetic_jpeg(index: int) -> bytes:
    """A distinct 32x32 colour image with a 1/f amplitude spectrum (seeded by ``index``)."""
    rng = np.random.default_rng(index)
    fy, fx = np.meshgrid(np.fft.fftfreq(SIDE), np.fft.fftfreq(SIDE), indexing="ij")
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / SIDE) ** rng.uniform(0.9, 1.4)
    channels = []
    base = np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.random((SIDE, SIDE)))).real
    for _ in range(3):  # correlated channels, as in photographs
        own = np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.random((SIDE, SIDE)))).real
        channels.append(0.7 * base + 0.3 * own)
    pixels = np.stack(channels, axis=-1)
    pixels = (pixels - pixels.mean()) / (pixels.std() + 1e-9)
    pixels = np.clip(128 + rng.uniform(25, 60) * pixels + rng.uniform(-40, 40, size=3), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def land(landing: Path, batch: int, start: int, count: int) -> None:
    folder = landing / f"batch-{batch:03d}"
    folder.mkdir(parents=True)
    for index in range(start, start + count):
        (folder / f"{index:07d}.jpg").write_bytes(synthetic_jpeg(index))


def run(landing: Path, data_root: Path, home: Path) -> dict:
    """One ``cv-dataops run``: wall s, CPU s and peak RSS (MB) of its process tree, and its steps' seconds."""
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("CV_DATAOPS_DATA_ROOT", None)
    before = set(steps_per_run(home))
    command = [str(REPOSITORY / ".venv" / "bin" / "cv-dataops"), "run", "--landing", str(landing),
               "--data-root", str(data_root), "--labels", "none"]
    start = time.perf_counter()
    with open(home / "last-run.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):  # 3: an ERROR check failed (the command still ran everything)
        raise SystemExit(f"cv-dataops run failed ({code}): see {home / 'last-run.log'}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
            "steps": steps_of_new_runs(steps_per_run(home), before), "exit": code}


def steps_of_new_runs(runs: dict[str, dict[str, float]], before: set[str]) -> dict[str, float]:
    steps: dict[str, float] = {}
    for run_id, seconds in runs.items():
        if run_id not in before:
            for step, value in seconds.items():
                steps[step] = steps.get(step, 0.0) + value
    return steps


def steps_per_run(home: Path) -> dict[str, dict[str, float]]:
    """Every run of the instance: its id -> seconds per step (Dagster's step start to step end)."""
    script = ("import json\n"
              "from dagster import DagsterInstance\n"
              "instance = DagsterInstance.get()\n"
              "print(json.dumps({r.dagster_run.run_id: {s.step_key: (s.end_time or 0) - (s.start_time or 0)\n"
              "    for s in instance.get_run_step_stats(r.dagster_run.run_id)} for r in instance.get_run_records()}))\n")
    done = subprocess.run([str(REPOSITORY / ".venv" / "bin" / "python"), "-c", script],
                          env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(fit: dict, measured: list[dict], building: list[dict], added: int) -> str:
    names = ["raw_images", "image_quality", "image_embeddings", "image_quality_quality_expectations",
             "drift_report", "image_duplicates", "neighbour_index", "scenarios", "curated_dataset",
             "curated_dataset_curated_no_leakage", "review_queue", "label_issues", "data_health"]
    lines = [(__doc__ or "").split("\n\n")[1].replace("\n", " "), "",
             f"Adding {added:,} images to a catalog of n (the run that lands them):", "",
             "| catalog before | run s | CPU s | CPU min | peak RSS MB | " + " | ".join(
                 f"`{n.replace('image_quality_', '').replace('curated_dataset_', '')}` s" for n in names)
             + " | other steps s |",
             "|---|---|---|---|---|" + "---|" * (len(names) + 1)]
    for m in measured:
        steps = m["steps"]
        other = sum(v for k, v in steps.items() if k not in names)
        lines.append(f"| {m['before']:,} | {m['wall']:.1f} | {m['cpu']:.1f} | {m['cpu'] / 60:.2f} | "
                     f"{m['rss_mb']:.0f} | " + " | ".join(f"{steps.get(n, 0):.2f}" for n in names)
                     + f" | {other:.2f} |")
    lines += ["", "The runs that grew the catalog (each lands `--step` images; the first fits the embedder):", "",
              "| catalog before | images landed | run s | CPU s | peak RSS MB |", "|---|---|---|---|---|"]
    for b in [fit, *building]:
        lines.append(f"| {b['before']:,} | {b['landed']:,} | {b['wall']:.1f} | {b['cpu']:.1f} | {b['rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[25_000, 50_000, 100_000])
    parser.add_argument("--step", type=int, default=25_000)
    parser.add_argument("--added", type=int, default=3_000)
    parser.add_argument("--work", default=None, help="folder for the landing zone, data root and instance")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="scale-catalog-"))
    landing, data_root, home = work / "landing", work / "data", work / "home"
    home.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    images, batch = 0, 0
    fit, building, measured = None, [], []
    for size in sorted(args.sizes):
        while images < size:
            count = min(args.step, size - images)
            land(landing, batch, images, count)
            result = run(landing, data_root, home)
            entry = {**result, "before": images, "landed": count}
            if fit is None:
                fit = entry
            else:
                building.append(entry)
            print(json.dumps({k: v for k, v in entry.items() if k != "steps"}), flush=True)
            images, batch = images + count, batch + 1
        land(landing, batch, images, args.added)
        result = {**run(landing, data_root, home), "before": images, "landed": args.added}
        measured.append(result)
        print(json.dumps(result), flush=True)
        images, batch = images + args.added, batch + 1
    body = markdown(fit, measured, building, args.added)
    body += f"\n\nWhole benchmark: {time.perf_counter() - started:.0f} s; work folder {work}."
    if args.write:
        update_section("scale-catalog", "Adding a batch as the catalog grows to 100,000 images (issue 13)", body)
    else:
        print(body)


if __name__ == "__main__":
    main()
