"""Safe decoding of landed objects into `images`, `quarantine` and `objects` rows.

Every object ends in exactly one outcome. Decoding is defensive: the declared pixel count is checked before any
pixel is decoded (decompression bombs are refused, not loaded), the container is verified and the first frame is
decoded by THE decoder at the analysis size (JPEG draft mode still reads the whole compressed stream, so truncated
uploads are caught), and no exception from a decoder escapes as a crash. That decode is kept (``BatchResult.analysis``)
so quality and embeddings need not decode the file again.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
from PIL import Image, ImageFile, UnidentifiedImageError

from cv_dataops.core.storage import (
    NotARegularFileError,
    ObjectInfo,
    ObjectTooLargeError,
    Storage,
    is_transient,
    read_with_retries,
)
from cv_dataops.images.analysis_cache import ANALYSIS_SIDE, AnalysisImage
from cv_dataops.images.decode import decode_image
from cv_dataops.ingest.labels import LABEL_MODES, LABELS_CSV, LabelProblem, LabelSource  # noqa: F401 (re-exported)
from cv_dataops.ingest.landing import BatchManifest
from cv_dataops.ingest.tables import IMAGES, OBJECTS, QUARANTINE

SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP"})
# Formats whose frame count comes from the header (no seeking): their header handle is the one decoded.
_UNSOUGHT_FORMATS = frozenset({"JPEG", "PNG"})

_EXIF_IFD = 0x8769
_TAG_MAKE, _TAG_MODEL, _TAG_ORIENTATION, _TAG_DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
_TAG_DATETIME_ORIGINAL, _TAG_OFFSET_TIME_ORIGINAL = 0x9003, 0x9011


@dataclass(frozen=True)
class IngestLimits:
    """What the ingester accepts. ``max_pixels`` defaults to Pillow's own decompression-bomb threshold; objects
    over ``max_bytes`` are refused from their listed size and never read past it; a read failing for a reason that
    may pass is tried ``read_attempts`` times, pausing ``read_backoff_seconds`` (doubled after each try), before the
    object is deferred."""

    max_pixels: int = 89_478_485
    max_bytes: int = 512 * 1024 ** 2
    read_attempts: int = 3
    read_backoff_seconds: float = 0.5
    min_side: int = 8
    formats: frozenset[str] = SUPPORTED_FORMATS


@dataclass(frozen=True)
class ImageFacts:
    width: int
    height: int
    format: str
    mode: str
    frames: int
    has_alpha: bool
    exif_orientation: int | None = None
    captured_at: datetime | None = None
    camera_make: str | None = None
    camera_model: str | None = None


@dataclass(frozen=True)
class Refusal:
    reason: str
    detail: str


@dataclass(frozen=True)
class Deferral:
    """Could not be read for a reason that may pass (S3 down, 5xx, a file gone for now): retried in a new batch."""

    detail: str


def _unidentified_reason(data: bytes) -> Refusal:
    """Tell image formats we do not ingest apart from bytes that are no image at all."""
    head = data[:1024]
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis"):
        return Refusal("unsupported_format", f"HEIF/AVIF container (brand {head[8:12].decode()})")
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return Refusal("unsupported_format", "JPEG XL")
    if b"<svg" in head.lower():
        return Refusal("unsupported_format", "SVG vector image")
    sample = head[:64].decode("latin-1", errors="replace").strip().replace("\n", " ")
    return Refusal("not_an_image", f"no image decoder recognises the bytes (start: {sample[:40]!r})")


def _decode_failure(error: BaseException) -> Refusal:
    text = f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if isinstance(error, EOFError) or "truncated" in lowered or "premature end" in lowered:
        return Refusal("truncated", text)
    return Refusal("corrupt", text)


def _exif_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _exif_time(value: object, offset: object) -> datetime | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' as UTC; camera-local when no OffsetTimeOriginal is recorded."""
    text = _exif_text(value)
    if not text:
        return None
    try:
        moment = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    zone = UTC
    offset_text = _exif_text(offset)
    if offset_text and len(offset_text) == 6 and offset_text[0] in "+-":
        try:
            sign = 1 if offset_text[0] == "+" else -1
            zone = timezone(sign * timedelta(hours=int(offset_text[1:3]), minutes=int(offset_text[4:6])))
        except ValueError:
            zone = UTC
    return moment.replace(tzinfo=zone).astimezone(UTC)


def _read_exif(image: Image.Image) -> dict:
    try:
        exif = image.getexif()
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # malformed EXIF never refuses an otherwise good image
        return {}
    orientation = exif.get(_TAG_ORIENTATION)
    return {
        "exif_orientation": orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else None,
        "captured_at": _exif_time(sub.get(_TAG_DATETIME_ORIGINAL) or exif.get(_TAG_DATETIME),
                                  sub.get(_TAG_OFFSET_TIME_ORIGINAL)),
        "camera_make": _exif_text(exif.get(_TAG_MAKE)),
        "camera_model": _exif_text(exif.get(_TAG_MODEL)),
    }


def inspect_image(data: bytes, limits: IngestLimits = IngestLimits()) -> ImageFacts | Refusal:
    """Decide whether ``data`` is an image we ingest, and describe it; never raises for bad data."""
    return inspect_and_decode(data, limits)[0]


def inspect_and_decode(data: bytes, limits: IngestLimits = IngestLimits(), analysis_side: int = ANALYSIS_SIDE
                       ) -> tuple[ImageFacts | Refusal, AnalysisImage | None]:
    """:func:`inspect_image`, and for an image we ingest its analysis image: the safety decode is THE decoder's
    (JPEG draft mode reads the whole entropy-coded stream, so truncation is caught as in a full decode), and its
    result is kept so later stages need not decode the file again."""
    if not data:
        return Refusal("empty_file", "the object has zero bytes"), None
    try:
        # Pillow only reads the header here; a size over its own bomb threshold raises before any decoding.
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        return Refusal("too_many_pixels", str(error)), None
    except UnidentifiedImageError:
        return _unidentified_reason(data), None
    except Exception as error:
        return _decode_failure(error), None
    image_format = image.format or "unknown"
    if image_format not in limits.formats:
        return Refusal("unsupported_format", f"{image_format} images are not ingested"), None
    width, height = image.size
    if width * height > limits.max_pixels:
        return Refusal("too_many_pixels",
                       f"{width}x{height} = {width * height} pixels > limit {limits.max_pixels}"), None
    if min(width, height) < limits.min_side:
        return Refusal("too_small",
                       f"{width}x{height} is below the minimum side of {limits.min_side} pixels"), None
    mode, frames = image.mode, int(getattr(image, "n_frames", 1) or 1)
    has_alpha = "A" in image.getbands() or (mode == "P" and "transparency" in image.info)
    try:
        if type(image).verify is not ImageFile.ImageFile.verify:  # that one only closes the file: nothing to check
            Image.open(io.BytesIO(data)).verify()  # container checks (CRCs, chunk structure) on a fresh handle
        # the header's handle decodes as a fresh one where reading the header left no state behind (no frames
        # were sought); the re-opening cost a tenth of a JPEG's ingest time
        decoding = image if image_format in _UNSOUGHT_FORMATS else Image.open(io.BytesIO(data))
        decoded = decode_image(decoding, analysis_side)  # decodes the first frame: catches truncated data
    except Image.DecompressionBombError as error:
        return Refusal("too_many_pixels", str(error)), None
    except Exception as error:
        return _decode_failure(error), None
    exif = _read_exif(decoding)  # after the decode: a PNG's EXIF may follow its pixels, which are loaded now
    if exif.get("exif_orientation") in (5, 6, 7, 8):
        width, height = height, width
    facts = ImageFacts(width, height, image_format, mode, frames, bool(has_alpha), **exif)
    return facts, AnalysisImage.from_decoded(decoded)


@dataclass
class BatchResult:
    images: pa.Table
    quarantine: pa.Table
    objects: pa.Table
    reasons: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    label_problems: list[LabelProblem] = field(default_factory=list)  # rows of the labels file not applied
    # (image_id, analysis image) of every `images` row, in its order: the batch's analysis cache
    analysis: list[tuple[str, AnalysisImage]] = field(default_factory=list)
    deferred: dict[str, str] = field(default_factory=dict)  # key -> why it could not be read for now


def _examine(info: ObjectInfo, landing: Storage, limits: IngestLimits
             ) -> tuple[str | None, ImageFacts | Refusal, AnalysisImage | None]:
    """(image_id, facts or refusal, analysis image) for one object; runs in worker threads."""
    if info.unsafe_reason:
        return None, Refusal(info.refusal or "unsafe_path", info.unsafe_reason), None
    if info.size > limits.max_bytes:
        return None, Refusal("too_large", f"{info.size} bytes as listed > limit {limits.max_bytes}; not read"), None
    try:
        data = read_with_retries(landing, info.key, max_bytes=limits.max_bytes, attempts=limits.read_attempts,
                                 first_pause=limits.read_backoff_seconds)
    except ObjectTooLargeError as error:
        return None, Refusal("too_large", str(error)), None
    except NotARegularFileError as error:
        return None, Refusal("not_a_regular_file", str(error)), None
    except Exception as error:
        if is_transient(error):
            return None, Deferral(f"{type(error).__name__}: {error}"), None
        return None, Refusal("unreadable", f"{type(error).__name__}: {error}"), None
    return hashlib.sha256(data).hexdigest(), *inspect_and_decode(data, limits)


def ingest_batch(manifest: BatchManifest, landing: Storage, *,
                 known_image_ids: Collection[str] | Callable[[list[str]], Collection[str]] = frozenset(),
                 labels: LabelSource | None = None, limits: IngestLimits = IngestLimits(), workers: int = 8,
                 progress: Callable[[int], None] | None = None, now: datetime | None = None,
                 handed_over: Mapping[str, str] | None = None) -> BatchResult:
    """Examine every object of a batch and sort it into images, duplicates, quarantine, sidecars or deferred.

    ``known_image_ids`` are the images earlier batches already hold: the same bytes landing again are recorded in
    ``objects`` as a duplicate of that image instead of a second image row. Either the ids themselves or a function
    answering which of the batch's ids are known (an index lookup: the catalog's ids are then never loaded).
    Objects that could not be read for a reason that may pass are deferred (``result.deferred``), and so are, unread,
    those ``handed_over`` (key -> batch) to a later batch that retries them: the image is counted there, once.
    """
    handed_over = handed_over or {}
    labels = labels or LabelSource("none")
    now = now or datetime.now(UTC)
    batch_id = manifest.batch_id
    objects = sorted(manifest.objects, key=lambda info: info.key)
    to_examine = [info for info in objects if not labels.is_sidecar(info.key) and info.key not in handed_over]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        examined: Mapping[str, tuple[str | None, ImageFacts | Refusal]] = {}
        analysed: dict[str, AnalysisImage] = {}
        for info, (image_id, outcome, analysis) in zip(
                to_examine, pool.map(lambda i: _examine(i, landing, limits), to_examine), strict=True):
            examined[info.key] = image_id, outcome
            if analysis is not None:
                analysed[info.key] = analysis
            if progress:
                progress(1)
    if callable(known_image_ids):
        known_image_ids = known_image_ids(sorted({image_id for image_id, result in examined.values()
                                                  if image_id is not None and not isinstance(result, Refusal)}))
    seen = set(known_image_ids)
    images, quarantine, ledger, reasons, duplicates, analysis, deferred = [], [], [], {}, 0, [], {}
    for info in objects:
        uri = landing.uri_of(info.key) if not info.unsafe_reason else f"{landing.uri.rstrip('/')}/{info.key}"
        row = {"uri": uri, "batch_id": batch_id, "relative_path": info.key, "version": info.version,
               "bytes": info.size}
        if labels.is_sidecar(info.key):
            ledger.append({**row, "outcome": "sidecar"})
            continue
        if info.key in handed_over:
            deferred[info.key] = f"assigned again to batch {handed_over[info.key]}"
            ledger.append({**row, "outcome": "deferred"})
            continue
        image_id, result = examined[info.key]
        if isinstance(result, Deferral):
            deferred[info.key] = result.detail
            ledger.append({**row, "outcome": "deferred"})
            continue
        if isinstance(result, Refusal):
            reasons[result.reason] = reasons.get(result.reason, 0) + 1
            quarantine.append({"uri": uri, "batch_id": batch_id, "relative_path": info.key, "reason": result.reason,
                               "detail": result.detail, "bytes": info.size, "quarantined_at": now})
            ledger.append({**row, "outcome": "quarantined"})
            continue
        if image_id in seen:
            duplicates += 1
            ledger.append({**row, "outcome": "duplicate", "image_id": image_id})
            continue
        seen.add(image_id)
        images.append({"image_id": image_id, "uri": uri, "batch_id": batch_id, "relative_path": info.key,
                       "bytes": info.size, "label": labels.label_for(info.key), "ingested_at": now,
                       **vars(result)})
        analysis.append((image_id, analysed[info.key]))
        ledger.append({**row, "outcome": "image", "image_id": image_id})
    label_problems = labels.batch_problems({info.key for info in objects if not labels.is_sidecar(info.key)})
    return BatchResult(IMAGES.from_rows(images), QUARANTINE.from_rows(quarantine), OBJECTS.from_rows(ledger),
                       reasons, duplicates, label_problems, analysis, deferred)
