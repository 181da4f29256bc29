"""How adding a batch to the duplicate index scales with the catalog: time and peak memory.

For each catalog size, in a fresh process: a hash-only catalog is synthesised (random 64-bit phash and dhash, random
pixel_hash; 2 % of it near copies and 0.5 % exact copies of other catalog images, whose pairs stand for the pair
table earlier batches left), then a batch of new images (10 % near copies of catalog images with up to 6 bits flipped
in each hash, 2 % exact copies, the rest unrelated) is added the way the pipeline adds it:
``find_pairs(new, catalog + new)`` (build the phash and dhash indexes over everything, query with the new images
only), then ``group_duplicates(earlier pairs + new pairs, quality)``.

Reported per size: the phash index alone (build; the 1,000 queries), ``find_pairs`` and ``group_duplicates`` (best
of ``--repeat`` runs), the share of the catalog each query verifies, the planted pairs found, the peak of
tracemalloc (Python and numpy allocations of adding the batch, in a separate untimed run since tracing slows
allocation) and the process's peak RSS while adding the batch (VmHWM, reset after the synthesis through
/proc/self/clear_refs; it includes the interpreter, pandas and the synthetic catalog).

    .venv/bin/python bench/duplicates_scale.py                        # catalogs of 1,000, 10,000 and 100,000
    .venv/bin/python bench/duplicates_scale.py --catalog 1000 100000 1000000 --classic --brute-force

``--classic`` also times the index with the classic ``m = radius + 1`` substrings; ``--brute-force`` times a
vectorised scan of every new image against every catalog image (the comparison the index avoids).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import update_section  # noqa: E402

from cv_dataops.duplicates.index import (  # noqa: E402
    DuplicatePair,
    DuplicateSettings,
    HammingIndex,
    find_pairs,
    group_duplicates,
    popcount,
)


def hex_ids(rng: np.random.Generator, n: int) -> pd.Series:
    """n random 64-digit hex ids (like SHA-256 digests), as a pandas string column."""
    digits = np.array([f"{i:02x}" for i in range(256)])[rng.integers(0, 256, (n, 32))]  # (n, 32) x "U2"
    return pd.Series(np.ascontiguousarray(digits).view("U64").ravel()).astype(str)


def flip(rng: np.random.Generator, codes: np.ndarray, most: int) -> np.ndarray:
    """Each code with up to ``most`` random bits flipped."""
    out = codes.copy()
    flips = rng.integers(0, most + 1, len(codes))
    for k in range(1, most + 1):
        rows = np.flatnonzero(flips >= k)
        out[rows] ^= np.uint64(1) << rng.integers(0, 64, len(rows)).astype(np.uint64)  # a repeated bit: fewer
    return out


def synthesise(rng: np.random.Generator, n: int, near: float, exact: float, pool: pd.DataFrame | None = None):
    """n hash rows, a share of them near or exact copies of rows of ``pool`` (or of their own other rows).
    Returns the rows and the planted (original position in pool, copy position) pairs."""
    frame = pd.DataFrame({"image_id": hex_ids(rng, n), "pixel_hash": hex_ids(rng, n),
                          "phash": rng.integers(0, 2 ** 64, n, dtype=np.uint64),
                          "dhash": rng.integers(0, 2 ** 64, n, dtype=np.uint64)})
    source = frame if pool is None else pool
    n_near, n_exact = int(n * near), int(n * exact)
    copies = rng.choice(n, n_near + n_exact, replace=False)
    if pool is None:  # copies of rows that are not copies themselves
        originals = rng.choice(np.setdiff1d(np.arange(n), copies), n_near + n_exact)
    else:
        originals = rng.integers(0, len(pool), n_near + n_exact)
    phash, dhash = frame.phash.to_numpy().copy(), frame.dhash.to_numpy().copy()
    pixel = frame.pixel_hash.to_numpy(dtype=object).copy()
    near_rows, exact_rows = copies[:n_near], copies[n_near:]
    phash[near_rows] = flip(rng, source.phash.to_numpy()[originals[:n_near]], 6)
    dhash[near_rows] = flip(rng, source.dhash.to_numpy()[originals[:n_near]], 6)
    phash[exact_rows] = source.phash.to_numpy()[originals[n_near:]]
    dhash[exact_rows] = source.dhash.to_numpy()[originals[n_near:]]
    pixel[exact_rows] = source.pixel_hash.to_numpy(dtype=object)[originals[n_near:]]
    frame = frame.assign(phash=phash, dhash=dhash, pixel_hash=pd.Series(pixel).astype(str))
    return frame, originals, copies


def planted_pairs(source: pd.DataFrame, originals, target: pd.DataFrame, copies) -> list[DuplicatePair]:
    a = source.image_id.to_numpy(dtype=object)[originals]
    b = target.image_id.to_numpy(dtype=object)[copies]
    exact = source.pixel_hash.to_numpy(dtype=object)[originals] == target.pixel_hash.to_numpy(dtype=object)[copies]
    distance = popcount(source.phash.to_numpy()[originals] ^ target.phash.to_numpy()[copies])
    return [DuplicatePair(min(x, y), max(x, y), "exact" if e else "near", 0 if e else int(d))
            for x, y, e, d in zip(a, b, exact, distance)]


def peak_rss_mb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def best_of(repeat: int, function):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3, result


def run_one(n: int, batch: int, seed: int, repeat: int, classic: bool, brute_force: bool) -> list[dict]:
    rng = np.random.default_rng(seed)
    catalog, originals, copies = synthesise(rng, n, near=0.02, exact=0.005)
    previous = planted_pairs(catalog, originals, catalog, copies)  # what earlier batches left in the pair table
    new, originals, copies = synthesise(rng, batch, near=0.10, exact=0.02, pool=catalog)
    expected = {(p.a, p.b) for p in planted_pairs(catalog, originals, new, copies)}
    everything = pd.concat([catalog, new], ignore_index=True)
    quality = pd.DataFrame({"image_id": everything.image_id, "width": 640, "height": 480,
                            "blurry_score": rng.random(len(everything)), "batch_id": ["b0"] * n + ["b1"] * batch})
    settings = DuplicateSettings()
    phash_radius, _ = settings.index_radii()
    modes = [("auto", HammingIndex)]
    if classic:
        modes.append(("classic m=r+1", lambda r: HammingIndex(r, substrings=r + 1)))
    rows = []
    for mode, factory in modes:
        gc.collect()
        rss_reset = reset_peak_rss()
        rss_before = peak_rss_mb()
        built: list[HammingIndex] = []

        def recording(radius, factory=factory):
            built.append(factory(radius))
            return built[-1]

        # the phash index alone: build over everything, query the new images
        def build():
            index = factory(phash_radius)
            index.add(everything.image_id.array, everything.phash.to_numpy())
            index._build()
            return index

        build_ms, index = best_of(repeat, build)
        query_ms, _ = best_of(repeat, lambda: index.query_many(new.phash.to_numpy()))
        find_ms, pairs = best_of(repeat, lambda: find_pairs(new, everything, settings, index_factory=recording))
        group_ms, groups = best_of(repeat, lambda: group_duplicates(previous + pairs, quality))
        rss_peak = peak_rss_mb()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        group_duplicates(previous + find_pairs(new, everything, settings, index_factory=factory), quality)
        traced_peak = (tracemalloc.get_traced_memory()[1] - base) / 2 ** 20
        tracemalloc.stop()
        per_run = len([r for r in settings.index_radii() if r is not None])  # indexes find_pairs builds
        checked = sum(i.candidates_checked for i in built[-per_run:])  # those of the last find_pairs
        rows.append({"catalog": n, "mode": mode, "substrings": len(index._tables), "build_ms": build_ms,
                     "query_ms": query_ms, "candidates_per_query": index.candidates_checked / batch / repeat,
                     "find_pairs_ms": find_ms, "checked_share": checked / batch / len(everything),
                     "pairs": len(pairs), "planted_found": len(expected & {(p.a, p.b) for p in pairs}) / len(expected),
                     "all_pairs": len(previous) + len(pairs), "groups": int(groups.group_id.nunique()),
                     "group_ms": group_ms, "tracemalloc_mb": traced_peak,
                     "rss_before_mb": rss_before if rss_reset else None, "rss_peak_mb": rss_peak})
    if brute_force:
        codes_p, codes_d = everything.phash.to_numpy(), everything.dhash.to_numpy()

        def scan():
            for q in range(0, batch, 64):  # blocks of 64 queries: 64 x n distances at a time
                dp = popcount(new.phash.to_numpy()[q:q + 64, None] ^ codes_p[None, :])
                dd = popcount(new.dhash.to_numpy()[q:q + 64, None] ^ codes_d[None, :])
                np.nonzero(settings.is_near(dp, dd))

        rows.append({"catalog": n, "mode": "brute-force scan", "find_pairs_ms": best_of(repeat, scan)[0],
                     "checked_share": 1.0})
    return rows


COLUMNS = [("catalog", "catalog", 0), ("mode", "index", 0), ("substrings", "m", 0),
           ("build_ms", "build phash index (ms)", 1), ("query_ms", "1k phash queries (ms)", 1),
           ("candidates_per_query", "candidates / query", 0), ("find_pairs_ms", "find_pairs (ms)", 1),
           ("checked_share", "catalog share verified / query", 3), ("pairs", "new pairs", 0),
           ("planted_found", "planted found", 3), ("all_pairs", "pairs grouped", 0),
           ("group_ms", "group_duplicates (ms)", 1), ("tracemalloc_mb", "tracemalloc peak (MB)", 1),
           ("rss_before_mb", "RSS before (MB)", 0), ("rss_peak_mb", "peak RSS (MB)", 0)]


def cell(value, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timings are the best of this many runs")
    parser.add_argument("--classic", action="store_true", help="also time the classic m = radius + 1 index")
    parser.add_argument("--brute-force", action="store_true", help="also time a vectorised all-against-new scan")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.batch, args.seed, args.repeat, args.classic, args.brute_force)))
        return
    rows = []
    for n in args.catalog:  # each size in a process of its own
        command = [sys.executable, __file__, "--one", str(n), "--batch", str(args.batch), "--seed", str(args.seed),
                   "--repeat", str(args.repeat)] + ["--classic"] * args.classic + ["--brute-force"] * args.brute_force
        rows += json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    settings = DuplicateSettings()
    lines = [f"Adding a batch of {args.batch:,} images to hash-only catalogs (synthesised; see the script's "
             f"docstring). Settings: {settings}; index radii (phash, dhash): {settings.index_radii()}.", "",
             "| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row.get(key), digits) for key, _, digits in COLUMNS) + " |" for row in rows]
    update_section("duplicates-scale", "Duplicates: adding a batch to a growing catalog", "\n".join(lines))


if __name__ == "__main__":
    main()
