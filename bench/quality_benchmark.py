"""Quality and duplicates: accuracy and speed against CleanVision, in one run, on the same files and cores.

    python bench/quality_benchmark.py accuracy --reference-python /path/to/venv-with-cleanvision/bin/python
    python bench/quality_benchmark.py speed --reference-python ... --workers 2 --count 400
    python bench/quality_benchmark.py memory --reference-python - --sizes 200 800 3200

`bench/setup_reference.sh` makes that reference environment (CleanVision from PyPI in its own venv, so its pins never
touch ours). Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quality_dataset import (  # noqa: E402
    CIFAR,
    ISSUES,
    build,
    cifar_photos,
    skimage_photos,
    skimage_tiles,
)
from report import update_section  # noqa: E402

from cv_dataops.duplicates.index import DuplicateSettings, find_pairs, group_duplicates  # noqa: E402
from cv_dataops.quality.issues.odd_size import odd_size_scores  # noqa: E402
from cv_dataops.quality.measure import (  # noqa: E402
    QualityThresholds,
    flag_issues,
    measure_stream,
)


def run_ours(paths: list[str], workers: int) -> dict:
    """Quality + duplicates over files, as the pipeline does it, timed end to end."""
    start = time.perf_counter()
    rows = []
    for path, result in measure_stream(((p, p) for p in paths), workers=workers):
        if isinstance(result, Exception):
            raise result
        rows.append({"image_id": path, **result})
    frame = pd.DataFrame(rows)
    frame["odd_size_score"] = odd_size_scores(frame.width.to_numpy(), frame.height.to_numpy())
    for name, values in flag_issues(frame, QualityThresholds()).items():
        frame[name] = values
    pairs = find_pairs(frame, frame, DuplicateSettings())
    groups = group_duplicates(pairs, frame)
    seconds = time.perf_counter() - start
    flags = {issue: list(frame.image_id[frame[f"is_{issue}"]]) for issue in ISSUES}
    sets = [list(members.image_id) for _, members in groups.groupby("group_id")] if len(groups) else []
    exact = {tuple(sorted((p.a, p.b))) for p in pairs if p.kind == "exact"}
    return {"seconds": seconds, "flags": flags, "groups": sets, "exact_pairs": exact}


def run_cleanvision(python: str, paths: list[str], workers: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        listing, out = Path(work) / "files.txt", Path(work) / "out.json"
        listing.write_text("\n".join(paths))
        subprocess.run([python, str(Path(__file__).with_name("cleanvision_runner.py")), str(listing), str(out),
                        str(workers)], check=True, capture_output=True)
        result = json.loads(out.read_text())
    exact_sets = result["sets"]["exact_duplicates"]
    exact = {tuple(sorted(pair)) for group in exact_sets for pair in itertools.combinations(group, 2)}
    return {"seconds": result["seconds"], "flags": result["flags"],
            "groups": exact_sets + result["sets"]["near_duplicates"], "exact_pairs": exact}


def _pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(pair)) for group in groups for pair in itertools.combinations(group, 2)}


def _prf(predicted: set, truth: set) -> tuple[float, float, float]:
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score(result: dict, samples, directory: Path) -> dict[str, tuple[float, float, float]]:
    path = {s.name: str(directory / s.name) for s in samples}
    scores = {}
    for issue in ISSUES:
        truth = {path[s.name] for s in samples if issue in s.issues}
        scores[issue] = _prf(set(result["flags"].get(issue, [])), truth)
    true_groups: dict[str, list[str]] = {}
    for s in samples:
        if s.duplicate_of:
            true_groups.setdefault(path[s.duplicate_of], [path[s.duplicate_of]]).append(path[s.name])
    true_exact = {tuple(sorted((path[s.name], path[s.duplicate_of]))) for s in samples if s.duplicate_kind == "exact"}
    true_near = _pairs(list(true_groups.values())) - true_exact
    found = _pairs(result["groups"])
    scores["exact duplicates"] = _prf(result["exact_pairs"], true_exact)
    scores["near duplicates"] = _prf(found - result["exact_pairs"], true_near)
    return scores


def accuracy(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="cv-dataops-quality-bench-"))
    sets = {"photo tiles 128x96 (scikit-image and scikit-learn sample photos)": (root / "skimage", skimage_tiles(args.photos))}
    if (CIFAR / "test").is_dir():
        sets["CIFAR-10 sample 32x32"] = (root / "cifar", cifar_photos(args.photos))
    lines = []
    for title, (directory, photos) in sets.items():
        samples = build(directory, photos, directory.name[:2])
        paths = sorted(str(directory / s.name) for s in samples)
        ours = score(run_ours(paths, args.workers), samples, directory)
        reference = score(run_cleanvision(args.reference_python, paths, args.workers), samples, directory)
        lines += [f"### {title}: {len(samples)} files ({sum(1 for s in samples if s.issues)} with an injected issue, "
                  f"{sum(1 for s in samples if s.duplicate_of)} duplicates)", "",
                  "| issue | cv-dataops P / R / F1 | CleanVision P / R / F1 | F1 at least CleanVision's |",
                  "|---|---|---|---|"]
        for issue in ours:
            a, b = ours[issue], reference[issue]
            lines.append(f"| {issue} | {a[0]:.2f} / {a[1]:.2f} / **{a[2]:.2f}** | {b[0]:.2f} / {b[1]:.2f} / "
                         f"**{b[2]:.2f}** | {'yes' if a[2] >= b[2] - 1e-9 else 'NO'} |")
        lines.append("")
    lines.append("Issues injected at three strengths each (see `bench/quality_dataset.py`); near duplicates are a "
                 "half-size resize, JPEG quality 40, a 5% crop, +20% brightness and +50% saturation. Both tools run "
                 f"with their default thresholds and {args.workers} workers on the same files.")
    update_section("quality-accuracy", "Quality and duplicates: accuracy against CleanVision", "\n".join(lines))


def _decode(path: str) -> int:
    with Image.open(path) as image:
        return image.convert("RGB").size[0]


def speed(args) -> None:
    directory = Path(tempfile.gettempdir()) / f"cv-dataops-speed-{args.count}"
    if len(list(directory.glob("*.jpg"))) != args.count:
        directory.mkdir(parents=True, exist_ok=True)
        for index, photo in enumerate(skimage_photos(args.count, seed=7, size=(1024, 768))):
            photo.save(directory / f"photo_{index:04d}.jpg", "JPEG", quality=90)
    paths = sorted(str(p) for p in directory.glob("*.jpg"))
    times = {"decode": [], "ours": [], "cleanvision": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(_decode, paths, chunksize=8))
        times["decode"].append(time.perf_counter() - start)
        times["ours"].append(run_ours(paths, args.workers)["seconds"])
        times["cleanvision"].append(run_cleanvision(args.reference_python, paths, args.workers)["seconds"])
    median = {name: statistics.median(values) for name, values in times.items()}
    rate = {name: len(paths) / seconds for name, seconds in median.items()}
    body = "\n".join([
        f"{len(paths)} JPEGs of 1024x768 (quality 90, cut from scikit-image's photos), {args.workers} workers, "
        f"median of {args.repeats} alternating runs.", "",
        "| what | seconds | images/s |", "|---|---|---|",
        f"| plain full-size decode (Pillow, the floor) | {median['decode']:.2f} | {rate['decode']:.0f} |",
        f"| cv-dataops quality + duplicates | {median['ours']:.2f} | {rate['ours']:.0f} |",
        f"| CleanVision `find_issues` (all default issue types) | {median['cleanvision']:.2f} | "
        f"{rate['cleanvision']:.0f} |", "",
        f"**Speed-up over CleanVision: {median['cleanvision'] / median['ours']:.1f}x** (goal: >= 10x); "
        f"all of cv-dataops's metrics and hashes take {median['ours'] / median['decode']:.2f}x the time of merely decoding the files at full size: JPEGs are decoded at reduced size in the DCT domain (Pillow draft mode)."])
    update_section("quality-speed", "Quality and duplicates: speed against CleanVision", body)


def _stream_peak(paths: list[str], workers: int) -> tuple[float, float, float]:
    """(seconds, tracemalloc peak MB in this process, peak RSS MB of the worker processes) for one streaming pass."""
    import resource
    import tracemalloc

    tracemalloc.start()
    start = time.perf_counter()
    for _, result in measure_stream(((p, p) for p in paths), workers=workers):
        if isinstance(result, Exception):
            raise result
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def memory(args) -> None:
    """Streaming: memory must not grow with the number of images, only time."""
    directory = Path(tempfile.gettempdir()) / "cv-dataops-memory"
    if len(list(directory.glob("*.jpg"))) != 100:
        directory.mkdir(parents=True, exist_ok=True)
        for index, photo in enumerate(skimage_photos(100, seed=3, size=(1024, 768))):
            photo.save(directory / f"photo_{index:03d}.jpg", "JPEG", quality=90)
    rows = []
    for count in args.sizes:  # each size in a fresh process, so peaks do not carry over
        output = subprocess.run([sys.executable, __file__, "_memory-one", "--reference-python", "-", "--workers",
                                 str(args.workers), "--count", str(count)], check=True, capture_output=True,
                                text=True, env={**__import__("os").environ, "CV_DATAOPS_MEMORY_FILES": str(directory)})
        seconds, peak, workers_rss = json.loads(output.stdout.strip().splitlines()[-1])
        rows.append(f"| {count:,} | {seconds:.1f} | {count / seconds:.0f} | {peak:.1f} | {workers_rss:.0f} |")
    update_section("quality-memory", "Quality: memory while streaming a batch", "\n".join([
        f"1024x768 JPEGs (100 distinct files, repeated to the batch size), {args.workers} workers, each size in a "
        "fresh process.", "",
        "| images in the batch | seconds | images/s | peak traced memory, main process (MB) | "
        "peak RSS of a worker (MB) |", "|---|---|---|---|---|", *rows, "",
        "The main process holds a bounded window of images in flight (`measure_stream`'s `max_in_flight`), so "
        "its memory stays flat as the batch grows."]))


def _memory_one(args) -> None:
    directory = Path(__import__("os").environ["CV_DATAOPS_MEMORY_FILES"])
    files = sorted(str(p) for p in directory.glob("*.jpg"))
    paths = [files[i % len(files)] for i in range(args.count)]
    print(json.dumps(_stream_peak(paths, args.workers)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("accuracy", "speed", "memory", "_memory-one"))
    parser.add_argument("--reference-python", required=True, help="a Python with cleanvision installed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--photos", type=int, default=240, help="accuracy: base photos per set")
    parser.add_argument("--count", type=int, default=400, help="speed: number of 1024x768 JPEGs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 800, 3200], help="memory: batch sizes")
    args = parser.parse_args()
    {"accuracy": accuracy, "speed": speed, "memory": memory, "_memory-one": _memory_one}[args.what](args)


if __name__ == "__main__":
    main()
