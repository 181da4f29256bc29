"""What decoding costs on the per-batch path (ingest, quality, embeddings), against the floor of one draft decode.

    .venv/bin/python bench/decode_cost.py [--jpegs 2000] [--pngs 500] [--cifar 1000] [--write]

The floor is one call of THE decoder (``cv_dataops.images.decode.decode`` at the analysis size, 256 px: JPEG draft
mode) per image, in one process. Every stage is timed in the same run, in one process, through the library calls
the stages make, split into its decode and its other work:

* **ingest**: ``inspect_image`` (header, limits, EXIF, the safety decode) and the sha256 of the bytes; its decode
  is timed alone on a second pass.
* **quality**: ``measure`` split into ``decode`` and the metrics on the decoded image.
* **embeddings**: the embedder's decode of the bytes and ``embed`` of the decoded images (the built-in embedder,
  fitted once on 500 images of the set at the defaults: 400 centroids, 512 dimensions; the fit is per catalog,
  not per batch, and is not counted).

Sets: ``--jpegs`` 1024x768 JPEGs (quality 90, random crops of scikit-image's photographs resized, as
``bench/quality_dataset.py`` makes them), ``--pngs`` the same photos as PNG, and ``--cifar`` JPEGs of the CIFAR-10
sample at ../shared/datasets/cifar10-sample (skipped with a message when absent). Bytes are held in memory: file
reads are not timed (on S3 each fetch is a request, which the ratio of fetches per image counts instead).
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
# The stages as the library runs them today
# ---------------------------------------------------------------------------------------------------------------


def stage_timings(files: list[bytes], embedder, repeats: int) -> dict[str, float]:
    """Seconds for the whole set: the floor and each stage's decode and other work."""
    from cv_dataops.embeddings import embedders
    from cv_dataops.ingest.batch import inspect_image
    from cv_dataops.quality.measure import _measure_decoded

    size = embedder.input_shape
    out: dict[str, float] = {}
    out["floor"] = seconds(lambda: [decode(d, ANALYSIS_SIDE) for d in files], repeats)

    def ingest() -> None:
        for data in files:
            hashlib.sha256(data).hexdigest()
            inspect_image(data)

    def ingest_decode() -> None:  # the safety decode inspect_image makes: verify, then the first frame in full
        for data in files:
            Image.open(io.BytesIO(data)).verify()
            Image.open(io.BytesIO(data)).load()

    out["ingest"] = seconds(ingest, repeats)
    out["ingest_decode"] = seconds(ingest_decode, repeats)
    decoded = [decode(d, ANALYSIS_SIDE) for d in files]
    out["quality_decode"] = out["floor"]
    out["quality_other"] = seconds(lambda: [_measure_decoded(d) for d in decoded], repeats)
    del decoded
    out["embeddings_decode"] = seconds(lambda: [embedders._decode(d, size) for d in files], repeats)
    images = [embedders._decode(d, size) for d in files]
    out["embeddings_other"] = seconds(lambda: [embedder.embed(images[i:i + 64]) for i in range(0, len(images), 64)],
                                      repeats)
    out["ingest_other"] = max(out["ingest"] - out["ingest_decode"], 0.0)
    out["path"] = out["ingest"] + out["quality_decode"] + out["quality_other"] + out["embeddings_decode"] \
        + out["embeddings_other"]
    out["fetches"] = 3
    return out


ROWS = [("floor: one draft decode", "floor"),
        ("ingest: safety decode", "ingest_decode"), ("ingest: other (header, EXIF, sha256)", "ingest_other"),
        ("quality: decode", "quality_decode"), ("quality: metrics", "quality_other"),
        ("embeddings: decode", "embeddings_decode"), ("embeddings: embed", "embeddings_other"),
        ("**whole per-batch path**", "path")]


def table(results: dict[str, dict[str, float]], counts: dict[str, int]) -> str:
    names = list(results)
    lines = ["| stage | " + " | ".join(f"{n} ({counts[n]}): ms/image, x floor" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for label, key in ROWS:
        cells = []
        for name in names:
            value = results[name].get(key)
            if value is None:
                cells.append("-")
                continue
            cells.append(f"{1000 * value / counts[name]:.2f} ms, {value / results[name]['floor']:.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| fetches of each file | " + " | ".join(str(results[n]["fetches"]) for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jpegs", type=int, default=2000)
    parser.add_argument("--pngs", type=int, default=500)
    parser.add_argument("--cifar", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="also write the raw seconds here")
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
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
            sets["CIFAR-10 JPEG 32x32"] = cifar
    results, counts = {}, {}
    with threadpool_limits(1):
        for name, files in sets.items():
            sample = [decode(d, ANALYSIS_SIDE).rgb for d in files[:500]]
            embedder = PatchKMeansEmbedder.fit(sample, max_images=500)
            del sample
            results[name] = stage_timings(files, embedder, args.repeats)
            counts[name] = len(files)
            print(name, json.dumps({k: round(v, 3) for k, v in results[name].items()}), flush=True)
    print(table(results, counts))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "counts": counts}, indent=1))


if __name__ == "__main__":
    main()
