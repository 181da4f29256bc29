"""The per-batch analysis-image cache: exact to a fresh decode, lossless on disk, and skipped when it cannot serve."""

from __future__ import annotations

import io

import boto3
import numpy as np
import pytest
from PIL import Image

from cv_dataops.core.storage import LocalStorage, S3Storage
from cv_dataops.images.analysis_cache import (
    ANALYSIS_SIDE,
    AnalysisImage,
    analysis_image,
    analysis_side_for,
    batch_sources,
    cache_key,
    cached_image_ids,
    model_pixels,
    read_analysis_cache,
    write_analysis_cache,
)
from cv_dataops.images.decode import decode, decode_image
from cv_dataops.quality.measure import _measure_decoded, measure
from cv_dataops_tests.conftest import encode, photo


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo(9, (400, 300)), "JPEG", exif=exif)


def _animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [photo(2, (40, 30)), photo(3, (40, 30))]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def _files() -> dict[str, bytes]:
    """Every kind of input the decoder handles differently."""
    gray_rgb = photo(4, (300, 200)).convert("L").convert("RGB")
    gray_transparent = photo(6, (90, 60)).convert("L")
    return {
        "jpeg": encode(photo(1, (1024, 768)), "JPEG", quality=90),
        "jpeg_gray": encode(photo(2, (640, 480)).convert("L"), "JPEG"),
        "jpeg_cmyk": encode(photo(3, (320, 240)).convert("CMYK"), "JPEG"),
        "jpeg_rotated": _rotated_jpeg(),
        "png_rgb_gray_channels": encode(gray_rgb, "PNG"),
        "png_16bit": encode(Image.fromarray((np.arange(300 * 200).reshape(200, 300) * 7).astype(np.uint16)), "PNG"),
        "png_palette_alpha": encode(photo(5, (120, 80)).convert("P"), "PNG", transparency=0),
        "png_gray_transparent": encode(gray_transparent, "PNG", transparency=10),
        "png_rgba": encode(photo(7, (700, 90)).convert("RGBA"), "PNG"),
        "gif_animated": _animated_gif(),
        "tiny": encode(photo(8, (8, 8)), "PNG"),
        "webp": encode(photo(10, (500, 500)), "WEBP", lossless=True),
    }


def _same_decoded(a, b) -> None:
    assert a.rgb.mode == b.rgb.mode == "RGB" and a.gray.mode == b.gray.mode == "L"
    assert np.array_equal(np.asarray(a.rgb), np.asarray(b.rgb))
    assert np.array_equal(np.asarray(a.gray), np.asarray(b.gray))
    assert (a.width, a.height, a.source_gray) == (b.width, b.height, b.source_gray)
    assert a.quantization == b.quantization


@pytest.mark.parametrize("name", sorted(_files()))
def test_a_cached_image_is_the_decoder_output_bit_for_bit(tmp_path, name):
    data = _files()[name]
    fresh = decode(data, ANALYSIS_SIDE)
    storage = LocalStorage(tmp_path)
    write_analysis_cache(storage, "b1", [("id", analysis_image(data))])
    cached = read_analysis_cache(storage, "b1")["id"].decoded()
    _same_decoded(cached, fresh)
    # and so are the quality results: every column, exactly
    assert _measure_decoded(cached) == measure(data)


def test_quality_from_the_cache_equals_quality_from_the_file_on_real_photos(tmp_path, cifar_sample):
    files = sorted((cifar_sample / "test").glob("*/*.jpg"))[::50]
    storage = LocalStorage(tmp_path)
    write_analysis_cache(storage, "b1", [(str(f), analysis_image(f.read_bytes())) for f in files])
    cache = read_analysis_cache(storage, "b1")
    for f in files:
        assert _measure_decoded(cache[str(f)].decoded()) == measure(f.read_bytes()), f


def test_gray_images_are_stored_once_not_three_times():
    gray = analysis_image(encode(photo(2, (640, 480)).convert("L"), "PNG"))
    colour = analysis_image(encode(photo(2, (640, 480)), "PNG"))
    assert gray.mode == "L" and colour.mode == "RGB"
    assert len(gray.pixels) < len(colour.pixels)


def test_batch_sources_serve_the_cache_in_order_and_uris_for_the_rest(tmp_path):
    storage = LocalStorage(tmp_path / "data")
    files = {f"id{i:03d}": encode(photo(i, (200, 150)), "JPEG") for i in range(150)}  # three row groups
    cached_ids = [i for i in files if i != "id070"]
    write_analysis_cache(storage, "b1", [(i, analysis_image(files[i])) for i in cached_ids])
    items = [(i, f"/landing/{i}.jpg") for i in files] + [("not-cached", "/landing/x.jpg")]
    sources = list(batch_sources(storage, "b1", items))
    assert [i for i, _ in sources] == [i for i, _ in items]
    for image_id, source in sources:
        if image_id in cached_ids:
            assert isinstance(source, AnalysisImage)
            _same_decoded(source.decoded(), decode(files[image_id], ANALYSIS_SIDE))
        else:
            assert source == dict(items)[image_id]
    # a batch without a cache, and a cache made at another size, give every URI
    assert list(batch_sources(storage, "b2", items)) == items
    assert list(batch_sources(storage, "b1", items, analysis_side=128)) == items
    # items in another order than the cache's still find their images
    shuffled = list(reversed(items))
    assert sum(isinstance(s, AnalysisImage) for _, s in batch_sources(storage, "b1", shuffled)) == len(cached_ids)


def test_a_cache_of_another_decoder_version_is_ignored(tmp_path, monkeypatch):
    from cv_dataops.images import analysis_cache

    storage = LocalStorage(tmp_path)
    write_analysis_cache(storage, "b1", [("a", analysis_image(encode(photo(1), "PNG")))])
    monkeypatch.setattr(analysis_cache, "CACHE_VERSION", analysis_cache.CACHE_VERSION + ".next")
    assert read_analysis_cache(storage, "b1") == {}
    assert list(batch_sources(storage, "b1", [("a", "/x.png")])) == [("a", "/x.png")]


def test_the_cache_lives_under_the_data_root_on_s3(s3_endpoint, s3_bucket):
    storage = S3Storage(f"s3://{s3_bucket}/root", boto3.client("s3", endpoint_url=s3_endpoint))
    data = encode(photo(3, (800, 600)), "JPEG")
    uri = write_analysis_cache(storage, "batch-7", [("a", analysis_image(data))])
    assert uri == f"s3://{s3_bucket}/root/{cache_key('batch-7')}"
    (image_id, source), = batch_sources(storage, "batch-7", [("a", "s3://elsewhere/a.jpg")])
    _same_decoded(source.decoded(), decode(data, ANALYSIS_SIDE))


def test_an_empty_batch_writes_a_readable_cache(tmp_path):
    storage = LocalStorage(tmp_path)
    write_analysis_cache(storage, "empty", [])
    assert read_analysis_cache(storage, "empty") == {}


def test_model_pixels_are_the_same_from_bytes_and_from_the_cache():
    for data in _files().values():
        from_bytes = model_pixels(data, (32, 32))
        from_cache = model_pixels(analysis_image(data), (32, 32))
        assert np.array_equal(np.asarray(from_bytes), np.asarray(from_cache))
    assert analysis_side_for((32, 32)) == ANALYSIS_SIDE and analysis_side_for(None) == ANALYSIS_SIDE
    assert analysis_side_for((224, 224)) == 448  # a large model decodes from the file, at twice its input
    with pytest.raises(ValueError, match="needs a side of 448"):
        model_pixels(analysis_image(_files()["jpeg"]), (224, 224))


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("fraction", [0.2, 0.6, 0.95])
def test_draft_decoding_still_catches_truncated_jpegs(progressive, fraction):
    data = encode(photo(1, (1024, 768)), "JPEG", quality=90, progressive=progressive)
    cut = data[:int(len(data) * fraction)]
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(cut)).load()  # the full decode ingestion used to make
    image = Image.open(io.BytesIO(cut))
    with pytest.raises(OSError, match="truncated"):
        decode_image(image, ANALYSIS_SIDE)
    assert image.size == (256, 192)  # it was decoded in draft mode, at 1/4 scale


@pytest.mark.parametrize("fraction", [0.2, 0.6, 0.95])
def test_decoding_at_the_analysis_size_still_catches_truncated_pngs(fraction):
    data = encode(photo(1, (640, 480)), "PNG")
    cut = data[:int(len(data) * fraction)]
    with pytest.raises(OSError) as full:
        Image.open(io.BytesIO(cut)).load()
    with pytest.raises(OSError) as analysis:
        decode_image(Image.open(io.BytesIO(cut)), ANALYSIS_SIDE)
    assert type(full.value) is type(analysis.value) and str(full.value) == str(analysis.value)


def test_cached_image_ids_are_the_images_the_cache_holds(tmp_path):
    storage = LocalStorage(tmp_path)
    assert cached_image_ids(storage, "b1") == set()  # no cache yet
    write_analysis_cache(storage, "b1", [("a", analysis_image(encode(photo(1), "PNG"))),
                                         ("b", analysis_image(encode(photo(2), "JPEG")))])
    assert cached_image_ids(storage, "b1") == {"a", "b"}
    assert cached_image_ids(storage, "b1", analysis_side=128) == set()  # made at another size: not usable
