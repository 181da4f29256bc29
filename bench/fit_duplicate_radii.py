"""Fit near-duplicate thresholds that scale with the data on one collection, and score them on others.

An absolute radius (a cosine distance of 0.2, a Hamming sum of 24 bits) means something different on every data set
and every embedder: on 64x64 upscaled handwritten digits most distinct images sit closer than that, and a random
ONNX embedder puts every image within 0.01 of its neighbours. Scaling by a catalog's median nearest-neighbour
distance (what cleanlab's Datalab does) was tried first and does not transfer: fitted on CIFAR it still paired
hundreds of distinct digits. What does is a local ratio test, as in feature matching: a pair is a duplicate when
it is much closer than either image's k-th nearest neighbour (see ``Rule``).

Collections (each: distinct originals plus planted copies of some of them; ground truth = the planted pairs, copies
of one original paired with each other too; anything else found is a false pair, even where two originals are in
fact the same photo, so precision is if anything understated):

* fit (``--fit-on``, default): scikit-learn's digits upscaled to 64x64 as the digits demo lands them (1,797), the
  collection where distinct images are closest: what a threshold must survive;
* held out: the CIFAR-10 sample's train (3,000) and test (1,000) splits, 32x32 photos; scikit-image/scikit-learn
  photo tiles (128x96); the scenes demo (240 procedural scenes); and the CIFAR test split again with an ONNX
  embedder (a random 3x3 convolution, 32 filters, global average pooling, built here: another scale of distances
  entirely). 300 copies are planted in each (a third of the originals in the small ones).

Transforms planted (a fifth of the copies each): JPEG quality 70 recompression, half-size resize, 20 % brighter,
mirror image, a 5 % centred crop resized back. The built-in embedder is fitted on each collection's originals, as
the pipeline fits it on a catalog's own sample.

Usage: python bench/fit_duplicate_radii.py [--write]   (docs/benchmarks.md section ``duplicate-radii``)
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageOps

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from report import update_section  # noqa: E402

from cv_dataops.duplicates.index import (  # noqa: E402
    DuplicateSettings,
    EmbeddingDuplicateSettings,
    kth_smallest,
)
from cv_dataops.embeddings.embedders import OnnxEmbedder, PatchKMeansEmbedder  # noqa: E402
from cv_dataops.embeddings.neighbors import NeighborIndex  # noqa: E402
from cv_dataops.quality.measure import measure  # noqa: E402

CIFAR = HERE.parents[1] / "shared" / "datasets" / "cifar10-sample"
COPIES = 300  # planted copies per collection (at most a third of its originals)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _crop(image: Image.Image, per_side: float) -> Image.Image:
    w, h = image.size
    dx, dy = max(1, round(w * per_side)), max(1, round(h * per_side))
    return image.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.BICUBIC)


TRANSFORMS = {
    "JPEG q70": lambda i: _jpeg(i, 70),
    "half size": lambda i: i.resize((max(8, i.width // 2), max(8, i.height // 2)), Image.BILINEAR),
    "20 % brighter": lambda i: ImageEnhance.Brightness(i).enhance(1.2),
    "mirror": ImageOps.mirror,
    "5 % crop": lambda i: _crop(i, 0.05),
}


@dataclass
class Collection:
    name: str
    originals: list[Image.Image]
    embedder: str = "patch-kmeans"  # or "onnx"


def cifar(split: str) -> list[Image.Image]:
    images = []
    for path in sorted((CIFAR / split).glob("*/*.jpg")):
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def digits() -> list[Image.Image]:
    from sklearn.datasets import load_digits

    from cv_dataops.demo.data import write_digits

    with tempfile.TemporaryDirectory() as folder:
        write_digits(folder)
        paths = sorted(Path(folder).rglob("*.png"))
        images = []
        for path in paths:
            with Image.open(path) as image:
                images.append(image.convert("L").copy())
    assert len(images) == len(load_digits().images)
    return images


def photo_tiles(limit: int = 400, size: tuple[int, int] = (128, 96)) -> list[Image.Image]:
    """Non-overlapping tiles of the real colour photographs scikit-image and scikit-learn ship, at native
    resolution, nearly black or flat tiles left out."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    sources = [Image.fromarray(getattr(data, name)()[..., :3]) for name in
               ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")]
    sources += [Image.fromarray(array) for array in load_sample_images().images]
    tiles = []
    for source in sources:
        for top in range(0, source.height - size[1] + 1, size[1]):
            for left in range(0, source.width - size[0] + 1, size[0]):
                tile = source.crop((left, top, left + size[0], top + size[1]))
                luma = np.asarray(tile.convert("L"), dtype=np.float32)
                if luma.mean() > 40 and luma.std() > 12:
                    tiles.append(tile)
    order = np.random.default_rng(0).permutation(len(tiles))
    return [tiles[i] for i in order[:limit]]


def scenes() -> list[Image.Image]:
    from cv_dataops.demo.data import generate_scenes

    with tempfile.TemporaryDirectory() as folder:
        generate_scenes(folder, 240, seed=11)
        images = []
        for path in sorted(Path(folder).rglob("*.jpg")):
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
    return images


def _onnx_model(path: Path, size: int = 32, filters: int = 32) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = rng.normal(size=(filters, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(scale=0.1, size=filters).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["features"], axis=1)]
    graph = helper.make_graph(
        nodes, "random-conv", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", filters])],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def features(images: list[Image.Image], embedder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixel hashes, phash+dhash as uint64 pairs, vectors) as the pipeline computes them (PNG bytes measured)."""
    pixel, hashes = [], []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        m = measure(buffer.getvalue())
        pixel.append(m["pixel_hash"])
        hashes.append((int(m["phash"], 16) if isinstance(m["phash"], str) else int(m["phash"]) & (2**64 - 1),
                       int(m["dhash"], 16) if isinstance(m["dhash"], str) else int(m["dhash"]) & (2**64 - 1)))
    vectors = embedder.embed([i.convert("RGB") for i in images])
    return np.array(pixel), np.array(hashes, dtype=np.uint64), np.asarray(vectors, dtype=np.float32)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a[:, None], b[None, :])).astype(np.int16)


@dataclass
class Catalog:
    """Every pair's distances (dense: these catalogs are a few thousand images), the truth and the scales."""

    name: str
    n: int
    phash: np.ndarray      # (n, n) int16
    dhash: np.ndarray
    cosine: np.ndarray     # (n, n) float32
    exact: np.ndarray      # (n, n) bool: identical pixels (left to the exact rule)
    truth: np.ndarray      # (n, n) bool: a planted pair
    hash_scale: float      # median nearest-neighbour phash + dhash
    cosine_scale: float    # median nearest-neighbour cosine distance
    planted: int

    def local_scales(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each image's distance to its ``k``-th nearest other image: hash sum and cosine."""
        return (kth_neighbour(self.phash + self.dhash, k), kth_neighbour(self.cosine, k))


def build(collection: Collection, seed: int = 0) -> Catalog:
    import os
    import pickle

    cache = os.environ.get("RADII_CACHE")
    if cache:
        path = Path(cache) / f"{collection.name.replace(' ', '_').replace('/', '_')}-{seed}.pkl"
        if path.exists():
            return pickle.loads(path.read_bytes())
        built = _build(collection, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(built))
        return built
    return _build(collection, seed)


def _build(collection: Collection, seed: int = 0) -> Catalog:
    originals = collection.originals
    rng = np.random.default_rng(seed)
    copied = rng.choice(len(originals), min(COPIES, len(originals) // 3), replace=False)
    names = list(TRANSFORMS)
    copies = [TRANSFORMS[names[k % len(names)]](originals[i]) for k, i in enumerate(copied)]
    images = originals + copies
    source = np.concatenate([np.arange(len(originals)), copied])
    if collection.embedder == "onnx":
        folder = Path(tempfile.mkdtemp())
        embedder = OnnxEmbedder(str(_onnx_model(folder / "random.onnx")), input_size=32,
                                mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    else:
        embedder = PatchKMeansEmbedder.fit([o.convert("RGB") for o in originals], seed=0,
                                           max_images=3000)
    pixel, hashes, vectors = features(images, embedder)
    phash, dhash = hamming(hashes[:, 0], hashes[:, 0]), hamming(hashes[:, 1], hashes[:, 1])
    cosine = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0).astype(np.float32)
    n = len(images)
    truth = source[:, None] == source[None, :]
    np.fill_diagonal(truth, False)
    exact = pixel[:, None] == pixel[None, :]
    total = (phash + dhash).astype(np.float32)
    np.fill_diagonal(total, np.inf)
    nn_cosine = NeighborIndex(vectors).kneighbors(k=1)[0][:, 0]
    return Catalog(collection.name, n, phash, dhash, cosine, exact, truth,
                   float(np.median(total.min(axis=1))), float(np.median(nn_cosine)), int(truth.sum() // 2))


def kth_neighbour(distances: np.ndarray, k: int) -> np.ndarray:
    """Each row's distance to its ``k``-th nearest other row: the image's local scale (the library's
    :func:`~cv_dataops.duplicates.index.kth_smallest`, on the dense matrix with the diagonal left out)."""
    m = distances.astype(np.float64)
    np.fill_diagonal(m, np.inf)
    return kth_smallest(m, k)


@dataclass(frozen=True)
class Rule:
    """A pair is near by its hashes when ``phash + dhash <= hash_ratio * local hash scale`` (and within today's
    absolute hash rule), by its embedding alone when ``cosine <= identical_ratio * local cosine scale`` (and
    <= 0.2), or by both when ``cosine <= near_ratio * local cosine scale`` and ``phash + dhash <= near_hash_ratio *
    local hash scale`` (and <= 32). The local scale of a pair is the smaller of its two images' distances to their
    ``k``-th nearest neighbour: a duplicate is much closer than the image's ``k`` nearest others (a ratio test, as in
    feature matching), which holds however tight the whole collection is; ``k`` above 1 keeps groups of up to ``k``
    copies findable."""

    k: int | None            # None: today's absolute rule
    hash_ratio: float = 0.0
    identical_ratio: float = 0.0
    near_ratio: float = 0.0
    near_hash_ratio: float = 0.0

    def describe(self) -> str:
        if self.k is None:
            return "absolute (today's defaults)"
        return (f"k = {self.k}; hashes <= {self.hash_ratio:g} x scale; embedding alone <= {self.identical_ratio:g} x "
                f"scale; both: cosine <= {self.near_ratio:g} x scale and hashes <= {self.near_hash_ratio:g} x scale")


def found(catalog: Catalog, rule: Rule) -> np.ndarray:
    """The near pairs the rule finds (upper triangle, exact twins left out)."""
    hashes, embedding = DuplicateSettings(), EmbeddingDuplicateSettings()
    total = (catalog.phash + catalog.dhash).astype(np.float32)
    by_hash = ((catalog.phash <= hashes.phash_radius) & (catalog.dhash <= hashes.dhash_radius)
               & (total <= hashes.total_radius))
    if rule.k is None:
        by_embedding = (catalog.cosine <= embedding.identical_radius) | (
            (catalog.cosine <= embedding.near_radius) & (total <= embedding.hash_total))
    else:
        hash_scale, cosine_scale = catalog.local_scales(rule.k)
        pair_hash = np.minimum(hash_scale[:, None], hash_scale[None, :])
        pair_cosine = np.minimum(cosine_scale[:, None], cosine_scale[None, :])
        by_hash &= total <= rule.hash_ratio * pair_hash
        by_embedding = ((catalog.cosine <= embedding.near_radius) & (catalog.cosine <= rule.identical_ratio * pair_cosine)) | (
            (catalog.cosine <= rule.near_ratio * pair_cosine) & (total <= rule.near_hash_ratio * pair_hash)
            & (total <= embedding.hash_total))
    return np.triu((by_hash | by_embedding) & ~catalog.exact, 1)


def score(catalog: Catalog, rule: Rule) -> dict:
    pairs = found(catalog, rule)
    truth = np.triu(catalog.truth & ~catalog.exact, 1)
    hits, total_found = int((pairs & truth).sum()), int(pairs.sum())
    return {"found": total_found, "true": hits, "false": total_found - hits,
            "precision": hits / total_found if total_found else 1.0, "recall": hits / max(int(truth.sum()), 1)}


GRID = {"k": (10, 20), "hash_ratio": (0.2, 0.25, 0.3, 0.4), "identical_ratio": (0.05, 0.1, 0.15),
        "near_ratio": (0.15, 0.2, 0.3, 0.5), "near_hash_ratio": (0.2, 0.3, 0.5, 0.7)}


def fit(catalog: Catalog, precision: float = 0.97) -> Rule:
    """The rule of :data:`GRID` with the highest recall at ``precision`` or better on the fitting catalog (ties:
    the smaller ratios)."""
    import itertools

    best, best_key = None, None
    for values in itertools.product(*GRID.values()):
        rule = Rule(*values)
        result = score(catalog, rule)
        if result["precision"] < precision:
            continue
        key = (result["recall"], -sum(values[1:]), -rule.k)
        if best_key is None or key > best_key:
            best, best_key = rule, key
    if best is None:
        raise SystemExit(f"no rule reaches a precision of {precision} on the fitting set")
    return best


COLLECTIONS = {
    "digits": lambda: Collection("digits 64x64", digits()),
    "cifar-train": lambda: Collection("CIFAR-10 train", cifar("train")),
    "cifar-test": lambda: Collection("CIFAR-10 test", cifar("test")),
    "tiles": lambda: Collection("photo tiles 128x96", photo_tiles()),
    "scenes": lambda: Collection("scenes demo", scenes()),
    "cifar-test-onnx": lambda: Collection("CIFAR-10 test, ONNX random-conv embedder", cifar("test"), embedder="onnx"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit-on", default="digits", choices=sorted(COLLECTIONS))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    if not CIFAR.exists():
        raise SystemExit(f"the CIFAR-10 sample is not at {CIFAR}")
    catalogs = {name: build(make(), seed=0 if name == args.fit_on else 1) for name, make in COLLECTIONS.items()}
    rule = fit(catalogs[args.fit_on])
    print("fitted:", rule.describe(), file=sys.stderr)
    rows = []
    for name, catalog in catalogs.items():
        for candidate in (Rule(None), rule):
            result = score(catalog, candidate)
            rows.append({"collection": catalog.name + (" (fit)" if name == args.fit_on else ""),
                         "images": catalog.n, "planted pairs": catalog.planted,
                         "rule": "absolute (today)" if candidate.k is None else "local scale (fitted)", **result})
    frame = pd.DataFrame(rows)
    frame["precision"] = frame.precision.round(3)
    frame["recall"] = frame.recall.round(3)
    doc = __doc__.split("\n\n")
    body = "\n".join([
        *[" ".join(part.split()) for part in doc[1:4]], "",
        f"Rule family (`Rule` in the script): {' '.join(Rule.__doc__.split())}", "",
        f"Fitted on **{catalogs[args.fit_on].name}** (highest recall at precision >= 0.97 over the grid "
        f"{GRID}): **{rule.describe()}**.", "",
        frame.to_markdown(index=False), "",
        f"Whole run: {time.perf_counter() - started:.0f} s."])
    print(body)
    if args.write:
        update_section("duplicate-radii", "Near duplicates: thresholds that scale with the data, fitted and held out",
                       body)


if __name__ == "__main__":
    main()
