"""What decoding costs on the per-batch path (ingest, quality, embeddings), against the floor of one draft decode.

    .venv/bin/python bench/decode_cost.py [--jpegs 2000] [--pngs 500] [--cifar 1000] [--write]

The floor is one call of THE decoder (``cv_dataops.images.decode.decode`` at the analysis size, 256 px: JPEG draft
mode) per image, in one process. Every stage is timed in the same run, in one process, split into its decode and
its other work, two ways:

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


def seconds(function: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


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


def before(files: list[bytes], embedder, repeats: int) -> dict[str, float]:
    from cv_dataops.quality.measure import _measure_decoded

    size = embedder.input_shape
    out: dict[str, float] = {}
    out["ingest_decode"] = seconds(lambda: [_legacy_ingest_decode(d) for d in files], repeats)
    header = seconds(lambda: [(hashlib.sha256(d).hexdigest(), Image.open(io.BytesIO(d)).size) for d in files],
                     repeats)
    out["ingest_other"] = header
    out["quality_decode"] = seconds(lambda: [decode(d, ANALYSIS_SIDE) for d in files], repeats)
    decoded = [decode(d, ANALYSIS_SIDE) for d in files]
    out["quality_other"] = seconds(lambda: [_measure_decoded(d) for d in decoded], repeats)
    out["embeddings_decode"] = seconds(lambda: [_legacy_embedding_decode(d, size) for d in files], repeats)
    images = [_legacy_embedding_decode(d, size) for d in files]
    out["embeddings_other"] = seconds(lambda: _embed(embedder, images), repeats)
    out["fetches"] = 3
    return out


def _embed(embedder, images: list) -> None:
    for start in range(0, len(images), 256):  # the asset's batch size
        embedder.embed(images[start:start + 256])


# ---------------------------------------------------------------------------------------------------------------
# After: the library as the stages call it now
# ---------------------------------------------------------------------------------------------------------------


def after(files: list[bytes], embedder, repeats: int, workdir: Path) -> dict[str, float]:
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
    ids = [hashlib.sha256(d).hexdigest() + f"-{i}" for i, d in enumerate(files)]
    out: dict[str, float] = {}

    def ingest() -> list:
        return [(hashlib.sha256(d).hexdigest(), inspect_and_decode(d)[1]) for d in files]

    def ingest_decode() -> None:  # the part of inspect_and_decode that decodes: verify, then THE decoder
        for data in files:
            Image.open(io.BytesIO(data)).verify()
            decode_image(Image.open(io.BytesIO(data)), ANALYSIS_SIDE)

    total = seconds(ingest, repeats)
    out["ingest_decode"] = seconds(ingest_decode, repeats)
    out["ingest_other"] = max(total - out["ingest_decode"], 0.0)
    analysed = [(image_id, a) for image_id, (_, a) in zip(ids, ingest(), strict=True)]
    storage = LocalStorage(workdir)
    out["cache_write"] = seconds(lambda: write_analysis_cache(storage, "batch", analysed), repeats)
    cache_bytes = (workdir / "cache" / "analysis" / "batch.parquet").stat().st_size
    items = [(image_id, "/nowhere") for image_id in ids]

    def cached() -> list:
        return [source for _, source in batch_sources(storage, "batch", items)]

    sources = cached()
    assert all(not isinstance(s, str) for s in sources), "every image must come from the cache"
    out["quality_decode"] = seconds(lambda: [s.decoded() for s in cached()], repeats)
    decoded = [s.decoded() for s in sources]
    out["quality_other"] = seconds(lambda: [_measure_decoded(d) for d in decoded], repeats)
    out["embeddings_decode"] = seconds(lambda: [model_pixels(s, size) for s in cached()], repeats)
    images = [model_pixels(s, size) for s in sources]
    out["embeddings_other"] = seconds(lambda: _embed(embedder, images), repeats)
    out["fetches"] = 1
    out["cache_bytes_per_image"] = cache_bytes / len(files)
    out["landed_bytes_per_image"] = sum(map(len, files)) / len(files)
    return out


DECODE_KEYS = ("ingest_decode", "cache_write", "quality_decode", "embeddings_decode")
OTHER_KEYS = ("ingest_other", "quality_other", "embeddings_other")
ROWS = [("ingest: safety decode", "ingest_decode"), ("ingest: other (header, EXIF, sha256)", "ingest_other"),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jpegs", type=int, default=2000)
    parser.add_argument("--pngs", type=int, default=500)
    parser.add_argument("--cifar", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs of each timing")
    parser.add_argument("--json", help="also write the raw seconds here")
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
            floor = seconds(lambda: [decode(d, ANALYSIS_SIDE) for d in files], args.repeats)
            results[name] = {"floor": floor, "before": totals(before(files, embedder, args.repeats)),
                             "after": totals(after(files, embedder, args.repeats, Path(workdir) / str(index)))}
            counts[name] = len(files)
            print(name, json.dumps({k: v if isinstance(v, float) else {a: round(b, 3) for a, b in v.items()}
                                    for k, v in results[name].items()}), flush=True)
    body = table(results, counts)
    print(body)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "counts": counts}, indent=1))
    if args.write:
        from report import update_section

        update_section("decode-cost", "Decoding on the per-batch path: each file decoded once", body)


if __name__ == "__main__":
    main()
