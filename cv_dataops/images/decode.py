"""The one image decoder every stage uses: first frame, any mode, EXIF orientation, reduced size in JPEG draft mode.

A stage that needs pixels asks for them here, at the size it needs; nothing else in cv-dataops calls
``Image.open(...).load()`` on landed bytes except ingestion's safety inspection.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Transparent pixels are composited over white, as CleanVision and most viewers show them.
TRANSPARENT_BACKGROUND = (255, 255, 255)

# ---------------------------------------------------------------------------------------------------------------

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transposition that shows the image upright (as PIL.ImageOps.exif_transpose does).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SINGLE_CHANNEL_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: multi-picture JPEG written by some cameras


@dataclass
class DecodedImage:
    rgb: Image.Image            # analysis image, mode RGB
    gray: Image.Image           # the same, mode L
    width: int                  # original size after EXIF orientation
    height: int
    source_gray: bool           # the file itself has a single colour channel
    quantization: dict | None   # JPEG quantization tables (natural order), None for other formats


def target_size(width: int, height: int, side: int) -> tuple[int, int]:
    """Size with the longest side reduced to ``side`` (never enlarged), aspect ratio kept."""
    longest = max(width, height)
    if longest <= side:
        return width, height
    scale = side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float single-channel images to 8-bit L, scaled by their nominal range."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0
    else:
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0                      # float images in 0..1
        elif lo >= 0.0 and hi <= 255.0:
            scaled = arr                              # 8-bit data stored wide
        elif lo >= 0.0 and hi <= 65535.0:
            scaled = arr / 257.0                      # 16-bit data stored wide
        else:
            scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L")


def to_8bit(img: Image.Image) -> Image.Image:
    """Any Pillow mode to "RGB" or "L" (alpha composited over TRANSPARENT_BACKGROUND)."""
    mode = img.mode
    if mode in ("RGB", "L"):
        if "transparency" not in img.info:
            return img
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_l(img)
    if mode == "1":
        return img.convert("L")
    has_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    if has_alpha:
        if mode in ("LA", "La"):
            img = img.convert("LA")
            background = Image.new("L", img.size, TRANSPARENT_BACKGROUND[0])
            background.paste(img.getchannel("L"), mask=img.getchannel("A"))
            return background
        rgba = img.convert("RGBA")
        background = Image.new("RGB", img.size, TRANSPARENT_BACKGROUND)
        background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return background
    try:
        return img.convert("RGB")
    except (ValueError, OSError):
        # Modes Pillow cannot convert directly (e.g. LAB, HSV): fall back to the first band as luma.
        return img.getchannel(0).convert("L")


def decode(data: bytes, analysis_side: int) -> DecodedImage:
    """THE decoder: first frame, any mode to 8-bit, at most ``analysis_side`` on the longest side (JPEG draft mode
    decodes at 1/2, 1/4 or 1/8 scale first), upright per EXIF orientation. Raises ValueError on undecodable bytes."""
    if analysis_side < 8:
        raise ValueError(f"analysis_side must be at least 8, got {analysis_side}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        return decode_image(img, analysis_side)
    except MemoryError:
        raise
    except Exception as error:  # Pillow raises many types for malformed files; callers get one
        raise ValueError(f"cannot decode image ({len(data)} bytes): {type(error).__name__}: {error}") from error


def decode_image(img: Image.Image, analysis_side: int) -> DecodedImage:
    """:func:`decode` on an image already opened (and not yet loaded), raising Pillow's own exceptions: for
    ingestion, which reads the header first and sorts decoding errors into quarantine reasons. Draft mode still
    reads the whole entropy-coded stream, so truncated data fails here as it does in a full decode."""
    if analysis_side < 8:
        raise ValueError(f"analysis_side must be at least 8, got {analysis_side}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img.seek(0)  # first frame of an animation
        stored_w, stored_h = img.size
        try:
            orientation = int(img.getexif().get(_ORIENTATION_TAG, 1) or 1)
        except Exception:  # a broken EXIF block must not make the image unusable
            orientation = 1
        is_jpeg = img.format in _JPEG_FORMATS
        quantization = getattr(img, "quantization", None) if is_jpeg else None
        target = target_size(stored_w, stored_h, analysis_side)
        if is_jpeg and target != (stored_w, stored_h):
            img.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale, never below the target size
        img.load()
        if getattr(img, "is_animated", False):
            img = img.copy()  # detach frame 0 from the file so later conversions do not touch other frames
        source_gray = img.mode in _SINGLE_CHANNEL_MODES
        img = to_8bit(img)
        if img.size != target:
            img = img.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
        transpose = _ORIENTATION_TRANSPOSE.get(orientation)
        if transpose is not None:
            img = img.transpose(transpose)
    if orientation in (5, 6, 7, 8):
        stored_w, stored_h = stored_h, stored_w
    if img.mode == "L":
        gray, rgb = img, img.convert("RGB")
    else:
        rgb, gray = img, img.convert("L")
    return DecodedImage(rgb=rgb, gray=gray, width=stored_w, height=stored_h, source_gray=source_gray,
                        quantization=dict(quantization) if quantization else None)
