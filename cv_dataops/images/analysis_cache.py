"""The analysis image of each landed file, decoded once at ingest and kept per batch for quality and embeddings.

Ingestion must decode every file anyway (to catch truncated uploads); it does so with THE decoder at the analysis
size (:func:`cv_dataops.images.decode.decode_image`, JPEG draft mode) and keeps the result: the reduced pixels
plus what quality needs from the original (size after EXIF orientation, single-channel source, JPEG quantization
tables). The batch's analysis images are one Parquet file under the data root, ``cache/analysis/<batch_id>.parquet``,
written through the catalog's :class:`~cv_dataops.core.storage.Storage`. Quality and embeddings read it instead of
fetching and decoding each file again; where it is absent (an older batch, a deleted cache) or was made with another
decoder or size, :func:`batch_sources` hands out the image's URI instead and the stage fetches and decodes through
the same decoder. So the cache changes how often a file is decoded, never what a stage sees: a cached image equals
a fresh :func:`decode` bit for bit. Deleting ``cache/`` is always safe.

Storage cost: pixels are stored as they are, uncompressed: 147 KB for a 256x192 colour photo, a third of that for a
gray one: about a quality-90 JPEG of 1024x768, 3 % of a 12-megapixel camera JPEG, 3x a 32x32 CIFAR JPEG. The cache is
there to save time, and codecs were measured to cost more of it than they save space: LZ4 stored photos at 91 % of
their size for 0.2 ms to write and 0.1 ms to read per image (a tenth of a JPEG's whole ingest), and zstd on row
differences 60 % for 0.5 ms and 0.3 ms.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cv_dataops.core.storage import Storage, check_key
from cv_dataops.images.decode import DecodedImage, decode

# Longest side of the analysis image every per-batch stage works on (quality's metrics, the built-in embedder).
ANALYSIS_SIDE = 256

CACHE_PREFIX = "cache/analysis"

# Bump when the decoder's output changes: caches made by another version are ignored (and rewritten at ingest).
CACHE_VERSION = "2"  # 2: pixels uncompressed (1: LZ4 frames)

_ROWS_PER_GROUP = 64
_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),              # "RGB" or "L": the image decode() produced
    pa.field("analysis_width", pa.int32(), nullable=False),
    pa.field("analysis_height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),              # original size after EXIF orientation
    pa.field("height", pa.int32(), nullable=False),
    pa.field("source_gray", pa.bool_(), nullable=False),
    pa.field("quantization", pa.string()),                      # JSON [[table id, [64 values]], ...]; JPEG only
    pa.field("pixels", pa.binary(), nullable=False),            # the uint8 pixels, row-major
])


@dataclass(frozen=True)
class AnalysisImage:
    """One decoded analysis image in compact, picklable form (it crosses to quality's worker processes)."""

    mode: str
    size: tuple[int, int]
    width: int
    height: int
    source_gray: bool
    quantization: tuple[tuple[int, tuple[int, ...]], ...] | None = field(repr=False)
    pixels: bytes = field(repr=False)  # the uint8 pixels, row-major

    @classmethod
    def from_decoded(cls, decoded: DecodedImage) -> AnalysisImage:
        pixels = decoded.rgb.tobytes()
        image = decoded.rgb
        if _replicated_gray(pixels, decoded):
            image = decoded.gray
            pixels = image.tobytes()
        quantization = None
        if decoded.quantization:
            quantization = tuple((int(k), tuple(int(v) for v in decoded.quantization[k]))
                                 for k in sorted(decoded.quantization))
        return cls(image.mode, image.size, decoded.width, decoded.height, bool(decoded.source_gray), quantization,
                   pixels)

    def decoded(self) -> DecodedImage:
        """The :class:`DecodedImage` that :func:`decode` returned, exactly (the other image of the pair is derived
        the way decode derives it)."""
        image = Image.frombytes(self.mode, self.size, self.pixels)
        if self.mode == "L":
            gray, rgb = image, image.convert("RGB")
        else:
            rgb, gray = image, image.convert("L")
        quantization = {k: list(v) for k, v in self.quantization} if self.quantization else None
        return DecodedImage(rgb=rgb, gray=gray, width=self.width, height=self.height, source_gray=self.source_gray,
                            quantization=quantization)


def _replicated_gray(rgb_pixels: bytes, decoded: DecodedImage) -> bool:
    """True when the RGB image (``rgb_pixels``, its bytes) is the gray one in three equal channels: then storing
    the gray image alone is exact either way (decode() made one from the other, and Pillow's L of equal channels is
    that channel)."""
    width, height = decoded.rgb.size
    rgb = np.frombuffer(rgb_pixels, dtype=np.uint8).reshape(height, width, 3)
    if not (rgb[0, :, 0] == rgb[0, :, 1]).all():
        return False  # a colour image, seen from its first row
    gray = np.asarray(decoded.gray)
    return bool((rgb[..., 0] == gray).all() and (rgb[..., 1] == gray).all() and (rgb[..., 2] == gray).all())


def analysis_image(data: bytes, analysis_side: int = ANALYSIS_SIDE) -> AnalysisImage:
    """Encoded bytes to their analysis image, through THE decoder; ValueError for undecodable bytes."""
    return AnalysisImage.from_decoded(decode(data, analysis_side))


def analysis_side_for(input_shape: tuple[int, int] | None) -> int:
    """The decode size a model with input ``(width, height)`` gets its pixels at: the analysis size when the
    model's input is at most half of it (the built-in embedder's 32 px), so it can share the cache; otherwise
    twice the model's input (an ONNX model of 224 px), decoded from the file."""
    longest = max(input_shape) if input_shape else 0
    return ANALYSIS_SIDE if 2 * longest <= ANALYSIS_SIDE else 2 * longest


def model_pixels(source: bytes | AnalysisImage, input_shape: tuple[int, int] | None) -> Image.Image:
    """The RGB pixels an embedder sees for ``source`` (encoded bytes, or the cached analysis image): the one way
    fitting, embedding and ``search --like`` get them, so an image gets the same vector whichever path it took."""
    side = analysis_side_for(input_shape)
    if isinstance(source, AnalysisImage):
        if max(source.size) != min(side, max(source.width, source.height)):
            raise ValueError(f"the cached analysis image is {source.size}, this model needs a side of {side}")
        return source.decoded().rgb
    return decode(source, side).rgb


# ---------------------------------------------------------------------------------------------------------------
# The per-batch file
# ---------------------------------------------------------------------------------------------------------------


def cache_key(batch_id: str) -> str:
    return f"{CACHE_PREFIX}/{check_key(batch_id)}.parquet"


def _metadata(analysis_side: int) -> dict[bytes, bytes]:
    return {b"cv_dataops.analysis_side": str(analysis_side).encode(),
            b"cv_dataops.cache_version": CACHE_VERSION.encode()}


def write_analysis_cache(storage: Storage, batch_id: str, images: Iterable[tuple[str, AnalysisImage]],
                         analysis_side: int = ANALYSIS_SIDE) -> str:
    """Publish the batch's analysis images atomically (replacing an earlier cache of the batch); returns its URI.
    Memory: the compressed file, plus one row group."""
    buffer = io.BytesIO()
    schema = _SCHEMA.with_metadata(_metadata(analysis_side))
    with pq.ParquetWriter(buffer, schema, compression="none") as writer:  # see "Storage cost" above
        rows: list[tuple[str, AnalysisImage]] = []
        for item in images:
            rows.append(item)
            if len(rows) >= _ROWS_PER_GROUP:
                writer.write_table(_rows_table(rows, schema))
                rows = []
        if rows:
            writer.write_table(_rows_table(rows, schema))
    key = cache_key(batch_id)
    storage.write_bytes(key, buffer.getvalue())
    return storage.uri_of(key)


def _rows_table(rows: list[tuple[str, AnalysisImage]], schema: pa.Schema) -> pa.Table:
    return pa.table({
        "image_id": [i for i, _ in rows],
        "mode": [a.mode for _, a in rows],
        "analysis_width": [a.size[0] for _, a in rows],
        "analysis_height": [a.size[1] for _, a in rows],
        "width": [a.width for _, a in rows],
        "height": [a.height for _, a in rows],
        "source_gray": [a.source_gray for _, a in rows],
        "quantization": [json.dumps(a.quantization) if a.quantization else None for _, a in rows],
        "pixels": [a.pixels for _, a in rows],
    }, schema=schema)


def _open(storage: Storage, batch_id: str, analysis_side: int) -> pq.ParquetFile | None:
    """The batch's cache file if it exists and was made by this decoder at ``analysis_side``, else None."""
    key = cache_key(batch_id)
    path = storage.local_path(key)
    try:
        if path is not None:
            parquet = pq.ParquetFile(path, memory_map=True)
        else:
            parquet = pq.ParquetFile(io.BytesIO(storage.read_bytes(key)))
    except (FileNotFoundError, OSError):
        return None
    metadata = parquet.schema_arrow.metadata or {}
    if any(metadata.get(name) != value for name, value in _metadata(analysis_side).items()):
        return None  # made by another decoder version or at another size
    return parquet


def _group_rows(parquet: pq.ParquetFile, group: int) -> Iterator[tuple[str, AnalysisImage]]:
    table = parquet.read_row_group(group)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    for index, image_id in enumerate(columns["image_id"]):
        quantization = columns["quantization"][index]
        yield image_id, AnalysisImage(
            mode=columns["mode"][index],
            size=(columns["analysis_width"][index], columns["analysis_height"][index]),
            width=columns["width"][index], height=columns["height"][index],
            source_gray=columns["source_gray"][index],
            quantization=tuple((k, tuple(v)) for k, v in json.loads(quantization)) if quantization else None,
            pixels=columns["pixels"][index])


def read_analysis_cache(storage: Storage, batch_id: str,
                        analysis_side: int = ANALYSIS_SIDE) -> dict[str, AnalysisImage]:
    """Every cached analysis image of the batch (empty when there is no usable cache); for tests and tools."""
    parquet = _open(storage, batch_id, analysis_side)
    if parquet is None:
        return {}
    return {image_id: image for group in range(parquet.num_row_groups) for image_id, image in
            _group_rows(parquet, group)}


def cached_image_ids(storage: Storage, batch_id: str, analysis_side: int = ANALYSIS_SIDE) -> set[str]:
    """The ids of the batch's images its usable cache holds (reads the id column only): the images a stage will
    not fetch from their files."""
    parquet = _open(storage, batch_id, analysis_side)
    if parquet is None:
        return set()
    return set(parquet.read(columns=["image_id"]).column("image_id").to_pylist())


def batch_sources(storage: Storage, batch_id: str, items: Iterable[tuple[str, str]],
                  analysis_side: int = ANALYSIS_SIDE) -> Iterator[tuple[str, AnalysisImage | str]]:
    """``(image_id, cached analysis image, or the URI when the cache lacks it)`` for each ``(image_id, uri)``, in
    order. The cache is read one row group at a time, in step with ``items`` (ingestion writes it in the order of
    the batch's `images` rows), so memory holds one row group however large the batch."""
    items = list(items)
    parquet = _open(storage, batch_id, analysis_side)
    if parquet is None:
        yield from items
        return
    wanted = {image_id for image_id, _ in items}
    ahead: dict[str, AnalysisImage] = {}
    groups = iter(range(parquet.num_row_groups))
    exhausted = False
    for image_id, uri in items:
        while image_id not in ahead and not exhausted:
            group = next(groups, None)
            if group is None:
                exhausted = True
                break
            ahead.update((i, a) for i, a in _group_rows(parquet, group) if i in wanted)
        cached = ahead.pop(image_id, None)
        yield image_id, cached if cached is not None else uri
