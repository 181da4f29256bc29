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
import os
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
    HELD_OUT_GRAY_SOURCES,
    HELD_OUT_SOURCES,
    ISSUES,
    build,
    cifar_photos,
    digit_images,
    photo_crops,
    photos_needed,
    skimage_photos,
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
    flags["unusable"] = list(frame.image_id[frame.is_unusable])
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


def score(result: dict, samples, directory: Path) -> dict:
    """Per issue (P, R, F1) against the injected ground truth; grayscale also split by kind (recall); the share of
    clean photos flagged per issue; duplicates."""
    path = {s.name: str(directory / s.name) for s in samples}
    flags = {name: set(values) for name, values in result["flags"].items()}
    scores: dict = {"prf": {}, "clean_flagged": {}, "gray_recall": {}}
    issue_samples = [s for s in samples if not s.duplicate_of]
    for issue in ISSUES:
        truth = {path[s.name] for s in issue_samples if issue in s.issues}
        predicted = flags.get(issue, set()) & {path[s.name] for s in issue_samples}
        scores["prf"][issue] = _prf(predicted, truth)
    clean = [path[s.name] for s in issue_samples if not (s.issues - {"grayscale"} if s.strength == "digit"
                                                          else s.issues)]
    scores["clean"] = len(clean)
    for issue in (*ISSUES, "unusable"):
        if issue in flags and not (issue == "grayscale" and any(s.strength == "digit" for s in samples)):
            scores["clean_flagged"][issue] = sum(p in flags[issue] for p in clean) / max(1, len(clean))
    for kind in ("single-channel", "rgb-equal"):
        members = [path[s.name] for s in issue_samples if s.grayscale_kind == kind]
        if members:
            scores["gray_recall"][kind] = (sum(p in flags.get("grayscale", set()) for p in members), len(members))
    if "unusable" in flags:
        truly = [path[s.name] for s in issue_samples if s.unusable]
        flag_level = [path[s.name] for s in issue_samples
                      if s.issues and not s.unusable and s.strength not in ("photo", "digit")]
        scores["unusable"] = (sum(p in flags["unusable"] for p in truly), len(truly),
                              sum(p in flags["unusable"] for p in flag_level), len(flag_level))
        by_kind: dict[str, list[int]] = {}
        for s in issue_samples:
            if s.unusable:
                counts = by_kind.setdefault(s.unusable_kind, [0, 0])
                counts[0] += path[s.name] in flags["unusable"]
                counts[1] += 1
        scores["unusable_by_kind"] = by_kind
    true_groups: dict[str, list[str]] = {}
    for s in samples:
        if s.duplicate_of:
            true_groups.setdefault(path[s.duplicate_of], [path[s.duplicate_of]]).append(path[s.name])
    true_exact = {tuple(sorted((path[s.name], path[s.duplicate_of]))) for s in samples if s.duplicate_kind == "exact"}
    true_near = _pairs(list(true_groups.values())) - true_exact
    found = _pairs(result["groups"])
    scores["prf"]["exact duplicates"] = _prf(result["exact_pairs"], true_exact)
    scores["prf"]["near duplicates"] = _prf(found - result["exact_pairs"], true_near)
    return scores


CLEAN, PER_ISSUE = 120, 12   # clean photos per set (twice that for CIFAR-10), injected images per issue type


def held_out_sets(root: Path) -> list[tuple[str, Path, list]]:
    """The held-out sets: none of these photographs (or CIFAR-10 test, or digits) was seen by
    bench/fit_quality_thresholds.py."""
    sets = []
    for side in (1024, 256, 64):
        directory = root / f"photos_{side}"
        photos = photo_crops(HELD_OUT_SOURCES, photos_needed(CLEAN, PER_ISSUE), side, seed=1000 + side)
        gray = [] if side == 64 else [crop for name in HELD_OUT_GRAY_SOURCES
                                      for crop in photo_crops((name,), 1, side, seed=side + 7)]
        sets.append((f"held-out photos, long side ~{side} px", directory,
                     build(directory, photos, f"h{side}", clean=CLEAN, per_issue=PER_ISSUE, gray_photos=gray)))
    if (CIFAR / "test").is_dir():
        directory = root / "cifar"
        sets.append(("CIFAR-10 test, 32x32", directory,
                     build(directory, cifar_photos(photos_needed(2 * CLEAN, PER_ISSUE), "test"), "ct",
                           clean=2 * CLEAN, per_issue=PER_ISSUE)))
    directory = root / "digits"
    samples = build(directory, digit_images(photos_needed(CLEAN, PER_ISSUE)), "dg", clean=CLEAN, per_issue=PER_ISSUE)
    for sample in samples:   # every digit file is single-channel: all of them are grayscale by construction
        if not sample.duplicate_of:
            sample.issues = sample.issues | {"grayscale"}
            sample.grayscale_kind = sample.grayscale_kind or "single-channel"
            sample.strength = "digit" if sample.issues == {"grayscale"} else sample.strength
    sets.append(("scikit-learn digits, 64x64 single-channel", directory, samples))
    return sets


def _cell(values: tuple[float, float, float]) -> str:
    return f"{values[0]:.2f} / {values[1]:.2f} / **{values[2]:.2f}**"


def _verdict(ours: float, theirs: float) -> str:
    if abs(ours - theirs) < 0.005:
        return "tie"
    return "better" if ours > theirs else "**worse**"


def accuracy(args) -> None:
    root = Path(args.work or tempfile.mkdtemp(prefix="cv-dataops-quality-bench-"))
    lines = ["Held-out sets only (`bench/quality_dataset.py`): photographs, CIFAR-10 images and digits that "
             "`bench/fit_quality_thresholds.py` never saw. Ground truth comes from the transforms, never from a "
             "score: each issue is injected with a known parameter (blur: a Gaussian or motion blur of 1%, 2% or "
             "4% of the longer side, at least 1.5 px); clean photos are plain, soft (Gaussian of 0.25% of the "
             "side), upscaled (bicubic 2x, 1.5x under 256 px) or heavily compressed (JPEG quality 15). Both tools "
             f"run with their default thresholds and {args.workers} workers on the same files. A difference in "
             "F1 under 0.005 is a tie.", ""]
    summary = {}
    for title, directory, samples in held_out_sets(root):
        paths = sorted(str(directory / s.name) for s in samples)
        ours = score(run_ours(paths, args.workers), samples, directory)
        theirs = score(run_cleanvision(args.reference_python, paths, args.workers), samples, directory)
        summary[title] = (ours, theirs, samples, directory)
        injected = sum(1 for s in samples if s.issues and s.strength != "digit")
        lines += [f"### {title}: {len(samples)} files ({ours['clean']} clean, {injected} with an injected issue, "
                  f"{sum(1 for s in samples if s.duplicate_of)} duplicates)", "",
                  "| issue | cv-dataops P / R / F1 | CleanVision P / R / F1 | F1 vs CleanVision | F1 >= 0.8 |",
                  "|---|---|---|---|---|"]
        for issue, values in ours["prf"].items():
            other = theirs["prf"][issue]
            lines.append(f"| {issue} | {_cell(values)} | {_cell(other)} | {_verdict(values[2], other[2])} | "
                         f"{'yes' if values[2] >= 0.8 else '**no**'} |")
        gray = "; ".join(f"{kind} files {hit}/{n} (CleanVision {theirs['gray_recall'][kind][0]}/{n})"
                         for kind, (hit, n) in ours["gray_recall"].items())
        lines += ["", f"Grayscale found, by kind: {gray}. "
                  "CleanVision flags only single-channel files, by definition."]
        flagged = ", ".join(f"{issue} {rate:.0%}" + (f" ({theirs['clean_flagged'][issue]:.0%})"
                                                    if issue in theirs["clean_flagged"] else "")
                            for issue, rate in ours["clean_flagged"].items())
        lines.append(f"Clean photos flagged, cv-dataops (CleanVision): {flagged}.")
        hit, n, wrong, m = ours["unusable"]
        kinds = {"dark": "near-black", "light": "blown out", "low_information": "blank", "blurry": "blurred by 8%"}
        found = ", ".join(f"{kinds[k]} {a}/{b}" for k, (a, b) in ours["unusable_by_kind"].items())
        lines += [f"Unusable (cv-dataops; CleanVision has no such verdict): {hit}/{n} of the unusable injections "
                  f"({found}) and {wrong}/{m} of the flag-level injections are called unusable.", ""]
    lines += ["### Goals on the held-out sets", "", "| set | issue types with F1 >= 0.8 | F1 at least CleanVision's "
              "(ties) | worst clean-photo flag rate (issue) | clean photos unusable |", "|---|---|---|---|---|"]
    for title, (ours, theirs, _, _) in summary.items():
        issues = [i for i in ISSUES if not (i == "grayscale" and title.startswith("scikit-learn digits"))]
        good = sum(ours["prf"][i][2] >= 0.8 for i in issues)
        at_least = sum(ours["prf"][i][2] >= theirs["prf"][i][2] - 0.005 for i in issues)
        ties = sum(abs(ours["prf"][i][2] - theirs["prf"][i][2]) < 0.005 for i in issues)
        rates = {i: r for i, r in ours["clean_flagged"].items() if i != "unusable"}
        worst = max(rates, key=rates.get)
        lines.append(f"| {title} | {good}/{len(issues)} | {at_least}/{len(issues)} ({ties} ties) | "
                     f"{rates[worst]:.0%} ({worst}) | {ours['clean_flagged']['unusable']:.0%} |")
    flagged_count: dict[str, float] = {}
    clean_count: dict[str, int] = {}
    for ours, _, _, _ in summary.values():
        for issue, rate in ours["clean_flagged"].items():
            flagged_count[issue] = flagged_count.get(issue, 0) + rate * ours["clean"]
            clean_count[issue] = clean_count.get(issue, 0) + ours["clean"]
    rates = ", ".join(f"{issue} {round(n)}/{clean_count[issue]} ({n / clean_count[issue]:.1%})"
                      for issue, n in flagged_count.items())
    lines += ["", f"All held-out clean photos pooled, flagged by cv-dataops: {rates} (grayscale not counted on "
              "digits, which are gray by construction). Goals: at most 5% for any one issue, at most 2% unusable."]
    lines += ["", ('History, so the figures can be judged: these constants are the second fit. The first (a fit set of '
                   '60 clean photos and 9 injections per issue type per set, instead of 90 and 18) was scored on these '
                   'same held-out sets once, and differed in: CIFAR-10 blurry F1 0.74 (now 0.85), 64 px dark 0.96 (now '
                   "0.90, below CleanVision's 0.94), digits dark 0.83 (now 0.75), digits clean photos flagged "
                   'low_information 7% (now 11%). The second fit was kept because it rests on twice the fit data, not '
                   'for its held-out figures, which are better in some rows and worse in others.')]
    lines += ["", "Not met, said plainly: where a row above says **no** (F1 under 0.8) or **worse**, the goal is not met "
              "on that set. The duplicates rows use the duplicate stage's settings as they are (another part of "
              "issue 10) and are here to stay honest, with two caveats: the photo sets are crops of six "
              "photographs, so overlapping crops are real near duplicates that the ground truth does not list "
              "(near-duplicate precision there understates); and an exact copy is a PNG of a decoded JPEG, which "
              "the pixel hash of JPEG draft-mode decoding at 1024 px does not see as identical.",
              "", "Commands: `python bench/fit_quality_thresholds.py` (fits and prints the constants, on the fit "
              "half only), then `python bench/quality_benchmark.py accuracy --reference-python "
              "\"$(bench/setup_reference.sh)\"` (CleanVision 0.3.7 in its own venv)."]
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
    load_before = os.getloadavg()[0]
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
        f"median of {args.repeats} alternating runs; machine load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after (2 cores, shared: other work slows every row, the ratio less so).", "",
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
    parser.add_argument("--work", default=None, help="accuracy: where to write the held-out files (default: temp)")
    parser.add_argument("--count", type=int, default=400, help="speed: number of 1024x768 JPEGs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 800, 3200], help="memory: batch sizes")
    args = parser.parse_args()
    {"accuracy": accuracy, "speed": speed, "memory": memory, "_memory-one": _memory_one}[args.what](args)


if __name__ == "__main__":
    main()
