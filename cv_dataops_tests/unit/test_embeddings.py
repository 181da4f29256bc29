"""The embedding module: the built-in patch-kmeans embedder, ONNX models, decoding, the linear probe."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from cv_dataops.embeddings.embedders import (
    Embedder,
    OnnxEmbedder,
    PatchKMeansEmbedder,
    embed_bytes,
    linear_probe_accuracy,
    load_embedder,
    prepare_image,
)
from cv_dataops.images.analysis_cache import analysis_image, model_pixels
from cv_dataops_tests.conftest import CIFAR_SAMPLE, encode, photo

# Small settings: the same code paths as the defaults, a fraction of the cost.
SMALL = {"n_centroids": 48, "n_patches": 12_000, "dimension": 24, "kmeans_iterations": 8}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def _real_photos() -> list[Image.Image]:
    """Real colour photographs shipped with scikit-image and scikit-learn (no download)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    return ([Image.fromarray(getattr(data, name)()[..., :3]) for name in PHOTOS]
            + [Image.fromarray(a) for a in load_sample_images().images])


def _tiles(photos: list[Image.Image], count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        source = photos[index % len(photos)]
        side = int(rng.integers(96, min(source.size)))
        left, top = int(rng.integers(0, source.width - side + 1)), int(rng.integers(0, source.height - side + 1))
        out.append(source.crop((left, top, left + side, top + side)))
    return out


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return _real_photos()


@pytest.fixture(scope="module")
def fitted(photos) -> PatchKMeansEmbedder:
    return PatchKMeansEmbedder.fit(_tiles(photos, 60), seed=0, **SMALL)


# --- the built-in embedder ------------------------------------------------------------------------------------


def test_shapes_dtype_and_unit_norm(fitted, photos):
    assert isinstance(fitted, Embedder)
    assert fitted.name == "patch-kmeans" and fitted.dimension == SMALL["dimension"]
    odd = [photo(1, (64, 48)), photo(2, (7, 300)), photo(3, (32, 32)).convert("L"), photos[0].convert("RGBA"),
           Image.fromarray((np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30)).convert("I;16"),
           Image.new("RGB", (50, 50), (128, 128, 128))]  # constant: no contrast at all
    vectors = fitted.embed(odd)
    assert vectors.shape == (len(odd), fitted.dimension) and vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert fitted.embed([]).shape == (0, fitted.dimension)


def test_center_crop_keeps_the_middle():
    """Non-square images are center-cropped to a square before the resize: what is outside does not matter."""
    middle = photo(5, (32, 32))
    wide = Image.new("RGB", (64, 32), (255, 0, 0))
    wide.paste(middle, (16, 0))
    tall = Image.new("RGB", (32, 80), (0, 0, 255))
    tall.paste(middle, (0, 24))
    expected = np.asarray(middle)
    for image in (wide, tall):
        assert np.abs(prepare_image(image, (32, 32)).astype(int) - expected).max() <= 1


def test_same_seed_same_embedding_and_version(photos):
    tiles = _tiles(photos, 30, seed=1)
    a = PatchKMeansEmbedder.fit(tiles, seed=7, **SMALL)
    b = PatchKMeansEmbedder.fit(tiles, seed=7, **SMALL)
    c = PatchKMeansEmbedder.fit(tiles, seed=8, **SMALL)
    assert a.version == b.version != c.version
    np.testing.assert_array_equal(a.embed(tiles[:5]), b.embed(tiles[:5]))


def test_round_trip_through_bytes(fitted, photos, tmp_path):
    data = fitted.to_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:  # plain arrays, nothing pickled
        assert {"centroids", "whitening", "projection"} <= set(archive.files)
    restored = PatchKMeansEmbedder.from_bytes(data)
    assert restored.version == fitted.version and restored.dimension == fitted.dimension
    np.testing.assert_array_equal(restored.embed(photos[:3]), fitted.embed(photos[:3]))
    path = tmp_path / "embedder.npz"
    path.write_bytes(data)
    loaded = load_embedder({"kind": "patch-kmeans", "path": str(path)})
    assert loaded.version == fitted.version
    with pytest.raises(ValueError, match="not a stored PatchKMeansEmbedder"):
        PatchKMeansEmbedder.from_bytes(b"not an archive")


def test_version_changes_with_the_parameters(fitted, photos):
    def rebuilt(**change):
        arrays = {"whitening_mean": fitted.whitening_mean, "whitening": fitted.whitening,
                  "centroids": fitted.centroids, "projection": fitted.projection, "bias": fitted.bias, **change}
        return PatchKMeansEmbedder(input_size=fitted.input_size, patch_size=fitted.patch_size, **arrays)

    assert rebuilt().version == fitted.version
    centroids = fitted.centroids.copy()
    centroids[0, 0] += 1e-3
    assert rebuilt(centroids=centroids).version != fitted.version
    assert rebuilt(bias=fitted.bias + 1e-6).version != fitted.version
    other = PatchKMeansEmbedder.fit(_tiles(photos, 60), seed=0, **{**SMALL, "n_centroids": 32})
    assert other.version != fitted.version


def test_mirror_image_has_the_same_embedding(fitted, photos):
    """By construction (mirror-symmetric whitening, centroids in mirror pairs, symmetric pooling cells)."""
    pixels = np.stack([prepare_image(p, fitted.input_shape) for p in photos])
    np.testing.assert_allclose(fitted.embed_pixels(pixels[:, :, ::-1]), fitted.embed_pixels(pixels), atol=2e-5)
    # Mirroring before the resize: the resampling is not exactly mirror-symmetric, the embedding nearly is.
    mirrored = fitted.embed([p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in photos])
    assert np.einsum("ij,ij->i", mirrored, fitted.embed(photos)).min() > 0.99


def test_copies_are_nearer_than_other_photos(fitted, photos):
    """A photo's brightened and JPEG re-compressed copies are nearer to it than any other photo is."""
    originals = fitted.embed(photos)
    brighter = fitted.embed([ImageEnhance.Brightness(p).enhance(1.15) for p in photos])
    recompressed = fitted.embed([Image.open(io.BytesIO(encode(p, "JPEG", quality=50))) for p in photos])
    similarity = originals @ originals.T
    np.fill_diagonal(similarity, -np.inf)
    nearest_other = similarity.max(axis=1)
    for copies in (brighter, recompressed):
        to_source = np.einsum("ij,ij->i", copies, originals)
        assert np.all(to_source > nearest_other), (to_source, nearest_other)
        assert np.array_equal((copies @ originals.T).argmax(axis=1), np.arange(len(photos)))


def test_fit_rejects_bad_settings(photos):
    with pytest.raises(ValueError, match="even"):
        PatchKMeansEmbedder.fit(photos[:2], n_centroids=7)
    with pytest.raises(ValueError, match="at least one image"):
        PatchKMeansEmbedder.fit([], **SMALL)
    with pytest.raises(ValueError, match="input_size"):
        PatchKMeansEmbedder.fit(photos[:2], input_size=10, **SMALL)


def test_fit_on_few_images_keeps_the_dimension(photos):
    """Fewer images than dimensions: principal directions completed with random orthonormal ones."""
    embedder = PatchKMeansEmbedder.fit(photos[:3], **SMALL)
    vectors = embedder.embed(photos)
    assert vectors.shape == (len(photos), SMALL["dimension"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# --- decoding and streaming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("decode_workers", [1, 3])
def test_embed_bytes_streams_batches_in_order(fitted, photos, decode_workers):
    datas = [encode(p, "PNG") for p in photos[:5]] * 3
    batches = list(embed_bytes(fitted, iter(datas), batch_size=2, decode_workers=decode_workers))
    assert [len(b) for b in batches] == [2] * 7 + [1]
    # the pixels are THE decoder's analysis image, as from the batch's cache: the same vectors either way
    np.testing.assert_allclose(np.concatenate(batches), fitted.embed([model_pixels(d, None) for d in datas]),
                               atol=1e-6)
    (from_cache,) = embed_bytes(fitted, [analysis_image(d) for d in datas])
    np.testing.assert_allclose(from_cache, np.concatenate(batches), atol=1e-6)
    # and nearly those of the full-size photo
    assert np.einsum("ij,ij->i", from_cache, fitted.embed(photos[:5] * 3)).min() > 0.98


def test_embed_bytes_exif_orientation_and_draft_mode(fitted, photos):
    upright = photos[0].resize((400, 300))
    rotated = upright.transpose(Image.Transpose.ROTATE_90)  # stored turned; EXIF 6 turns it back upright
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = encode(rotated, "JPEG", quality=95, exif=exif.tobytes())
    plain = encode(upright, "JPEG", quality=95)
    big = encode(photos[5].resize((1600, 1392)), "JPEG", quality=90)  # decoded at 1/8 scale in draft mode
    (vectors,) = embed_bytes(fitted, [tagged, plain, big])
    assert float(vectors[0] @ vectors[1]) > 0.99
    assert float(vectors[2] @ fitted.embed([Image.open(io.BytesIO(big))])[0]) > 0.98


@pytest.mark.parametrize("decode_workers", [1, 2])
def test_embed_bytes_undecodable(fitted, photos, decode_workers):
    datas = [encode(photos[0], "PNG"), b"definitely not an image", encode(photos[1], "JPEG")]
    with pytest.raises(ValueError, match="#1 .23 bytes.: UnidentifiedImageError"):
        list(embed_bytes(fitted, datas, decode_workers=decode_workers))
    (vectors,) = embed_bytes(fitted, datas, on_error="nan", decode_workers=decode_workers)
    assert np.isnan(vectors[1]).all() and np.isfinite(vectors[[0, 2]]).all()


def test_embed_bytes_workers_give_the_same_vectors_in_order(fitted, photos):
    """Batches embedded by several threads at once come back in input order, bit for bit as with one, NaN rows of
    undecodable images in their places; a consumer that stops early does not hang."""
    datas = [encode(p, "PNG") for p in photos[:6]] * 4
    datas[5] = b"not an image"
    datas[17] = b"not one either"
    serial = list(embed_bytes(fitted, datas, batch_size=3, on_error="nan"))
    threaded = list(embed_bytes(fitted, datas, batch_size=3, on_error="nan", workers=3))
    assert [len(b) for b in threaded] == [len(b) for b in serial] == [3] * 8
    assert np.array_equal(np.concatenate(threaded), np.concatenate(serial), equal_nan=True)
    rows = np.concatenate(threaded)
    assert np.isnan(rows[[5, 17]]).all() and np.isfinite(np.delete(rows, [5, 17], axis=0)).all()
    first = next(iter(embed_bytes(fitted, datas, batch_size=3, workers=2, on_error="nan")))
    assert np.array_equal(first, serial[0])
    with pytest.raises(ValueError, match="#5 "):
        list(embed_bytes(fitted, datas, batch_size=3, workers=2))


def test_embeddings_table_from_a_matrix_is_the_table_from_rows():
    from cv_dataops.embeddings.tables import EMBEDDINGS, embeddings_table

    matrix = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    ids = [f"{n:064x}" for n in range(5)]
    rows = EMBEDDINGS.from_rows({"image_id": i, "batch_id": "b1", "vector": v.tolist(), "embedder": "e",
                                 "embedder_version": "v"} for i, v in zip(ids, matrix, strict=True))
    assert embeddings_table(ids, "b1", matrix, "e", "v").equals(rows)
    assert embeddings_table([], "b1", np.zeros((0, 7), np.float32), "e", "v").num_rows == 0
    with pytest.raises(ValueError, match="5 image ids but vectors of shape"):
        embeddings_table(ids, "b1", matrix[:4], "e", "v")


# --- ONNX models ----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=False)
def onnx_available() -> None:
    pytest.importorskip("onnx", reason="the onnx package builds the test models (pip install onnx)")
    pytest.importorskip("onnxruntime", reason="OnnxEmbedder needs onnxruntime (pip install onnxruntime)")


RNG = np.random.default_rng(42)
WEIGHTS = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
BIAS = RNG.standard_normal(8).astype(np.float32)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _conv_model(path: Path, size: int = 16, nhwc: bool = False, global_pool: bool = True, batch: int | str = "N"):
    """input -> [Transpose NHWC->NCHW] -> Conv 3x3 (8 filters, pad 1) -> Relu -> [GlobalAveragePool -> Flatten]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = [batch, size, size, 3] if nhwc else [batch, 3, size, size]
    nodes, current = [], "image"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [current], ["chw"], perm=[0, 3, 1, 2]))
        current = "chw"
    nodes += [helper.make_node("Conv", [current, "w", "b"], ["conv"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
              helper.make_node("Relu", ["conv"], ["relu"])]
    if global_pool:
        nodes += [helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
                  helper.make_node("Flatten", ["gap"], ["features"], axis=1)]
        output = helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 8])
    else:
        nodes.append(helper.make_node("Identity", ["relu"], ["features"]))
        output = helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 8, size, size])
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [output], initializer=[numpy_helper.from_array(WEIGHTS, "w"),
                                                     numpy_helper.from_array(BIAS, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _reference(images: list[Image.Image], size: int, bgr: bool = False) -> np.ndarray:
    """The tiny model in numpy, with the declared preprocessing."""
    x = np.stack([prepare_image(i, (size, size)) for i in images]).astype(np.float32) / 255.0
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)
    if bgr:
        x = x[..., ::-1]
    x = ((x - mean) / std).transpose(0, 3, 1, 2)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # n, c, h, w, 3, 3
    conv = np.einsum("nchwij,ocij->nohw", windows, WEIGHTS) + BIAS[None, :, None, None]
    features = np.maximum(conv, 0).mean(axis=(2, 3))
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def test_onnx_embedder_matches_numpy(onnx_available, tmp_path, photos):
    path = _conv_model(tmp_path / "tiny_cnn.onnx")
    embedder = load_embedder({"kind": "onnx", "path": str(path), "input_size": [16, 16], "mean": list(MEAN),
                              "std": list(STD)})
    assert isinstance(embedder, Embedder)
    assert embedder.name == "onnx:tiny_cnn" and embedder.dimension == 8
    images = photos[:4] + [photo(9, (40, 30))]
    vectors = embedder.embed(images)
    assert vectors.shape == (5, 8) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, _reference(images, 16), atol=2e-5)
    datas = [encode(i, "PNG") for i in images]
    (streamed,) = embed_bytes(embedder, datas)
    np.testing.assert_allclose(streamed, embedder.embed([model_pixels(d, (16, 16)) for d in datas]), atol=1e-6)


def test_onnx_nhwc_bgr_pooling_and_batch_one(onnx_available, tmp_path, photos):
    images = photos[:3]
    nhwc = OnnxEmbedder(str(_conv_model(tmp_path / "nhwc.onnx", nhwc=True)), input_size=(16, 16), mean=MEAN,
                        std=STD, layout="NHWC", channel_order="BGR")
    np.testing.assert_allclose(nhwc.embed(images), _reference(images, 16, bgr=True), atol=2e-5)
    pooled = OnnxEmbedder(str(_conv_model(tmp_path / "maps.onnx", global_pool=False, batch=1)), input_size=16,
                          mean=MEAN, std=STD, pool="avg", output="features")
    np.testing.assert_allclose(pooled.embed(images), _reference(images, 16), atol=2e-5)
    base = dict(input_size=(16, 16), mean=MEAN, std=STD)
    plain = OnnxEmbedder(str(tmp_path / "nhwc.onnx"), layout="NHWC", **base)
    assert plain.version != nhwc.version  # the preprocessing is part of the version


def test_onnx_bad_configs_fail_clearly(onnx_available, tmp_path):
    path = _conv_model(tmp_path / "fixed.onnx", size=16)
    base = {"kind": "onnx", "path": str(path), "input_size": [16, 16], "mean": list(MEAN), "std": list(STD)}
    with pytest.raises(FileNotFoundError, match="not found"):
        load_embedder({**base, "path": str(tmp_path / "missing.onnx")})
    with pytest.raises(ValueError, match=r"input_size=\[32, 32\]"):
        load_embedder({**base, "input_size": [32, 32]})
    with pytest.raises(ValueError, match="layout"):
        load_embedder({**base, "layout": "NHWC"})  # the model is NCHW: its axis 1 is 3, not 16
    with pytest.raises(ValueError, match="no output named"):
        load_embedder({**base, "output": "logits"})
    with pytest.raises(ValueError, match="missing"):
        load_embedder({"kind": "onnx", "path": str(path), "input_size": [16, 16]})
    with pytest.raises(ValueError, match="unknown keys"):
        load_embedder({**base, "normalise": True})
    with pytest.raises(ValueError, match="unknown embedder kind"):
        load_embedder({"kind": "clip", "path": str(path)})
    maps = _conv_model(tmp_path / "maps.onnx", global_pool=False)
    with pytest.raises(ValueError, match="set pool"):
        load_embedder({**base, "path": str(maps)})
    not_onnx = tmp_path / "broken.onnx"
    not_onnx.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot load"):
        load_embedder({**base, "path": str(not_onnx)})


# --- linear probe ---------------------------------------------------------------------------------------------


def _cifar(split: str, per_class: int) -> tuple[list[Image.Image], np.ndarray]:
    images, labels = [], []
    for label, folder in enumerate(sorted(p for p in (CIFAR_SAMPLE / split).iterdir() if p.is_dir())):
        for path in sorted(folder.glob("*.jpg"))[:per_class]:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
            labels.append(label)
    return images, np.array(labels)


def test_linear_probe_on_cifar_is_well_above_chance():
    if not (CIFAR_SAMPLE / "train").is_dir():
        pytest.skip(f"the CIFAR-10 sample is not beside the repository ({CIFAR_SAMPLE} is absent)")
    train, train_y = _cifar("train", 50)
    test, test_y = _cifar("test", 20)
    embedder = PatchKMeansEmbedder.fit(train, n_centroids=100, n_patches=40_000, dimension=128, seed=0)
    accuracy = linear_probe_accuracy(embedder.embed(train), train_y, embedder.embed(test), test_y, C=0.03)
    assert accuracy > 0.3, accuracy  # chance: 0.1


def test_the_stored_model_follows_the_configured_options(photos, tmp_path):
    from cv_dataops.core.storage import LocalStorage
    from cv_dataops.embeddings.store import (
        PATCH_KMEANS_KEY,
        load_or_fit_embedder,
        model_key,
        stored_patch_kmeans,
    )

    storage = LocalStorage(tmp_path)
    small = {"kind": "patch-kmeans", "n_centroids": 8, "n_patches": 2000, "dimension": 8, "kmeans_iterations": 2}
    larger = {**small, "dimension": 12}
    fits = []

    def sample():
        fits.append(1)
        return photos

    first = load_or_fit_embedder(small, storage, sample)
    assert load_or_fit_embedder(small, storage, sample).version == first.version and len(fits) == 1  # stored
    second = load_or_fit_embedder(larger, storage, sample)  # new options: a new model, not the stored one
    assert len(fits) == 2 and second.dimension == 12 and second.version != first.version
    assert model_key({"kind": "patch-kmeans"}) == PATCH_KMEANS_KEY
    assert model_key(small) != model_key(larger) and storage.exists(model_key(small)) and storage.exists(model_key(larger))
    # a search finds the model that made the catalog's vectors, whatever the options configured now
    assert stored_patch_kmeans(storage, {"kind": "patch-kmeans"}, [first.version]).version == first.version
    assert stored_patch_kmeans(storage, larger).version == second.version
    with pytest.raises(FileNotFoundError):
        stored_patch_kmeans(LocalStorage(tmp_path / "empty"), small)
