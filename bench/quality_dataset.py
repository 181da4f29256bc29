"""Build the quality benchmark's files: real photos with each issue injected at known strengths.

Base photos are the CIFAR-10 sample (32x32, read in place from ../shared) and larger photos cut from the real
photographs scikit-image ships (astronaut, coffee, chelsea, ...). Every written file carries its ground truth: the
set of issues injected into it, and for duplicates the file it duplicates.
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


@dataclass
class Sample:
    name: str
    issues: set[str] = field(default_factory=set)
    strength: str = ""
    duplicate_of: str | None = None
    duplicate_kind: str | None = None  # "exact" or "near"


# The retina fundus photo is left out: at native resolution it is genuinely soft, so its tiles are not clean.
COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def _sources() -> list[Image.Image]:
    """Real colour photographs that ship with scikit-image, plus scikit-learn's two sample photos."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    return ([Image.fromarray(getattr(data, name)()[..., :3]) for name in COLOUR_PHOTOS]
            + [Image.fromarray(array) for array in load_sample_images().images])


def skimage_tiles(limit: int, size: tuple[int, int] = (128, 96)) -> list[Image.Image]:
    """Distinct photos: non-overlapping ``size`` tiles of the bundled real colour photographs, at their native
    resolution (no resampling, so no tile starts out blurred), skipping tiles that are nearly black or flat (the
    retina image's border) since those would be real issues in a set meant to start clean."""
    tiles = []
    for source in _sources():
        for top in range(0, source.height - size[1] + 1, size[1]):
            for left in range(0, source.width - size[0] + 1, size[0]):
                tile = source.crop((left, top, left + size[0], top + size[1]))
                luma = np.asarray(tile.convert("L"), dtype=np.float32)
                if luma.mean() > 40 and luma.std() > 12:
                    tiles.append(tile)
    order = np.random.default_rng(0).permutation(len(tiles))
    return [tiles[i] for i in order[:limit]]


def skimage_photos(count: int, seed: int = 0, size: tuple[int, int] = (1024, 768)) -> list[Image.Image]:
    """``count`` large photos for timing: random crops of scikit-image's photographs, resized to ``size``."""
    sources = _sources()
    rng = np.random.default_rng(seed)
    photos = []
    for index in range(count):
        source = sources[index % len(sources)]
        w = int(source.width * rng.uniform(0.6, 1.0))
        h = min(source.height, int(w * size[1] / size[0]))
        x, y = rng.integers(0, source.width - w + 1), rng.integers(0, source.height - h + 1)
        photos.append(source.crop((x, y, x + w, y + h)).resize(size, Image.BICUBIC))
    return photos


def cifar_photos(count: int) -> list[Image.Image]:
    files = sorted((CIFAR / "test").glob("*/*.jpg"))[:: max(1, 1000 // count)][:count]
    return [Image.open(f).convert("RGB") for f in files]


def _gray(image: Image.Image) -> Image.Image:
    return image.convert("L").convert("RGB")


def inject(image: Image.Image, issue: str, strength: int, rng: np.random.Generator) -> Image.Image:
    """``issue`` at strength 1 (mild) to 3 (strong). Dark and light model under- and over-exposure: a gain on the
    linear signal, clipped like a sensor."""
    if issue == "dark":
        return ImageEnhance.Brightness(image).enhance((0.35, 0.2, 0.08)[strength - 1])
    if issue == "light":
        array = np.asarray(image, dtype=np.float32)
        gain = (3.0, 5.0, 8.0)[strength - 1]
        return Image.fromarray(np.clip(array * gain + 40 * strength, 0, 255).astype(np.uint8))
    if issue == "blurry":
        radius = max(image.size) * (0.008, 0.015, 0.03)[strength - 1]
        return image.filter(ImageFilter.GaussianBlur(radius))
    if issue == "low_information":
        mean = np.asarray(image, dtype=np.float32).mean(axis=(0, 1))
        noise = rng.normal(0, (6, 3, 1)[strength - 1], (image.height, image.width, 1))
        return Image.fromarray(np.clip(mean + noise, 0, 255).astype(np.uint8))
    if issue == "odd_aspect_ratio":
        ratio = (3.5, 5, 8)[strength - 1]
        return image.resize((int(image.width * ratio ** 0.5), max(8, int(image.height / ratio ** 0.5))))
    if issue == "odd_size":
        factor = (0.25, 0.15, 0.08)[strength - 1] if strength % 2 else (4, 6, 8)[strength - 1]
        return image.resize((max(8, int(image.width * factor)), max(8, int(image.height * factor))))
    if issue == "grayscale":
        return _gray(image)
    raise ValueError(issue)


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


def build(directory: Path, photos: list[Image.Image], prefix: str, seed: int = 0) -> list[Sample]:
    """Write clean photos, one injected copy per issue and strength, and duplicates; return the ground truth.

    Photos are split: a third stay clean, the rest each receive one issue at one strength (rotating), and a few
    clean photos get one exact and one near duplicate each.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []

    def save(image: Image.Image, sample: Sample, image_format: str = "JPEG", **options) -> None:
        path = directory / sample.name
        image.save(path, image_format, **({"quality": 92} if image_format == "JPEG" else options))
        samples.append(sample)

    plan = [(issue, strength) for strength in (1, 2, 3) for issue in ISSUES]
    for index, photo in enumerate(photos):
        role = index % 3
        if role == 0:
            name = f"{prefix}_{index:04d}_clean.png"
            save(photo, Sample(name), "PNG")
            if index % 6 == 0:
                twin = f"{prefix}_{index:04d}_exact.png"
                note = PngInfo()
                note.add_text("Comment", "exact copy")  # different bytes, identical pixels
                save(photo.copy(), Sample(twin, duplicate_of=name, duplicate_kind="exact"), "PNG", pnginfo=note)
                transform = NEAR_TRANSFORMS[(index // 6) % len(NEAR_TRANSFORMS)]
                save(near_duplicate(photo, transform), Sample(f"{prefix}_{index:04d}_near_{transform}.jpg",
                                                             duplicate_of=name, duplicate_kind="near",
                                                             strength=transform))
        else:
            issue, strength = plan[(index // 3 * 2 + role - 1) % len(plan)]
            name = f"{prefix}_{index:04d}_{issue}{strength}.png"
            save(inject(photo, issue, strength, rng), Sample(name, {issue}, str(strength)), "PNG")
    return samples
