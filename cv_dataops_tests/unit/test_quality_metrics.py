"""Per-image quality metrics (cv_dataops.quality.measure and the issue types of cv_dataops.quality.issues) on
crafted images whose answer is known.

"Photos" are real: scikit-image ships a few (astronaut, coffee, chelsea, rocket); CIFAR-10 sample images are read in
place where present (the ``cifar_sample`` fixture skips otherwise). Every test builds its images in memory or under
tmp_path.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cv_dataops.images.decode import decode
from cv_dataops.quality import measure as q
from cv_dataops.quality.issues.odd_size import odd_size_scores

skdata = pytest.importorskip("skimage.data", reason="scikit-image provides the real sample photos")

DEFAULTS = q.QualityThresholds()


def encode(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def sample(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return sample("astronaut")  # 512x512 colour photo


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return sample("coffee")  # 600x400


def photo_at(side: int) -> Image.Image:
    """A sharp real photo whose longest side is ``side``: downscaled astronaut up to 512, above that a mosaic of
    native-resolution sample photos (upscaling would itself blur)."""
    if side <= 512:
        return sample("astronaut").resize((side, side), Image.Resampling.LANCZOS)
    tiles = [sample(name).crop((0, 0, 400, 300)) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    mosaic = Image.new("RGB", (800, 600))
    for i, tile in enumerate(tiles):
        mosaic.paste(tile, ((i % 2) * 400, (i // 2) * 300))
    return mosaic.resize((side, side * 3 // 4), Image.Resampling.LANCZOS) if side < 800 else _tile_to(mosaic, side)


def _tile_to(mosaic: Image.Image, side: int) -> Image.Image:
    """Native-resolution mosaic of mosaics, cropped to side x 3/4 side (no resampling)."""
    canvas = Image.new("RGB", (side, side * 3 // 4))
    for y in range(0, canvas.height, mosaic.height):
        for x in range(0, canvas.width, mosaic.width):
            flipped = (x // mosaic.width) % 2 == 1
            canvas.paste(mosaic.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else mosaic, (x, y))
    return canvas


def procedural_photo(seed: int = 0, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Textured gradients, shapes and noise: photo-like statistics without any file."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([90 + 80 * np.sin(x / (17 + seed)) + y / 4, 120 + 60 * np.cos(y / 23) + x / 6,
                    100 + 50 * np.sin((x + y) / 31)], -1)
    for _ in range(12):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(8, 40)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def flags_of(result: dict) -> dict[str, bool]:
    """Issue flags of one measure() result under the default thresholds (odd_size: the image alone is typical)."""
    rows = {k: np.array([v]) for k, v in result.items() if k.endswith("_score") or k in ("width", "height")}
    return {k: (v[0] if k == "unusable_reason" else bool(v[0])) for k, v in q.flag_issues(rows, DEFAULTS).items()}


# ---------------------------------------------------------------------------------------------------------------
# Result shape and the public API
# ---------------------------------------------------------------------------------------------------------------

def test_measure_returns_every_column_with_scores_in_unit_range(astronaut):
    result = q.measure(encode(astronaut, "JPEG", quality=90))
    assert set(result) == set(q.MEASURE_COLUMNS)
    assert set(q.MEASUREMENTS) <= set(result)
    for column in q.SCORE_COLUMNS:
        assert 0.0 <= result[column] <= 1.0, column
    assert (result["width"], result["height"]) == (512, 512)
    assert (result["analysis_width"], result["analysis_height"]) == (q.ANALYSIS_SIDE, q.ANALYSIS_SIDE)
    assert 0 <= result["phash"] < 2 ** 64 and 0 <= result["dhash"] < 2 ** 64
    assert len(result["pixel_hash"]) == 64
    # A clean, sharp, colourful photo has none of the issues.
    assert not any(flags_of(result).values())


def test_thresholds_are_documented_and_validated():
    values = DEFAULTS.as_dict()
    assert set(q.ISSUE_TYPES) <= set(values)
    assert values["unusable_issues"] == ["dark", "light", "blurry", "low_information"]
    with pytest.raises(ValueError):
        q.QualityThresholds(unusable_issues=("not_an_issue",))


def test_flag_issues_marks_unusable_from_the_configured_issues():
    rows = {f"{t}_score": np.array([1.0, 0.0, 1.0]) for t in q.ISSUE_TYPES if t != "odd_size"}
    rows["odd_size_score"] = np.array([1.0, 1.0, 0.0])
    rows["grayscale_score"] = np.array([1.0, 1.0, 0.0])
    flags = q.flag_issues(rows, DEFAULTS)
    assert flags["is_dark"].tolist() == [False, True, False]
    assert flags["is_odd_size"].tolist() == [False, False, True]
    assert flags["is_unusable"].tolist() == [False, True, False]  # odd size and grayscale do not make it unusable
    only_gray = q.flag_issues(rows, q.QualityThresholds(unusable_issues=("grayscale",)))
    assert only_gray["is_unusable"].tolist() == [False, False, True]
    # A missing score (an image that failed) is never flagged.
    rows["dark_score"] = np.array([np.nan, 0.0, 1.0])
    assert q.flag_issues(rows, DEFAULTS)["is_dark"].tolist() == [False, True, False]


def test_flagged_is_not_unusable_unless_below_the_stricter_unusable_threshold():
    # dark scores: a dim night scene (flagged), a near-black frame (unusable), a normal photo
    rows = {f"{t}_score": np.ones(3) for t in q.ISSUE_TYPES}
    rows["dark_score"] = np.array([DEFAULTS.dark - 0.1, DEFAULTS.dark_unusable / 2, 0.9])
    rows["blurry_score"] = np.array([1.0, DEFAULTS.blurry_unusable / 2, 1.0])
    flags = q.flag_issues(rows, DEFAULTS)
    assert flags["is_dark"].tolist() == [True, True, False]
    assert flags["is_unusable"].tolist() == [False, True, False]
    assert flags["unusable_reason"].tolist() == [None, "dark,blurry", None]
    for name in DEFAULTS.unusable_issues:
        assert DEFAULTS.unusable_by_issue[name] < DEFAULTS.by_issue[name], name


def test_unusable_thresholds_are_configuration_and_never_above_the_flag():
    import dataclasses

    assert DEFAULTS.as_dict()["dark_unusable"] == DEFAULTS.dark_unusable
    stricter = dataclasses.replace(DEFAULTS, dark_unusable=0.01)
    assert stricter.dark_unusable == 0.01 and stricter.dark == DEFAULTS.dark
    lowered = q.QualityThresholds(dark=0.02)
    assert lowered.dark_unusable == 0.02   # an unusable image is always flagged too
    with pytest.raises(ValueError, match="unknown issue types"):
        q.QualityThresholds(nonsense_unusable=0.1)


def test_a_dim_night_photo_is_flagged_dark_but_usable_and_a_black_frame_is_unusable(astronaut):
    night = Image.fromarray((np.asarray(astronaut, dtype=np.float32) * 0.22).astype(np.uint8))
    result = q.measure(encode(night, "JPEG", quality=90))
    assert flags_of(result)["is_dark"] and not flags_of(result)["is_unusable"]
    black = Image.fromarray((np.asarray(astronaut, dtype=np.float32) * 0.02).astype(np.uint8))
    flags = flags_of(q.measure(encode(black, "PNG")))
    assert flags["is_unusable"] and flags["unusable_reason"].startswith("dark")


def test_an_ordinary_soft_or_upscaled_photo_is_not_blurry():
    """What the earlier score got wrong: soft lenses and 2x upscales of real photos are ordinary, not blurry (a 3 px
    blur on a 1024 px photo is 0.3% of its side)."""
    sharp = photo_at(1024)
    soft = sharp.filter(ImageFilter.GaussianBlur(3))
    upscaled = sharp.resize((512, 384), Image.Resampling.LANCZOS).resize(sharp.size, Image.Resampling.BICUBIC)
    for image in (soft, upscaled):
        result = q.measure(encode(image, "JPEG", quality=85))
        assert not flags_of(result)["is_blurry"], result["blurry_score"]
    beyond = q.measure(encode(sharp.filter(ImageFilter.GaussianBlur(0.1 * 1024)), "JPEG", quality=85))
    assert flags_of(beyond)["is_blurry"] and flags_of(beyond)["is_unusable"], beyond["blurry_score"]


def test_garbage_raises_value_error():
    with pytest.raises(ValueError, match="cannot decode"):
        q.measure(b"this is not an image")


# ---------------------------------------------------------------------------------------------------------------
# Exposure
# ---------------------------------------------------------------------------------------------------------------

def test_black_image_is_dark_and_a_photo_is_not(astronaut):
    black = q.measure(encode(Image.new("RGB", (200, 150), (3, 3, 3))))
    assert black["dark_score"] < DEFAULTS.dark and flags_of(black)["is_dark"]
    assert flags_of(black)["is_unusable"]
    underexposed = Image.fromarray((np.asarray(astronaut) * 0.15).astype(np.uint8))
    assert flags_of(q.measure(encode(underexposed, "JPEG", quality=90)))["is_dark"]
    photo = q.measure(encode(astronaut, "JPEG", quality=90))
    assert photo["dark_score"] > 0.8 and not flags_of(photo)["is_dark"]


def test_near_white_image_is_light(astronaut):
    white = q.measure(encode(Image.new("RGB", (200, 150), (250, 251, 252))))
    assert white["light_score"] < DEFAULTS.light and flags_of(white)["is_light"]
    washed = Image.fromarray((255 - (255 - np.asarray(astronaut, dtype=np.float32)) * 0.03).astype(np.uint8))
    assert flags_of(q.measure(encode(washed)))["is_light"]
    assert not flags_of(q.measure(encode(astronaut)))["is_light"]


def test_clipping_fractions_and_brightness_on_half_black_half_white():
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, 100:] = 255
    result = q.measure(encode(Image.fromarray(arr)))
    assert result["dark_clipped_fraction"] == pytest.approx(0.5, abs=0.02)
    assert result["light_clipped_fraction"] == pytest.approx(0.5, abs=0.02)
    assert result["brightness"] == pytest.approx(0.5, abs=0.02)
    assert result["rms_contrast"] == pytest.approx(0.5, abs=0.02)
    mid = q.measure(encode(Image.new("RGB", (64, 64), (128, 128, 128))))
    assert mid["dark_clipped_fraction"] == 0.0 and mid["light_clipped_fraction"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Blur, relative to the image's size
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", [64, 256, 1024])
def test_gaussian_blur_is_blurry_and_the_sharp_original_is_not_at_any_size(side):
    sharp = photo_at(side)
    blurred = sharp.filter(ImageFilter.GaussianBlur(max(0.02 * side, 1.5)))   # 2% of the side
    sharp_result = q.measure(encode(sharp, "JPEG", quality=92))
    blurred_result = q.measure(encode(blurred, "JPEG", quality=92))
    assert sharp_result["blurry_score"] > 0.8, sharp_result["blurry_score"]
    assert not flags_of(sharp_result)["is_blurry"]
    assert blurred_result["blurry_score"] < DEFAULTS.blurry, blurred_result["blurry_score"]
    assert flags_of(blurred_result)["is_blurry"]
    assert blurred_result["sharpness"] < sharp_result["sharpness"]


def test_blur_score_is_contrast_invariant_unlike_laplacian_variance(astronaut):
    """A sharp photo at a quarter of the contrast is still sharp (CleanVision's edge-variance score is not)."""
    arr = np.asarray(astronaut, dtype=np.float32)
    low_contrast = Image.fromarray((128 + (arr - 128) * 0.25).astype(np.uint8))
    full, low = q.measure(encode(astronaut)), q.measure(encode(low_contrast))
    assert low["sharpness"] < full["sharpness"] / 8
    assert low["blurry_score"] > 0.8 and not flags_of(low)["is_blurry"]


def test_flat_image_with_one_sharp_object_is_not_blurry():
    arr = np.full((240, 320, 3), 90, np.uint8)
    arr[100:140, 150:190] = (220, 40, 40)
    result = q.measure(encode(Image.fromarray(arr)))
    assert not flags_of(result)["is_blurry"]


# ---------------------------------------------------------------------------------------------------------------
# Information, aspect ratio, size
# ---------------------------------------------------------------------------------------------------------------

def test_constant_and_near_constant_images_are_low_information(astronaut):
    rng = np.random.default_rng(0)
    constant = q.measure(encode(Image.new("RGB", (300, 200), (40, 120, 200))))
    assert constant["entropy"] == 0.0 and flags_of(constant)["is_low_information"]
    noisy = np.clip(np.full((200, 300, 3), 140.0) + rng.normal(0, 3, (200, 300, 3)), 0, 255).astype(np.uint8)
    near_constant = q.measure(encode(Image.fromarray(noisy), "JPEG", quality=90))
    assert flags_of(near_constant)["is_low_information"], near_constant["low_information_score"]
    photo = q.measure(encode(astronaut))
    assert photo["low_information_score"] > 0.8 and not flags_of(photo)["is_low_information"]


def test_ten_to_one_image_is_odd_aspect_ratio(astronaut):
    wide = q.measure(encode(astronaut.resize((500, 50))))
    assert wide["odd_aspect_ratio_score"] == pytest.approx(0.1)
    assert flags_of(wide)["is_odd_aspect_ratio"]
    tall = q.measure(encode(astronaut.resize((40, 400))))
    assert flags_of(tall)["is_odd_aspect_ratio"]
    assert not flags_of(q.measure(encode(astronaut.resize((640, 360)))))["is_odd_aspect_ratio"]  # 16:9 is fine


def test_odd_size_flags_tiny_and_huge_images_among_typical_ones():
    widths = np.array([256] * 30 + [20, 4000, 300, 200])
    heights = np.array([256] * 30 + [20, 4000, 300, 220])
    scores = odd_size_scores(widths, heights)
    assert scores.shape == widths.shape and np.all((scores >= 0) & (scores <= 1))
    flagged = scores < DEFAULTS.odd_size
    assert flagged[30] and flagged[31]
    assert not flagged[:30].any()
    assert not flagged[32] and not flagged[33]  # slightly different sizes are not odd (CleanVision flags them)
    # Against a reference catalog: a batch of one is scored relative to the catalog, not to itself.
    catalog = np.full(100, 256 * 256)
    assert odd_size_scores(np.array([20]), np.array([20]), reference_areas=catalog)[0] < DEFAULTS.odd_size
    assert odd_size_scores(np.array([256]), np.array([256]), reference_areas=catalog)[0] == 1.0
    # flag_issues computes it from width/height when no odd_size_score column is given.
    rows = {f"{t}_score": np.ones(len(widths)) for t in q.ISSUE_TYPES if t != "odd_size"}
    rows.update(width=widths, height=heights)
    assert q.flag_issues(rows, DEFAULTS)["is_odd_size"].tolist() == flagged.tolist()


def test_odd_size_scales_to_a_large_catalog():
    rng = np.random.default_rng(1)
    widths = rng.integers(200, 2000, 1_000_000)
    heights = rng.integers(200, 2000, 1_000_000)
    import tracemalloc

    tracemalloc.start()
    scores = odd_size_scores(widths, heights)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 * 2**20  # O(n) memory: percentiles by partition, no pairwise work (which would need terabytes)
    assert scores.shape == (1_000_000,)
    assert (scores < DEFAULTS.odd_size).mean() < 0.01  # a broad but smooth spread has almost no outliers


# ---------------------------------------------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------------------------------------------

def test_grayscale_detection_covers_rgb_files_with_equal_channels(astronaut):
    rgb_gray = q.measure(encode(astronaut.convert("L").convert("RGB"), "JPEG", quality=90))
    assert rgb_gray["grayscale_score"] < DEFAULTS.grayscale and flags_of(rgb_gray)["is_grayscale"]
    mode_l = q.measure(encode(astronaut.convert("L")))
    assert mode_l["grayscale_score"] == 0.0 and flags_of(mode_l)["is_grayscale"]
    colour = q.measure(encode(astronaut, "JPEG", quality=90))
    assert colour["grayscale_score"] > 0.5 and not flags_of(colour)["is_grayscale"]
    assert colour["colourfulness"] > 20 > rgb_gray["colourfulness"]
    # A dark colour photo keeps its colour relative to its contrast: dark, not grayscale.
    dark = q.measure(encode(Image.fromarray((np.asarray(astronaut) * 0.1).astype(np.uint8))))
    assert flags_of(dark)["is_dark"] and not flags_of(dark)["is_grayscale"]


# ---------------------------------------------------------------------------------------------------------------
# Noise and JPEG quality
# ---------------------------------------------------------------------------------------------------------------

def test_noise_sigma_grows_with_added_gaussian_noise():
    base = np.asarray(photo_at(256), dtype=np.float32)
    rng = np.random.default_rng(2)
    sigmas = []
    for added in (0, 5, 10, 20):
        noisy = np.clip(base + rng.normal(0, added, base.shape), 0, 255).astype(np.uint8) if added else base.astype(np.uint8)
        sigmas.append(q.measure(encode(Image.fromarray(noisy)))["noise_sigma"])
    assert sigmas == sorted(sigmas) and sigmas[-1] > sigmas[0] + 8, sigmas
    # noise_sigma is luma noise: independent per-channel noise of std s gives ~0.67 s in luma.
    assert sigmas[-1] == pytest.approx(0.67 * 20, rel=0.2)
    flat = np.clip(128 + rng.normal(0, 10, (256, 256)), 0, 255).astype(np.uint8)
    assert q.measure(encode(Image.fromarray(flat)))["noise_sigma"] == pytest.approx(10, rel=0.15)


@pytest.mark.parametrize("quality", [30, 60, 90])
def test_jpeg_quality_is_estimated_from_quantization_tables(astronaut, quality):
    assert abs(q.measure(encode(astronaut, "JPEG", quality=quality))["jpeg_quality"] - quality) <= 5
    assert abs(q.measure(encode(astronaut.convert("L"), "JPEG", quality=quality))["jpeg_quality"] - quality) <= 5


def test_jpeg_quality_is_none_for_png(astronaut):
    assert q.measure(encode(astronaut))["jpeg_quality"] is None


# ---------------------------------------------------------------------------------------------------------------
# Hashes
# ---------------------------------------------------------------------------------------------------------------

def test_pixel_hash_depends_on_pixels_only():
    image = procedural_photo(3, (120, 90))
    png, bmp = q.measure(encode(image, "PNG")), q.measure(encode(image, "BMP"))
    assert png["pixel_hash"] == bmp["pixel_hash"]
    changed = image.copy()
    changed.putpixel((5, 7), tuple(255 - c for c in image.getpixel((5, 7))))
    assert q.measure(encode(changed, "PNG"))["pixel_hash"] != png["pixel_hash"]


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_phash_is_close_for_a_resized_recompressed_copy_and_far_for_another_photo(astronaut, coffee):
    original = q.measure(encode(astronaut, "PNG"))
    copy = q.measure(encode(astronaut.resize((300, 300), Image.Resampling.BILINEAR), "JPEG", quality=60))
    other = q.measure(encode(coffee, "PNG"))
    assert hamming(original["phash"], copy["phash"]) <= 8
    assert hamming(original["phash"], other["phash"]) >= 20
    assert hamming(original["dhash"], copy["dhash"]) <= 12
    import imagehash

    gray = decode(encode(astronaut, "PNG"), 256).gray
    assert hamming(original["phash"], int(str(imagehash.phash(gray, hash_size=8)), 16)) <= 4


# ---------------------------------------------------------------------------------------------------------------
# Decoding: size, orientation, modes
# ---------------------------------------------------------------------------------------------------------------

def test_large_jpeg_is_decoded_at_reduced_size(coffee):
    big = coffee.resize((2400, 1600))
    decoded = decode(encode(big, "JPEG", quality=85), 256)
    image, width, height = decoded.rgb, decoded.width, decoded.height
    assert (width, height) == (2400, 1600)
    assert image.mode == "RGB" and max(image.size) == q.ANALYSIS_SIDE
    assert image.size == (256, 171)
    decoded = decode(encode(big, "JPEG", quality=85), 128)
    small, w2, h2 = decoded.rgb, decoded.width, decoded.height
    assert max(small.size) == 128 and (w2, h2) == (2400, 1600)
    decoded = decode(encode(coffee.resize((40, 30))), 256)
    tiny, w3, h3 = decoded.rgb, decoded.width, decoded.height
    assert tiny.size == (40, 30) and (w3, h3) == (40, 30)  # never upscaled


def test_exif_rotated_jpeg_reports_upright_size():
    image = procedural_photo(1, (400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    result = q.measure(encode(image, "JPEG", quality=90, exif=exif))
    assert (result["width"], result["height"]) == (200, 400)
    assert result["analysis_height"] > result["analysis_width"]
    plain = q.measure(encode(image, "JPEG", quality=90))
    assert (plain["width"], plain["height"]) == (400, 200)


def test_cmyk_16bit_palette_alpha_and_animated_gif_all_measure(astronaut):
    cmyk = q.measure(encode(astronaut.convert("CMYK"), "JPEG", quality=90))
    assert cmyk["width"] == 512 and cmyk["grayscale_score"] > 0.5

    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    sixteen = Image.fromarray(ramp)
    assert sixteen.mode.startswith("I;16")
    result16 = q.measure(encode(sixteen, "PNG"))
    assert result16["brightness"] == pytest.approx(0.5, abs=0.03)  # scaled from the 16-bit range, not clipped
    assert result16["grayscale_score"] == 0.0

    palette = astronaut.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    result_p = q.measure(encode(palette, "PNG"))
    assert result_p["width"] == 512

    transparent = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    assert flags_of(q.measure(encode(transparent, "PNG")))["is_light"]  # composited over white

    frames = [procedural_photo(i, (80, 60)).convert("P") for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = q.measure(buffer.getvalue())
    assert (gif["width"], gif["height"]) == (80, 60)
    first = q.measure(encode(frames[0], "GIF"))
    assert gif["pixel_hash"] == first["pixel_hash"]  # the first frame

    la = q.measure(encode(astronaut.convert("LA"), "PNG"))
    assert la["grayscale_score"] == 0.0
    one_bit = q.measure(encode(astronaut.convert("1"), "PNG"))
    assert one_bit["grayscale_score"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Real photos (CIFAR-10 sample)
# ---------------------------------------------------------------------------------------------------------------

def test_cifar_photos_are_mostly_clean_and_their_blurred_copies_blurry(cifar_sample):
    """Real 32x32 photos (the conftest fixture skips, saying why, when the CIFAR-10 sample is absent)."""
    files = sorted((cifar_sample / "test").glob("*/*.jpg"))[::10][:100]
    assert len(files) >= 50
    clean = [q.measure(path.read_bytes()) for path in files]
    unusable = sum(flags_of(r)["is_unusable"] for r in clean)
    assert unusable <= 0.02 * len(files), unusable
    assert sum(flags_of(r)["is_blurry"] for r in clean) <= 0.05 * len(files)
    blurred = [q.measure(encode(Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(1.5)))) for p in files]
    assert sum(flags_of(r)["is_blurry"] for r in blurred) >= 0.9 * len(files)


# ---------------------------------------------------------------------------------------------------------------
# Streaming over many files
# ---------------------------------------------------------------------------------------------------------------

def test_measure_stream_returns_every_id_once_and_reports_bad_items(tmp_path):
    items = []
    for i in range(20):
        path = tmp_path / f"img_{i:02d}.jpg"
        path.write_bytes(encode(procedural_photo(i, (96, 72)), "JPEG", quality=85))
        items.append((f"id{i}", str(path)))
    items.append(("missing", str(tmp_path / "nope.jpg")))
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    items.append(("junk", str(tmp_path / "junk.jpg")))

    consumed = []

    def lazily():
        for item in items:
            consumed.append(item[0])
            yield item

    results = list(q.measure_stream(lazily(), workers=2, max_in_flight=2, chunk_size=3))
    ids = [image_id for image_id, _ in results]
    assert sorted(ids) == sorted(i for i, _ in items) and len(ids) == len(set(ids))
    by_id = dict(results)
    assert isinstance(by_id["missing"], Exception)
    assert isinstance(by_id["junk"], ValueError)
    for i in range(20):
        assert isinstance(by_id[f"id{i}"], dict) and by_id[f"id{i}"]["width"] == 96
    # In-process mode gives the same measurements.
    inline = dict(q.measure_stream(items[:3], workers=1))
    assert inline["id0"] == by_id["id0"]


def test_measure_stream_survives_a_worker_that_dies(tmp_path, monkeypatch):
    """An item that kills its worker process is retried once in a fresh pool, then reported; the rest succeed."""
    import multiprocessing
    import os

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method to hand the patched function to the workers")
    real = q.measure_uri

    def dies_on_poison(uri, analysis_side=q.ANALYSIS_SIDE):
        if uri.endswith("poison.jpg"):
            os._exit(1)
        return real(uri, analysis_side)

    monkeypatch.setattr(q, "measure_uri", dies_on_poison)
    items = []
    for i in range(8):
        path = tmp_path / f"img_{i}.jpg"
        path.write_bytes(encode(procedural_photo(i, (64, 48)), "JPEG"))
        items.append((f"id{i}", str(path)))
    items.insert(3, ("poison", str(tmp_path / "poison.jpg")))
    results = dict(q.measure_stream(items, workers=2, chunk_size=2, start_method="fork"))
    assert set(results) == {image_id for image_id, _ in items}
    assert isinstance(results["poison"], Exception)
    assert all(isinstance(results[f"id{i}"], dict) for i in range(8))


def test_measure_stream_reads_s3_uris(s3_endpoint, s3_bucket, tmp_path):
    """Workers read s3://bucket/key themselves, each with its own client built from the reader's S3 settings
    (moto on loopback), not from whatever environment a long-lived fork server started with."""
    import boto3

    from cv_dataops.core.storage import S3ClientSettings, UriReader

    client = boto3.client("s3")
    items = []
    for i in range(5):
        client.put_object(Bucket=s3_bucket, Key=f"images/{i}.jpg", Body=encode(procedural_photo(i, (80, 60)), "JPEG"))
        items.append((f"s3-{i}", f"s3://{s3_bucket}/images/{i}.jpg"))
    items.append(("absent", f"s3://{s3_bucket}/images/absent.jpg"))
    local = tmp_path / "local.png"
    local.write_bytes(encode(procedural_photo(9, (80, 60))))
    items.append(("local", str(local)))
    read = UriReader(S3ClientSettings(endpoint_url=s3_endpoint, aws_access_key_id="testing",
                                      aws_secret_access_key="testing", region_name="us-east-1"))
    results = dict(q.measure_stream(items, workers=2, read=read))
    assert set(results) == {image_id for image_id, _ in items}
    assert all(isinstance(results[f"s3-{i}"], dict) and results[f"s3-{i}"]["width"] == 80 for i in range(5))
    assert isinstance(results["absent"], Exception)
    assert isinstance(results["local"], dict)
    inline = dict(q.measure_stream(items[:1], workers=1, read=read))
    assert inline["s3-0"]["pixel_hash"] == results["s3-0"]["pixel_hash"]
