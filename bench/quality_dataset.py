"""Build the quality benchmark's files: real photos with each issue injected with known parameters.

Ground truth never comes from our own scores: an image has an issue because a transform with a known parameter put
it there (see :func:`inject`), and a clean image is an untouched photo or an ordinary variant of one (soft,
upscaled, heavily compressed), which has no issue by construction.

Photo sources are split once, by photograph (:data:`FIT_SOURCES`, :data:`HELD_OUT_SOURCES`), and the CIFAR-10
sample by its own train/test split: ``bench/fit_quality_thresholds.py`` fits on the fit half only, and
``bench/quality_benchmark.py accuracy`` scores on the held-out half, CIFAR-10 test and scikit-learn's digits, none
of which played any part in fitting.

Blur ground truth is relative to the image: a Gaussian (or motion) blur whose sigma is at least 1% of the image's
longer side and at least 1.5 pixels. An injection that leaves 90% of the pixels at one value (a near-black or
blown-out frame) also made the image blank: its ground truth includes low_information (:func:`is_blank`). Clean variants stay below 0.3% of the side (soft ones) or are bicubic
upscales (2x from a side of 256 up, 1.5x below), so the two classes are separated by a gap nobody's score is asked to split.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from PIL.PngImagePlugin import PngInfo

ISSUES = ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "odd_size", "grayscale")
CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-sample"

# Photographs split once: the fitting script sees only FIT_SOURCES (and CIFAR-10 train); the benchmark scores on
# HELD_OUT_SOURCES (and CIFAR-10 test, and digits). "sk:" are scikit-image's, "sklearn:" scikit-learn's.
FIT_SOURCES = ("sk:astronaut", "sk:rocket", "sk:immunohistochemistry", "sk:hubble_deep_field", "sk:retina")
HELD_OUT_SOURCES = ("sk:coffee", "sk:chelsea", "sk:motorcycle_left", "sk:motorcycle_right", "sklearn:china",
                    "sklearn:flower")
# Real single-channel photographs, used as grayscale positives (never as clean colour photos).
FIT_GRAY_SOURCES = ("sk:camera", "sk:moon", "sk:grass", "sk:gravel", "sk:brick", "sk:page")
HELD_OUT_GRAY_SOURCES = ("sk:coins", "sk:clock", "sk:text", "sk:cell")

# The ordinary clean variants of a photo (no issue by construction).
CLEAN_VARIANTS = ("plain", "soft", "upscaled", "compressed")


@dataclass
class Sample:
    name: str
    issues: set[str] = field(default_factory=set)
    strength: str = ""
    unusable: bool = False        # injected so strongly that no model should train on it
    unusable_kind: str = ""       # which injection made it unusable (dark, light, blurry, low_information)
    grayscale_kind: str = ""      # "single-channel" or "rgb-equal" for grayscale positives
    duplicate_of: str | None = None
    duplicate_kind: str | None = None  # "exact" or "near"


def load_source(name: str) -> Image.Image:
    kind, _, key = name.partition(":")
    if kind == "sklearn":
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{key}.jpg"))
    from skimage import data

    if key in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = data.stereo_motorcycle()
        return Image.fromarray(left if key == "motorcycle_left" else right)
    array = getattr(data, key)()
    if array.ndim == 3:
        return Image.fromarray(array[..., :3])
    return Image.fromarray(array).convert("L")


def is_clean_base(image: Image.Image) -> bool:
    """A base photo fit to start clean: not nearly black or flat (the retina image's border, black sky) and not
    already gray (CIFAR-10 has black-and-white photos). A rule on the source pixels, applied before any
    injection, so the clean class holds no real issue."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    spread = np.percentile(rgb.max(axis=-1) - rgb.min(axis=-1), 90)
    return luma.mean() > 40 and luma.std() > 12 and spread > 12


def _sources(names: tuple[str, ...]) -> list[Image.Image]:
    return [load_source(name) for name in names]


def photo_crops(names: tuple[str, ...], count: int, side: int, seed: int) -> list[Image.Image]:
    """``count`` random crops of the named photographs, resized so the longer side is about ``side`` (+-20%),
    aspect ratios between 3:4 and 16:9; never upscaled by more than the crop allows (crops are taken at least
    as large as the output, so every crop starts sharp)."""
    sources = _sources(names)
    rng = np.random.default_rng(seed)
    photos: list[Image.Image] = []
    index = -1
    while len(photos) < count:
        index += 1
        source = sources[index % len(sources)]
        aspect = float(rng.choice([0.75, 1.0, 4 / 3, 1.5, 16 / 9]))
        out_long = int(side * rng.uniform(0.8, 1.2))
        out = (out_long, max(8, round(out_long / aspect))) if aspect >= 1 else (max(8, round(out_long * aspect)),
                                                                                 out_long)
        scale = rng.uniform(0.5, 1.0)  # the crop's share of the source, limited by the source's size
        w = max(out[0], int(source.width * scale))
        h = int(w * out[1] / out[0])
        if h > source.height:
            h = source.height
            w = int(h * out[0] / out[1])
        w, h = min(w, source.width), min(h, source.height)
        x, y = int(rng.integers(0, source.width - w + 1)), int(rng.integers(0, source.height - h + 1))
        crop = source.crop((x, y, x + w, y + h))
        crop = crop.resize(out, Image.LANCZOS) if crop.size != out else crop
        if source.mode == "L" or is_clean_base(crop):
            photos.append(crop)
    return photos


def skimage_photos(count: int, seed: int = 0, size: tuple[int, int] = (1024, 768)) -> list[Image.Image]:
    """``count`` large photos for timing: random crops of the bundled photographs, resized to ``size``."""
    sources = _sources(FIT_SOURCES + HELD_OUT_SOURCES)
    rng = np.random.default_rng(seed)
    photos = []
    for index in range(count):
        source = sources[index % len(sources)]
        w = int(source.width * rng.uniform(0.6, 1.0))
        h = min(source.height, int(w * size[1] / size[0]))
        x, y = rng.integers(0, source.width - w + 1), rng.integers(0, source.height - h + 1)
        photos.append(source.crop((x, y, x + w, y + h)).resize(size, Image.BICUBIC))
    return photos


def cifar_photos(count: int, split: str = "test") -> list[Image.Image]:
    """``count`` CIFAR-10 photos of ``split``, spread over the classes, that pass :func:`is_clean_base`."""
    files = sorted((CIFAR / split).glob("*/*.jpg"))
    photos = [Image.open(f).convert("RGB") for f in files[:: max(1, len(files) // (2 * count))]]
    return [photo for photo in photos if is_clean_base(photo)][:count]


def digit_images(count: int, size: int = 64) -> list[Image.Image]:
    """scikit-learn's handwritten digits as the demo writes them: single-channel, nearest-neighbour to ``size``."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    picks = np.linspace(0, len(images) - 1, count).astype(int)
    return [Image.fromarray(np.rint(images[i] * (255 / 16)).astype(np.uint8)).resize((size, size), Image.NEAREST)
            for i in picks]


# ---------------------------------------------------------------------------------------------------------------
# Transforms with known parameters
# ---------------------------------------------------------------------------------------------------------------

MIN_BLUR_PIXELS = 1.5   # below this a blur is ordinary resampling softness (a bicubic 1.5x upscale), not blurry


def blur_sigma(image: Image.Image, fraction: float) -> float:
    """The ground-truth blur: ``fraction`` of the longer side, and never under MIN_BLUR_PIXELS."""
    return max(fraction * max(image.size), MIN_BLUR_PIXELS)


def _motion(image: Image.Image, length: float, angle: float) -> Image.Image:
    from scipy import ndimage

    n = max(3, int(round(length)) | 1)
    kernel = np.zeros((n, n), dtype=np.float32)
    c = n // 2
    for t in np.linspace(-c, c, 4 * n):
        kernel[int(round(c + t * np.sin(angle))), int(round(c + t * np.cos(angle)))] = 1
    kernel /= kernel.sum()
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        out = ndimage.convolve(array, kernel, mode="reflect")
    else:
        out = np.stack([ndimage.convolve(array[..., i], kernel, mode="reflect") for i in range(3)], axis=-1)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


BLUR_FRACTIONS = (0.01, 0.02, 0.04)     # flag-level blur, strengths 1..3
UNUSABLE_BLUR_FRACTION = 0.08           # blurred beyond recognition


def inject(image: Image.Image, issue: str, strength: int, rng: np.random.Generator) -> Image.Image:
    """``issue`` at strength 1 (mild) to 3 (strong), or 4: unusable (near-black, blown out, blank, blurred beyond
    recognition). Dark and light model under- and over-exposure as a gain on the signal, clipped like a sensor;
    light at odd strengths is a washed-out (lifted) image instead."""
    if issue == "dark":
        return ImageEnhance.Brightness(image).enhance((0.3, 0.18, 0.1, 0.03)[strength - 1])
    if issue == "light":
        array = np.asarray(image, dtype=np.float32)
        if strength == 4:
            out = array * 12 + 120
        elif strength % 2:   # washed out: the darkest pixels lifted towards white
            lift = (0.6, None, 0.8)[strength - 1]
            out = 255 * lift + array * (1 - lift)
        else:
            out = array * 3.5 + 60
        return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if issue == "blurry":
        fraction = UNUSABLE_BLUR_FRACTION if strength == 4 else BLUR_FRACTIONS[strength - 1]
        sigma = blur_sigma(image, fraction)
        if strength == 2:    # motion blur of the same spread (a line of length ~ 3.5 sigma)
            return _motion(image, 3.5 * sigma, float(rng.uniform(0, np.pi)))
        return image.filter(ImageFilter.GaussianBlur(sigma))
    if issue == "low_information":
        array = np.asarray(image, dtype=np.float32)
        mean = array.mean(axis=(0, 1))
        noise = rng.normal(0, (5, 3, 1.5, 0.5)[strength - 1], array.shape[:2] + ((1,) if array.ndim == 3 else ()))
        out = np.clip(mean + noise, 0, 255).astype(np.uint8)
        return Image.fromarray(out.squeeze(-1) if out.ndim == 3 and out.shape[-1] == 1 else out)
    if issue == "odd_aspect_ratio":
        ratio = (3.5, 5, 8)[strength - 1]
        return image.resize((int(image.width * ratio ** 0.5), max(8, int(image.height / ratio ** 0.5))))
    if issue == "odd_size":
        # Upscaling a small image would also blur it (ground truth for two issues), so only sides >= 200 grow.
        factor = (0.12, 6 if max(image.size) >= 200 else 0.2, 0.06)[strength - 1]
        return image.resize((max(8, int(image.width * factor)), max(8, int(image.height * factor))), Image.LANCZOS)
    if issue == "grayscale":
        return image.convert("L")
    raise ValueError(issue)


BLANK_SHARE = 0.9


def is_blank(image: Image.Image) -> bool:
    """At least BLANK_SHARE of the pixels share one value: whatever transform did it (a near-black or blown-out
    frame clips nearly everything), the image is also blank, so low_information is part of its ground truth."""
    array = np.asarray(image.convert("RGB")).reshape(-1, 3)
    if np.bincount(array[:, 1]).max() < BLANK_SHARE * len(array):   # pixels sharing a colour share its green too
        return False
    _, counts = np.unique(array, axis=0, return_counts=True)
    return counts.max() >= BLANK_SHARE * len(array)


def clean_variant(image: Image.Image, variant: str) -> tuple[Image.Image, int]:
    """An ordinary, issue-free variant of a photo and the JPEG quality to save it with."""
    if variant == "plain":
        return image, 90
    if variant == "soft":   # a soft lens: Gaussian of 0.25% of the side (well under the 1% that is blurry)
        return image.filter(ImageFilter.GaussianBlur(0.0025 * max(image.size))), 90
    if variant == "upscaled":  # a bicubic upscale of a smaller copy: 2x (1.5x for small images), same size
        w, h = image.size
        factor = 2.0 if max(w, h) >= 256 else 1.5
        small = (max(1, round(w / factor)), max(1, round(h / factor)))
        return image.resize(small, Image.LANCZOS).resize((w, h), Image.BICUBIC), 90
    if variant == "compressed":
        return image, 15
    raise ValueError(variant)


def near_duplicate(image: Image.Image, transform: str) -> Image.Image:
    w, h = image.size
    if transform == "resize":
        return image.resize((w // 2, h // 2), Image.BILINEAR)
    if transform == "recompress":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=40)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if transform == "crop":
        dx, dy = int(w * 0.05), int(h * 0.05)
        return image.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.BICUBIC)
    if transform == "brighter":
        return ImageEnhance.Brightness(image).enhance(1.2)
    if transform == "colour":
        return ImageEnhance.Color(image).enhance(1.5)
    raise ValueError(transform)


NEAR_TRANSFORMS = ("resize", "recompress", "crop", "brighter", "colour")


# ---------------------------------------------------------------------------------------------------------------
# A set of files with its ground truth
# ---------------------------------------------------------------------------------------------------------------

def build(directory: Path, photos: list[Image.Image], prefix: str, seed: int = 0, clean: int | None = None,
          per_issue: int = 9, unusable_per_kind: int = 3, gray_photos: list[Image.Image] = (),
          duplicates: int = 6) -> list[Sample]:
    """Write ``clean`` clean photos (rotating through :data:`CLEAN_VARIANTS`), ``per_issue`` injected copies per
    issue type (rotating strengths 1..3, each from a different photo), ``unusable_per_kind`` unusable copies each
    of dark, light, blurry and low_information, grayscale positives (half single-channel files, half RGB with
    equal channels, plus ``gray_photos`` saved as single-channel files), and for ``duplicates`` clean photos one
    exact and one near copy. Every file is a JPEG (quality 90, or 15 for the compressed variant) except every
    fourth, which is a PNG. Photos are used in order, each once, so ``photos`` must be long enough
    (:func:`photos_needed`)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clean = clean if clean is not None else len(photos) - photos_needed(0, per_issue, unusable_per_kind)
    samples: list[Sample] = []
    pool = iter(photos)

    def save(image: Image.Image, sample: Sample, quality: int = 90) -> None:
        png = len(samples) % 4 == 3 and quality == 90
        sample.name = f"{prefix}_{len(samples):04d}_{sample.name}.{'png' if png else 'jpg'}"
        if png:
            image.save(directory / sample.name, "PNG")
        else:
            image.save(directory / sample.name, "JPEG", quality=quality)
        samples.append(sample)

    for index in range(clean):
        photo = next(pool)
        variant = CLEAN_VARIANTS[index % len(CLEAN_VARIANTS)]
        image, quality = clean_variant(photo, variant)
        save(image, Sample(f"clean_{variant}", strength=variant), quality)
        if index < duplicates:
            original = samples[-1].name
            exact = f"{prefix}_{len(samples):04d}_exact.png"
            note = PngInfo()
            note.add_text("Comment", "exact copy")  # different bytes, identical pixels
            Image.open(directory / original).save(directory / exact, "PNG", pnginfo=note)
            samples.append(Sample(exact, duplicate_of=original, duplicate_kind="exact"))
            transform = NEAR_TRANSFORMS[index % len(NEAR_TRANSFORMS)]
            save(near_duplicate(photo, transform), Sample(f"near_{transform}", duplicate_of=original,
                                                          duplicate_kind="near", strength=transform))
    for issue in ISSUES:
        for index in range(per_issue):
            strength = index % 3 + 1
            image = inject(next(pool), issue, strength, rng)
            kind = ""
            if issue == "grayscale":
                kind = "single-channel" if index % 2 == 0 else "rgb-equal"
                image = image if kind == "single-channel" else image.convert("RGB")
            issues = {issue, "low_information"} if is_blank(image) else {issue}
            save(image, Sample(f"{issue}{strength}", issues, str(strength), grayscale_kind=kind))
    for photo in gray_photos:
        save(photo.convert("L"), Sample("grayscale_photo", {"grayscale"}, "photo", grayscale_kind="single-channel"))
    for issue in ("dark", "light", "blurry", "low_information"):
        for _ in range(unusable_per_kind):
            image = inject(next(pool), issue, 4, rng)
            issues = {issue, "low_information"} if is_blank(image) else {issue}
            save(image, Sample(f"{issue}_unusable", issues, "4", unusable=True, unusable_kind=issue))
    return samples


def photos_needed(clean: int, per_issue: int = 9, unusable_per_kind: int = 3) -> int:
    return clean + per_issue * len(ISSUES) + 4 * unusable_per_kind
