"""Small synthetic photos with known ground truth, for the demo, the tests and the benchmarks.

Why synthetic: cv-dataops must be demonstrable and testable offline, with labels, capture conditions and defects
known exactly. Every scene is drawn procedurally (no downloads), deterministically from a seed, and its
scenario attributes are sampled from weights the caller can shift to produce *drifted* batches.

Layout written by :func:`generate_demo` (ImageFolder: the first folder is the label)::

    <dest>/<class>/scene_<index:05d>.jpg          good scenes (kind "scene", expected outcome "image")
    <dest>/<class>/scene_<index:05d>_partial.jpg  first half of that scene's bytes  -> quarantine:truncated
    <dest>/<class>/scene_<index:05d>_copy.jpg     exact byte copy of that scene     -> duplicate_of:<scene path>
    <dest>/<class>/junk_notes.jpg                 a text file                       -> quarantine:not_an_image
    <dest>/<class>/junk_error_page.png            an HTML error page                -> quarantine:not_an_image
    <dest>/<class>/junk_empty.jpg                 zero bytes                        -> quarantine:empty_file
    <dest>/<class>/junk_tiny.jpg                  a valid 4x4 JPEG                  -> quarantine:too_small

The bad files sit inside class folders, as they would in a real upload. A copy shares its source's folder and its
name sorts after the source's, so an ingester that walks keys in sorted order keeps the source as the image.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")

DEFAULT_SCENARIO_WEIGHTS: dict[str, dict[str, float]] = {
    "background": {"sky": 0.3, "grass": 0.3, "road": 0.2, "indoor": 0.2},
    "lighting": {"day": 0.6, "dusk": 0.25, "night": 0.15},
    "weather": {"clear": 0.6, "rain": 0.2, "fog": 0.2},
    "camera": {"cam_a": 0.7, "cam_b": 0.3},
}
# The values each scenario attribute can take, in sampling order.
SCENARIO_VALUES: dict[str, tuple[str, ...]] = {name: tuple(w) for name, w in DEFAULT_SCENARIO_WEIGHTS.items()}

# Capture times start here and advance CAPTURE_INTERVAL_S per scene index (plus jitter under half an interval),
# so timestamps increase across files and across batches generated with increasing start_index.
CAPTURE_START = datetime(2024, 6, 1, 8, 0, 0)
CAPTURE_INTERVAL_S = 45

DEMO_COLUMNS: tuple[str, ...] = ("relative_path", "label", "background", "lighting", "weather", "camera",
                                 "captured_at", "kind", "expected_outcome")


@dataclass(frozen=True)
class CameraProfile:
    """What distinguishes the two demo cameras: EXIF identity, resolution and image quality."""

    make: str
    model: str
    size: tuple[int, int]  # (width, height)
    jpeg_quality: int
    colour_cast: tuple[float, float, float]  # RGB gains
    noise_sigma: float  # sensor noise, in 0..255 units
    blur_radius: float  # soft lens
    vignette: float  # brightness lost in the corners


CAMERAS: dict[str, CameraProfile] = {
    "cam_a": CameraProfile("Helios", "HX-320", (320, 240), 92, (1.0, 1.0, 1.0), 0.0, 0.0, 0.12),
    "cam_b": CameraProfile("Corvid", "CV-256 Mini", (256, 256), 60, (1.0, 1.07, 0.84), 7.0, 0.7, 0.35),
}


@dataclass(frozen=True)
class _Lighting:
    gain: float
    tint: tuple[float, float, float]
    contrast: float
    extra_noise: float  # darker scenes mean higher sensor gain, hence more noise


_LIGHTING: dict[str, _Lighting] = {
    "day": _Lighting(1.0, (1.0, 1.0, 1.0), 1.0, 0.0),
    "dusk": _Lighting(0.72, (1.08, 0.84, 0.64), 0.9, 1.5),
    "night": _Lighting(0.36, (0.72, 0.82, 1.1), 0.8, 3.5),
}

# Circumradius multipliers that give the four shapes a similar visual size.
_SHAPE_SCALE: dict[str, float] = {"circle": 1.0, "square": 1.15, "triangle": 1.3, "star": 1.3}

# Extra entropy words that keep the label shuffle and the bad files on random streams of their own.
_LABEL_STREAM = 0x1AB
_BAD_STREAM = 0xBAD


@dataclass(frozen=True)
class SceneTruth:
    relative_path: str  # e.g. "circle/scene_00012.jpg" (POSIX separators)
    label: str
    background: str
    lighting: str
    weather: str
    camera: str
    captured_at: str  # ISO 8601, no time zone (EXIF DateTimeOriginal has none)


@dataclass(frozen=True)
class BadFileTruth:
    relative_path: str
    kind: str  # "truncated", "not_an_image", "tiny", "duplicate" or "empty"
    expected_outcome: str  # "quarantine:<reason>", "duplicate_of:<relative_path>" or "image"
    source_path: str | None = None  # the good scene a truncated file or a copy was made from


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")


# ---------------------------------------------------------------------------------------------------------------
# Texture helpers. Images are float32 arrays (3, height, width) in 0..255 until the camera quantises them:
# channel-first, so (height, width) masks broadcast over the colour planes cheaply. Colours are (3, 1, 1).


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Value noise (h, w), roughly in [0, 1]: a coarse random grid upsampled bicubically (clouds, patches)."""
    coarse = rng.random((cells_y, cells_x), dtype=np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))


def _vertical_gradient(h: int, w: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[None, :, None]
    return np.repeat(top * (1 - t) + bottom * t, w, axis=2)


def _colour(rgb: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    return np.asarray(rgb, np.float32).reshape(3, 1, 1)


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float) -> np.ndarray:
    """A colour near `rgb`, so no two backgrounds are quite the same."""
    return _colour(np.asarray(rgb) + rng.uniform(-amount, amount, 3))


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    rgb = Image.new("HSV", (1, 1), (round(hue * 255), round(saturation * 255), round(value * 255))).convert("RGB")
    return _colour(rgb.getpixel((0, 0)))


def _to_image(img: np.ndarray) -> Image.Image:
    """Quantise (rounding to nearest) and convert to an RGB image."""
    quantised = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(quantised.transpose(1, 2, 0)))


def _blur(img: np.ndarray, radius: float) -> np.ndarray:
    blurred = np.asarray(_to_image(img).filter(ImageFilter.GaussianBlur(radius)))
    return np.ascontiguousarray(blurred.transpose(2, 0, 1), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Backgrounds


def _sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = _vertical_gradient(h, w, _jitter(rng, (55, 115, 195), 15), _jitter(rng, (175, 205, 235), 10))
    clouds = 0.6 * _smooth_noise(rng, h, w, 4, 6) + 0.4 * _smooth_noise(rng, h, w, 9, 12)
    cover = np.clip((clouds - rng.uniform(0.45, 0.65)) * 3.0, 0.0, 1.0)
    img *= 1 - cover
    img += 242 * cover
    return img


def _landscape(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, int]:
    """Sky over a textured field with a tree line on the horizon; returns the image and the horizon row."""
    img = _sky(rng, h, w)
    horizon = int(h * rng.uniform(0.25, 0.4))
    rows = h - horizon
    field = _vertical_gradient(rows, w, _jitter(rng, (120, 160, 90), 12), _jitter(rng, (40, 105, 35), 12))
    patches = (_smooth_noise(rng, rows, w, 6, 10) - 0.5) * 40
    # Vertical streaks that get stronger towards the camera read as grass blades.
    blades = np.repeat(rng.standard_normal((rows // 3 + 1, w), dtype=np.float32), 3, axis=0)[:rows]
    blades *= np.linspace(4, 18, rows, dtype=np.float32)[:, None]
    img[:, horizon:] = field + (patches + blades)
    tree_tops = horizon - 3 - _smooth_noise(rng, 1, w, 1, max(2, w // 10))[0] * h * 0.08
    sky_rows = np.arange(horizon)[:, None]
    trees = sky_rows >= tree_tops[None, :]
    foliage = _jitter(rng, (35, 65, 40), 8) * (0.8 + 0.4 * _smooth_noise(rng, horizon, w, 6, 24))
    img[:, :horizon] = np.where(trees, foliage, img[:, :horizon])
    return img, horizon


def _grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _landscape(rng, h, w)[0]


def _road(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A landscape with an asphalt road running to a vanishing point, edge lines and a dashed centre line."""
    img, horizon = _landscape(rng, h, w)
    rows = h - horizon
    t = (np.arange(1, rows + 1, dtype=np.float32) / rows)[:, None]  # 0 at the horizon, 1 at the bottom edge
    vanish_x = w * rng.uniform(0.35, 0.65)
    offset = np.abs(np.arange(w, dtype=np.float32)[None, :] - (vanish_x + (w / 2 - vanish_x) * t))
    half_width = w * (0.02 + 0.6 * t)
    asphalt = _jitter(rng, (92, 92, 98), 10) + (
        (_smooth_noise(rng, rows, w, 5, 8) - 0.5) * 18 + rng.standard_normal((rows, w), dtype=np.float32) * 6)
    edge_line = (offset > half_width * 0.88) & (offset < half_width * 0.93)
    dashes = (offset < w * (0.004 + 0.012 * t)) & (np.mod(0.9 / (t + 0.08), 1.0) < 0.5)
    road = np.where(edge_line, _colour((225, 225, 220)), asphalt)
    road = np.where(dashes, _colour((230, 200, 70)), road)
    img[:, horizon:] = np.where(offset < half_width, road, img[:, horizon:])
    return img


def _indoor(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A lamp-lit wall over a wooden plank floor."""
    floor_y = int(h * rng.uniform(0.6, 0.75))
    wall = _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.1, 0.3), rng.uniform(0.7, 0.88))
    lamp_x = rng.uniform(0.2, 0.8) * w
    ys, xs = np.ogrid[0:h, 0:w]
    light = (1.15 - 0.45 * np.clip(np.hypot((xs - lamp_x) / w, ys / h), 0, 1)).astype(np.float32)
    img = wall * light + (_smooth_noise(rng, h, w, 5, 7) - 0.5) * 10

    rows = h - floor_y
    plank_coord = 3.0 / (np.linspace(0, 1, rows, dtype=np.float32) + 0.25)  # planks widen towards the camera
    plank_id = np.floor(plank_coord).astype(int)
    plank_shade = rng.uniform(0.85, 1.1, plank_id.max() + 1).astype(np.float32)[plank_id]
    grain = _smooth_noise(rng, rows, w, max(2, rows // 2), 3)  # many rows, few columns: horizontal streaks
    floor = _jitter(rng, (135, 88, 52), 15) * (plank_shade[:, None] * (0.85 + 0.3 * grain))
    floor[:, np.mod(plank_coord, 1.0) < 0.06] *= 0.6
    img[:, floor_y:] = floor * light[floor_y:]
    img[:, max(0, floor_y - 5):floor_y] = _jitter(rng, (222, 216, 205), 8)  # skirting board
    return img


_BACKGROUNDS = {"sky": _sky, "grass": _grass, "road": _road, "indoor": _indoor}


# ---------------------------------------------------------------------------------------------------------------
# Objects


def _polygon(label: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a regular shape; at angle 0 the square is axis-aligned and the triangle and star point up."""
    if label == "square":
        radii, corners, start = (r,), 4, math.pi / 4
    elif label == "triangle":
        radii, corners, start = (r,), 3, -math.pi / 2
    elif label == "star":
        radii, corners, start = (r, 0.42 * r), 10, -math.pi / 2
    else:
        raise ValueError(f"no polygon for {label!r}")
    points = []
    for k in range(corners):
        a = angle + start + 2 * math.pi * k / corners
        radius = radii[k % len(radii)]
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def shape_mask(label: str, size: tuple[int, int], centre: tuple[float, float], radius: float,
               angle: float = 0.0) -> Image.Image:
    """Anti-aliased "L" mask (0..255) of one object: what the class looks like, independent of colour.

    `radius` is the circumradius; drawn at twice the size and box-filtered down so edges are smooth.
    """
    _check(label, CLASSES, "label")
    ss = 2
    canvas = Image.new("L", (size[0] * ss, size[1] * ss), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = centre[0] * ss, centre[1] * ss, radius * ss
    if label == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_polygon(label, cx, cy, r, angle), fill=255)
    return canvas.resize(size, Image.Resampling.BOX)


def _draw_object(rng: np.random.Generator, img: np.ndarray, label: str, casts_shadow: bool) -> None:
    """Composite one randomly placed, sized, rotated and coloured object, lit from the top left.

    Works on the object's bounding patch (shadow included) only, which keeps rendering cheap.
    """
    h, w = img.shape[1:]
    reach = min(w, h) * rng.uniform(0.16, 0.28) * _SHAPE_SCALE[label]
    cx = rng.uniform(reach + 4, w - reach - 4)
    cy = rng.uniform(reach + 4, h - reach - 4)
    angle = rng.uniform(0, 2 * math.pi)
    colour = _hsv(rng.random(), rng.uniform(0.5, 0.95), rng.uniform(0.6, 1.0))

    x0, y0 = int(cx - reach) - 2, int(cy - reach) - 2
    x1, y1 = min(w, int(cx + 1.5 * reach) + 3), min(h, int(cy + 1.5 * reach) + 3)  # room for the shadow
    patch = img[:, y0:y1, x0:x1]
    size, centre = (x1 - x0, y1 - y0), (cx - x0, cy - y0)
    if casts_shadow:
        shadow = shape_mask(label, size, (centre[0] + 0.12 * reach, centre[1] + 0.18 * reach), reach, angle)
        shadow_alpha = np.asarray(shadow.filter(ImageFilter.GaussianBlur(reach * 0.1)), np.float32) / 255
        patch *= 1 - 0.45 * shadow_alpha

    mask_img = shape_mask(label, size, centre, reach, angle)
    mask = np.asarray(mask_img, np.float32) / 255
    edge = mask - np.asarray(mask_img.filter(ImageFilter.MinFilter(3)), np.float32) / 255
    ys, xs = np.ogrid[0:size[1], 0:size[0]]
    shade = np.clip(1.12 - 0.3 * ((xs - centre[0]) + (ys - centre[1])) / (2 * reach), 0.7, 1.3).astype(np.float32)
    patch *= 1 - mask
    patch += colour * (shade * (1 - 0.5 * edge) * mask)


# ---------------------------------------------------------------------------------------------------------------
# Weather, lighting, camera


def _clear(rng: np.random.Generator, img: np.ndarray) -> None:
    """Clear weather leaves the scene as it is."""


def _rain(rng: np.random.Generator, img: np.ndarray) -> None:
    """Overcast, slightly desaturated scene crossed by slanted, semi-transparent streaks."""
    h, w = img.shape[1:]
    overlay = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(overlay)
    slant = rng.uniform(-0.35, 0.35)
    n = w * h // 400
    starts_x, starts_y = rng.uniform(-20, w, n), rng.uniform(-20, h, n)
    lengths, levels = rng.uniform(8, 20, n), rng.integers(120, 230, n)
    for x, y, length, level in zip(starts_x, starts_y, lengths, levels, strict=True):
        draw.line((x, y, x + slant * length, y + length), fill=int(level), width=1)
    streaks = 0.6 * np.asarray(overlay, np.float32) / 255
    img[:] = (0.75 * img + 0.25 * img.mean(axis=0)) * 0.82
    img[:] = img * (1 - streaks) + 215 * streaks


def _fog(rng: np.random.Generator, img: np.ndarray) -> None:
    """Soften the scene and veil it with uneven haze, thickest towards the top (the distance)."""
    h, w = img.shape[1:]
    density = rng.uniform(0.3, 0.5)
    depth = np.linspace(1.15, 0.8, h, dtype=np.float32)[:, None]
    alpha = np.clip(density * depth + (_smooth_noise(rng, h, w, 3, 4) - 0.5) * 0.25, 0, 0.8)
    hazy = _blur(img, 1.5)
    hazy *= 1 - alpha
    hazy += _jitter(rng, (205, 208, 212), 6) * alpha
    img[:] = hazy


_WEATHER = {"clear": _clear, "rain": _rain, "fog": _fog}


def _apply_lighting(img: np.ndarray, light: _Lighting) -> None:
    mean = img.mean()
    img -= mean
    img *= light.contrast
    img += mean
    img *= _colour(light.tint) * light.gain


@functools.cache
def _vignette(width: int, height: int, strength: float) -> np.ndarray:
    """Per-pixel gain (height, width): 1 in the centre, 1 - strength in the corners."""
    ys, xs = np.ogrid[0:height, 0:width]
    r2 = ((xs - width / 2) / (width / 2)) ** 2 + ((ys - height / 2) / (height / 2)) ** 2  # 0 .. 2
    gain = (1 - strength * r2 / 2).astype(np.float32)
    gain.flags.writeable = False
    return gain


def _apply_camera(rng: np.random.Generator, img: np.ndarray, cam: CameraProfile, extra_noise: float) -> Image.Image:
    """Lens softness, vignetting, colour cast and sensor noise, then quantisation to 8 bits."""
    if cam.blur_radius:
        img = _blur(img, cam.blur_radius)
    img *= _vignette(*cam.size, cam.vignette)
    img *= _colour(cam.colour_cast)
    sigma = cam.noise_sigma + extra_noise
    if sigma > 0:  # luminance noise only: in-camera processing and JPEG chroma subsampling smear colour noise
        img += rng.standard_normal(img.shape[1:], dtype=np.float32) * sigma
    return _to_image(img)


# ---------------------------------------------------------------------------------------------------------------
# Public API


def render_scene(rng: np.random.Generator, label: str, background: str, lighting: str, weather: str,
                 camera: str) -> Image.Image:
    """Draw one scene as an RGB image at the camera's resolution (JPEG compression happens when saving).

    Randomness is drawn in the order background, object, weather, lighting, camera, so two calls with equally
    seeded generators that differ only in a later stage (e.g. lighting) show the same background and object.
    """
    _check(label, CLASSES, "label")
    for name, value in (("background", background), ("lighting", lighting), ("weather", weather),
                        ("camera", camera)):
        _check(value, SCENARIO_VALUES[name], name)
    cam = CAMERAS[camera]
    width, height = cam.size
    img = _BACKGROUNDS[background](rng, height, width)
    _draw_object(rng, img, label, casts_shadow=background != "sky")
    _WEATHER[weather](rng, img)
    light = _LIGHTING[lighting]
    _apply_lighting(img, light)
    return _apply_camera(rng, img, cam, light.extra_noise)


def resolve_scenario_weights(scenario_weights: dict | None) -> dict[str, dict[str, float]]:
    """Defaults overridden per attribute; a value an override leaves out gets weight 0.

    So ``{"lighting": {"night": 1.0}}`` means "always night, everything else as by default".
    """
    resolved = {name: dict(weights) for name, weights in DEFAULT_SCENARIO_WEIGHTS.items()}
    for name, weights in (scenario_weights or {}).items():
        _check(name, tuple(SCENARIO_VALUES), "scenario attribute")
        for value in weights:
            _check(value, SCENARIO_VALUES[name], name)
        override = {value: float(weights.get(value, 0.0)) for value in SCENARIO_VALUES[name]}
        if any(p < 0 for p in override.values()) or sum(override.values()) <= 0:
            raise ValueError(f"weights for {name!r} must be non-negative and not all zero: {weights}")
        resolved[name] = override
    return resolved


def _sample(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """One draw by inverse CDF: always one uniform, whatever the weights, so streams stay aligned."""
    values = list(weights)
    cumulative = np.cumsum(list(weights.values()))
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return values[min(index, len(values) - 1)]


def _exif(cam: CameraProfile, captured: datetime) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = cam.make
    exif[0x0110] = cam.model
    exif[0x0112] = 1  # Orientation: as stored
    exif[0x0131] = "cv-dataops demo generator"  # Software
    exif.get_ifd(0x8769)[0x9003] = captured.strftime("%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
    return exif


def generate_scenes(dest: str | Path, count: int, seed: int = 0, scenario_weights: dict | None = None,
                    start_index: int = 0) -> list[SceneTruth]:
    """Write `count` scenes as ImageFolder JPEGs and return their ground truth.

    Labels are balanced within the batch (counts differ by at most one) and shuffled. Scene ``i`` draws its
    attributes and pixels from its own stream, seeded by ``(seed, i)``; the indices run from `start_index`, so a
    later batch (e.g. drifted weights) with a higher `start_index` gets new file names and later timestamps.
    Same arguments, same bytes. Existing files with the same names are overwritten.
    """
    if count < 0 or seed < 0 or start_index < 0:
        raise ValueError("count, seed and start_index must be non-negative")
    dest = Path(dest)
    weights = resolve_scenario_weights(scenario_weights)
    labels = np.random.default_rng((seed, start_index, _LABEL_STREAM)).permutation(
        [CLASSES[i % len(CLASSES)] for i in range(count)])
    truths = []
    for offset, label in enumerate(labels.tolist()):
        index = start_index + offset
        rng = np.random.default_rng((seed, index))
        scenario = {name: _sample(rng, weights[name]) for name in SCENARIO_VALUES}
        jitter = int(rng.integers(0, CAPTURE_INTERVAL_S // 2))
        captured = CAPTURE_START + timedelta(seconds=CAPTURE_INTERVAL_S * index + jitter)
        image = render_scene(rng, label, **scenario)
        relative_path = f"{label}/scene_{index:05d}.jpg"
        path = dest / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        cam = CAMERAS[scenario["camera"]]
        image.save(path, "JPEG", quality=cam.jpeg_quality, exif=_exif(cam, captured))
        truths.append(SceneTruth(relative_path, label, captured_at=captured.isoformat(), **scenario))
    return truths


def _sibling(relative_path: str, suffix: str) -> str:
    """``circle/scene_00003.jpg`` -> ``circle/scene_00003_<suffix>.jpg``, which sorts right after it."""
    path = PurePosixPath(relative_path)
    return str(path.with_name(f"{path.stem}_{suffix}{path.suffix}"))


def write_bad_files(dest: str | Path, good: list[SceneTruth], seed: int = 0) -> list[BadFileTruth]:
    """Write one file per ingestion failure mode next to the good scenes (see the module docstring for names).

    Needs the good scenes already on disk under `dest`: the truncated file and the duplicate are made from two
    of them (the same one if there is only one). Junk files land in randomly chosen class folders.
    """
    if not good:
        raise ValueError("write_bad_files needs at least one good scene to truncate and copy")
    dest = Path(dest)
    rng = np.random.default_rng((seed, _BAD_STREAM))
    picks = rng.choice(len(good), size=min(2, len(good)), replace=False)
    truncated_src, duplicate_src = good[picks[0]], good[picks[-1]]
    folders = sorted({scene.label for scene in good})

    def junk(name: str) -> str:
        return f"{folders[rng.integers(len(folders))]}/{name}"

    tiny = io.BytesIO()
    Image.new("RGB", (4, 4), tuple(int(c) for c in rng.integers(0, 256, 3))).save(tiny, "JPEG", quality=90)
    truncated_bytes = (dest / truncated_src.relative_path).read_bytes()
    files = [
        (BadFileTruth(_sibling(truncated_src.relative_path, "partial"), "truncated", "quarantine:truncated",
                      truncated_src.relative_path), truncated_bytes[: len(truncated_bytes) // 2]),
        (BadFileTruth(_sibling(duplicate_src.relative_path, "copy"), "duplicate",
                      f"duplicate_of:{duplicate_src.relative_path}", duplicate_src.relative_path),
         (dest / duplicate_src.relative_path).read_bytes()),
        (BadFileTruth(junk("junk_notes.jpg"), "not_an_image", "quarantine:not_an_image"),
         b"Shot list for Tuesday\n- car park, north side\n- retake the stars at dusk\n"),
        (BadFileTruth(junk("junk_error_page.png"), "not_an_image", "quarantine:not_an_image"),
         b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
         b"<body><h1>Not Found</h1><p>The requested image was not found.</p></body></html>\n"),
        (BadFileTruth(junk("junk_empty.jpg"), "empty", "quarantine:empty_file"), b""),
        (BadFileTruth(junk("junk_tiny.jpg"), "tiny", "quarantine:too_small"), tiny.getvalue()),
    ]
    for truth, payload in files:
        path = dest / truth.relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    return [truth for truth, _ in files]


def generate_demo(dest: str | Path, count: int = 240, seed: int = 0, include_bad: bool = True) -> pd.DataFrame:
    """The demo data set: scenes plus (optionally) bad files, with one truth row per written file.

    Columns are DEMO_COLUMNS. Bad files take their label from their folder; a truncated file or a copy also
    carries its source scene's scenario and capture time; for the other bad files those cells are missing.
    """
    scenes = generate_scenes(dest, count, seed=seed)
    rows = [{**asdict(scene), "kind": "scene", "expected_outcome": "image"} for scene in scenes]
    if include_bad:
        by_path = {scene.relative_path: asdict(scene) for scene in scenes}
        for bad in write_bad_files(dest, scenes, seed=seed):
            source = by_path.get(bad.source_path, {})
            rows.append({**{column: source.get(column) for column in DEMO_COLUMNS},
                         "relative_path": bad.relative_path, "label": bad.relative_path.split("/")[0],
                         "kind": bad.kind, "expected_outcome": bad.expected_outcome})
    return pd.DataFrame(rows, columns=list(DEMO_COLUMNS))


def write_digits(dest: str | Path, size: int = 64, limit: int | None = None) -> pd.DataFrame:
    """scikit-learn's bundled 8x8 digits (no download) as size x size greyscale PNGs in ImageFolder layout.

    A real, labelled, 10-class data set for training and benchmarks: ``<dest>/<digit>/digit_<index:05d>.png``,
    white ink on black, each source pixel a sharp block (nearest-neighbour: interpolating 8 pixels up to 64 would
    make every digit genuinely blurry). Returns columns relative_path and label (the digit as a string).
    """
    from sklearn.datasets import (
        load_digits,  # imported here: scikit-learn is slow to import, scenes don't need it
    )

    dest = Path(dest)
    digits = load_digits()
    images, targets = digits.images[:limit], digits.target[:limit]
    rows = []
    for index, (pixels, target) in enumerate(zip(images, targets, strict=True)):
        grey = Image.fromarray(np.rint(pixels * (255 / 16)).astype(np.uint8))
        relative_path = f"{target}/digit_{index:05d}.png"
        path = dest / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        grey.resize((size, size), Image.Resampling.NEAREST).save(path, "PNG")
        rows.append({"relative_path": relative_path, "label": str(target)})
    return pd.DataFrame(rows, columns=["relative_path", "label"])
