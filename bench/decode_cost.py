"""What decoding costs on the per-batch path (ingest, quality, embeddings), against the floor of one draft decode.

    .venv/bin/python bench/decode_cost.py [--jpegs 2000] [--pngs 500] [--cifar 1000] [--write]

The floor is one call of THE decoder (``cv_dataops.images.decode.decode`` at the analysis size, 256 px: JPEG draft
mode) per image, in one process. Every stage is timed in the same run, in one process, split into its decode and
its other work, two ways, on the same chunks of 50 files in turn (the fastest of ``--repeats`` runs per chunk), so
that a busy machine slows the things compared alike:

* **before** (as at commit e34a733, the calls replayed here): ingest verified and fully decoded each file
  (``verify()`` + ``load()``, and for PNGs a second full decode to read EXIF, which Pillow finds after the pixels);
  quality fetched and decoded it again (``decode``); embeddings fetched and decoded it a third time with a draft
  decode of their own.
* **after** (the library as it is): ingest's ``inspect_and_decode`` makes the one decode (THE decoder) and keeps
  its result, ``write_analysis_cache`` stores the batch's analysis images; quality and embeddings read them back
  (``batch_sources``) instead of fetching and decoding.

Every stage's other work is counted too: header, EXIF and sha256 at ingest, the metrics (``_measure_decoded``),
and ``embed`` for the built-in embedder (fitted once on 500 images of the set at the defaults, 400 centroids and
512 dimensions; the fit is per catalog, not per batch, and is not counted).

Sets: ``--jpegs`` 1024x768 JPEGs (quality 90, random crops of scikit-image's photographs resized, as
``bench/quality_dataset.py`` makes them), ``--pngs`` the same photos as PNG, and ``--cifar`` JPEGs of the CIFAR-10
sample at ../shared/datasets/cifar10-sample (skipped with a message when absent). Landed bytes are held in memory,
so file reads are not timed; on S3 each is a request, which the fetch count shows instead. The cache is written to
and read from a local folder, and its reads are timed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quality_dataset import skimage_photos  # noqa: E402

from cv_dataops.images.decode import decode  # noqa: E402

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-sample"
ANALYSIS_SIDE = 256


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def photo_set(count: int, fmt: str) -> list[bytes]:
    """``count`` distinct files: 200 photos, each also mirrored and with a little noise, to vary the bytes."""
    base = skimage_photos(min(count, 200), seed=1)
    rng = np.random.default_rng(0)
    files = []
    for index in range(count):
        image = base[index % len(base)]
        if index >= len(base):
            array = np.asarray(image, dtype=np.int16) + rng.integers(-3, 4, (image.height, image.width, 3))
            image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
            if (index // len(base)) % 2:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        files.append(_encode(image, fmt))
    return files


def cifar_set(count: int) -> list[bytes] | None:
    files = sorted((CIFAR / "test").glob("*/*.jpg")) + sorted((CIFAR / "train").glob("*/*.jpg"))
    if not files:
        return None
    return [f.read_bytes() for f in files[:count]]


def interleaved(work: dict[str, Callable[[slice], object]], count: int, repeats: int, chunk: int = 50
                ) -> dict[str, float]:
    """Seconds each piece of work takes over all ``count`` items. The items are taken ``chunk`` at a time and every
    piece of work runs on a chunk, ``repeats`` times, before the next chunk: on a shared machine each comparison is
    made within the same few seconds, and the fastest of the repeats drops most interference."""
    totals = dict.fromkeys(work, 0.0)
    for start in range(0, count, chunk):
        part = slice(start, min(start + chunk, count))
        for name, function in work.items():
            best = float("inf")
            for _ in range(repeats):
                began = time.perf_counter()
                function(part)
                best = min(best, time.perf_counter() - began)
            totals[name] += best
    return totals


# ---------------------------------------------------------------------------------------------------------------
# Before: the decodes each stage made at commit e34a733, replayed with the same Pillow calls
# ---------------------------------------------------------------------------------------------------------------


def _legacy_ingest_decode(data: bytes) -> None:
    image = Image.open(io.BytesIO(data))
    try:
        image.getexif()  # PNG: EXIF may follow the pixels, so Pillow decodes them all to find it
    except Exception:
        pass
    Image.open(io.BytesIO(data)).verify()
    Image.open(io.BytesIO(data)).load()


def _legacy_embedding_decode(data: bytes, size: tuple[int, int]) -> Image.Image:
    """embeddings.embedders._decode at e34a733: a draft decode to at least twice the embedder's crop."""
    import math
    import warnings

    from PIL import ImageOps

    from cv_dataops.embeddings.embedders import _crop_box, _to_rgb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        if image.format in ("JPEG", "MPO"):
            try:
                orientation = int(image.getexif().get(0x0112, 1) or 1)
            except Exception:
                orientation = 1
            width, height = size if orientation < 5 else (size[1], size[0])
            left, top, right, bottom = _crop_box(image.width, image.height, width, height)
            scale = 2.0 * max(width / (right - left), height / (bottom - top))
            if scale < 1.0:
                image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image))


def _embed(embedder, images: list) -> None:
    for start in range(0, len(images), 256):  # the asset's batch size
        embedder.embed(images[start:start + 256])


def measure_set(files: list[bytes], embedder, repeats: int, workdir: Path) -> dict:
    """The floor, and every stage before and after, on the same chunks of ``files`` (see :func:`interleaved`)."""
    from cv_dataops.core.storage import LocalStorage
    from cv_dataops.images.analysis_cache import (
        batch_sources,
        model_pixels,
        write_analysis_cache,
    )
    from cv_dataops.images.decode import decode_image
    from cv_dataops.ingest.batch import inspect_and_decode
    from cv_dataops.quality.measure import _measure_decoded

    size = embedder.input_shape
    storage = LocalStorage(workdir)
    ids = [f"{i:06d}" for i in range(len(files))]
    analysed = [inspect_and_decode(d)[1] for d in files]
    decoded = [decode(d, ANALYSIS_SIDE) for d in files]
    legacy_images = [_legacy_embedding_decode(d, size) for d in files]
    model_images = [model_pixels(a, size) for a in analysed]
    chunk = 50
    for start in range(0, len(files), chunk):  # the cache each chunk's stages read
        write_analysis_cache(storage, f"read-{start}", zip(ids[start:start + chunk], analysed[start:start + chunk]))

    def cached(part: slice) -> list:
        items = [(i, "/nowhere") for i in ids[part]]
        sources = [source for _, source in batch_sources(storage, f"read-{part.start}", items)]
        assert not any(isinstance(s, str) for s in sources), "every image must come from the cache"
        return sources

    def ingest_before_decode(part: slice) -> None:
        for data in files[part]:
            _legacy_ingest_decode(data)

    def ingest_after(part: slice) -> None:
        for data in files[part]:
            hashlib.sha256(data).hexdigest()
            inspect_and_decode(data)

    def ingest_after_decode(part: slice) -> None:  # the part of inspect_and_decode that decodes
        for data in files[part]:
            Image.open(io.BytesIO(data)).verify()
            decode_image(Image.open(io.BytesIO(data)), ANALYSIS_SIDE)

    def header(part: slice) -> None:
        for data in files[part]:
            hashlib.sha256(data).hexdigest()
            Image.open(io.BytesIO(data)).size

    work = {
        "floor": lambda part: [decode(d, ANALYSIS_SIDE) for d in files[part]],
        "before.ingest_decode": ingest_before_decode,
        "before.ingest_other": header,
        "before.quality_decode": lambda part: [decode(d, ANALYSIS_SIDE) for d in files[part]],
        "before.embeddings_decode": lambda part: [_legacy_embedding_decode(d, size) for d in files[part]],
        "before.embeddings_other": lambda part: _embed(embedder, legacy_images[part]),
        "after.ingest": ingest_after,
        "after.ingest_decode": ingest_after_decode,
        "after.quality_decode": lambda part: [s.decoded() for s in cached(part)],
        "quality_other": lambda part: [_measure_decoded(d) for d in decoded[part]],
        "after.embeddings_decode": lambda part: [model_pixels(s, size) for s in cached(part)],
        "after.embeddings_other": lambda part: _embed(embedder, model_images[part]),
    }
    took = interleaved(work, len(files), repeats, chunk)
    # the cache is one file per batch: its write is timed as such (per chunk, a file's fixed costs would dominate)
    took["after.cache_write"] = interleaved(
        {"write": lambda part: write_analysis_cache(storage, "written", zip(ids[part], analysed[part]))},
        len(files), repeats, chunk=len(files))["write"]
    before = {k.split(".", 1)[1]: v for k, v in took.items() if k.startswith("before.")}
    after = {k.split(".", 1)[1]: v for k, v in took.items() if k.startswith("after.")}
    before["quality_other"] = after["quality_other"] = took["quality_other"]  # the same metrics either way
    after["ingest_other"] = max(after.pop("ingest") - after["ingest_decode"], 0.0)
    before["fetches"], after["fetches"] = 3, 1
    cache = sum(f.stat().st_size for f in (workdir / "cache" / "analysis").glob("read-*.parquet"))
    after["cache_bytes_per_image"] = cache / len(files)
    after["landed_bytes_per_image"] = sum(map(len, files)) / len(files)
    return {"floor": took["floor"], "before": totals(before), "after": totals(after)}


DECODE_KEYS = ("ingest_decode", "cache_write", "quality_decode", "embeddings_decode")
OTHER_KEYS = ("ingest_other", "quality_other", "embeddings_other")
ROWS = [("ingest: safety decode", "ingest_decode"),
        ("ingest: other (header, EXIF, sha256; after: and packing the analysis image)", "ingest_other"),
        ("ingest: write the analysis cache", "cache_write"),
        ("quality: decode (after: read the cache)", "quality_decode"), ("quality: metrics", "quality_other"),
        ("embeddings: decode (after: read the cache)", "embeddings_decode"), ("embeddings: embed", "embeddings_other"),
        ("**decoding, whole path**", "decoding"), ("**whole per-batch path**", "path")]


def totals(result: dict[str, float]) -> dict[str, float]:
    result["decoding"] = sum(result.get(k, 0.0) for k in DECODE_KEYS)
    result["path"] = result["decoding"] + sum(result[k] for k in OTHER_KEYS)
    return result


def table(results: dict[str, dict[str, dict[str, float]]], counts: dict[str, int]) -> str:
    names = list(results)
    head = " | ".join(f"{n}: before | after" for n in names)
    lines = [f"| stage (ms per image, x floor) | {head} |", "|---|" + "---|---|" * len(names)]
    lines.append("| floor: one draft decode (THE decoder) | " + " | ".join(
        f"{1000 * results[n]['floor'] / counts[n]:.2f} ms, 1x | same" for n in names) + " |")
    for label, key in ROWS:
        cells = []
        for name in names:
            floor = results[name]["floor"]
            for when in ("before", "after"):
                value = results[name][when].get(key)
                cells.append("-" if value is None else
                             f"{1000 * value / counts[name]:.2f} ms, {value / floor:.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| fetches of each landed file | " + " | ".join(
        f"{results[n]['before']['fetches']} | {results[n]['after']['fetches']}" for n in names) + " |")
    lines.append("| analysis cache, bytes per image (landed file) | " + " | ".join(
        f"- | {results[n]['after']['cache_bytes_per_image'] / 1000:.0f} KB "
        f"({results[n]['after']['landed_bytes_per_image'] / 1000:.0f} KB)" for n in names) + " |")
    return "\n".join(lines)


def summary(results: dict[str, dict], counts: dict[str, int]) -> str:
    """What the table says, per set, in words (figures from this run)."""
    lines = []
    for name, result in results.items():
        floor, b, a = result["floor"], result["before"], result["after"]
        x = {k: v / floor for k, v in a.items() if isinstance(v, float)}
        lines.append(
            f"- **{name}**: decoding {b['decoding'] / floor:.2f}x -> {x['decoding']:.2f}x the floor, the whole "
            f"per-batch path {b['path'] / floor:.2f}x -> {x['path']:.2f}x, each file fetched once instead of three "
            f"times. Ingest decodes once ({x['ingest_decode']:.2f}x, with `verify`), packs and writes the analysis "
            f"images ({x['ingest_other'] + x['cache_write']:.2f}x with header, EXIF and sha256); quality reads them "
            f"back ({x['quality_decode']:.2f}x) and spends {x['quality_other']:.2f}x on its metrics; embeddings read "
            f"them ({x['embeddings_decode']:.2f}x) and spend {x['embeddings_other']:.2f}x embedding.")
    return "\n".join(lines)


def end_to_end(images: int) -> str:
    """Two batches of ``images`` JPEGs through ``cv-dataops run --select image_quality,image_embeddings`` on a fresh
    data root; the second run (the embedder already fitted) against the floor of the same files."""
    import subprocess
    import tempfile

    files = photo_set(2 * images, "JPEG")
    floor = interleaved({"floor": lambda part: [decode(d, ANALYSIS_SIDE) for d in files[images:][part]]},
                        images, 1)["floor"]
    repository = Path(__file__).resolve().parent.parent
    lines = []
    with tempfile.TemporaryDirectory() as root:
        landing = Path(root) / "landing"
        command = [sys.executable, "-m", "cv_dataops.cli", "run", "--landing", str(landing), "--data-root",
                   str(Path(root) / "data"), "--labels", "none", "--select", "image_quality,image_embeddings"]
        for batch in (1, 2):
            folder = landing / f"b{batch}"
            folder.mkdir(parents=True)
            for index, data in enumerate(files[(batch - 1) * images:batch * images]):
                (folder / f"{index:05d}.jpg").write_bytes(data)
            began = time.perf_counter()
            subprocess.run(command, check=True, cwd=repository, capture_output=True)
            took = time.perf_counter() - began
            what = "first batch (fits the embedder on it)" if batch == 1 else "second batch"
            lines.append(f"| {what} | {took:.1f} s | {took / floor:.1f}x |")
    return (f"`cv-dataops run --select image_quality,image_embeddings` (ingest, quality, embeddings and their "
            f"checks, in Dagster) on {images} new 1024x768 JPEGs per batch, fresh data root; floor for a batch: "
            f"{floor:.1f} s.\n\n| run | wall time | x floor |\n|---|---|---|\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jpegs", type=int, default=2000)
    parser.add_argument("--pngs", type=int, default=500)
    parser.add_argument("--cifar", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs of each chunk")
    parser.add_argument("--json", help="also write the raw seconds here")
    parser.add_argument("--end-to-end", type=int, default=0, metavar="N",
                        help="also time two batches of N JPEGs through `cv-dataops run` (0: skip)")
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    import tempfile

    from threadpoolctl import threadpool_limits

    from cv_dataops.embeddings.embedders import PatchKMeansEmbedder

    sets: dict[str, list[bytes]] = {}
    if args.jpegs:
        sets["JPEG 1024x768"] = photo_set(args.jpegs, "JPEG")
    if args.pngs:
        sets["PNG 1024x768"] = photo_set(args.pngs, "PNG")
    if args.cifar:
        cifar = cifar_set(args.cifar)
        if cifar is None:
            print(f"CIFAR-10 sample not found at {CIFAR}: skipping that set")
        else:
            sets["CIFAR-10 32x32 JPEG"] = cifar
    results: dict[str, dict] = {}
    counts: dict[str, int] = {}
    with threadpool_limits(1), tempfile.TemporaryDirectory() as workdir:
        for index, (name, files) in enumerate(sets.items()):
            sample = [decode(d, ANALYSIS_SIDE).rgb for d in files[:500]]
            embedder = PatchKMeansEmbedder.fit(sample, max_images=500)
            del sample
            results[name] = measure_set(files, embedder, args.repeats, Path(workdir) / str(index))
            counts[name] = len(files)
            print(name, json.dumps({k: v if isinstance(v, float) else {a: round(b, 3) for a, b in v.items()}
                                    for k, v in results[name].items()}), flush=True)
    body = table(results, counts) + "\n\n" + summary(results, counts)
    if args.end_to_end:
        body += "\n\nEnd to end: " + end_to_end(args.end_to_end)
    print(body)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "counts": counts}, indent=1))
    if args.write:
        from report import update_section

        update_section("decode-cost", "Decoding on the per-batch path: each file decoded once", body)


if __name__ == "__main__":
    main()
