"""The tables ingestion writes: `images`, `quarantine` and the `objects` ledger."""

import pyarrow as pa

from cv_dataops.core.schema import TIMESTAMP, Column, TableDefinition

# Why an object can be refused at ingestion: a closed set, so dashboards and alerts can rely on it.
QUARANTINE_REASONS: dict[str, str] = {
    "empty_file": "The object has zero bytes.",
    "not_an_image": "No image decoder recognises the bytes (text, HTML, archives, ...).",
    "unsupported_format": "An image format cv-dataops does not ingest (e.g. HEIC, SVG, PSD, ICO).",
    "truncated": "The image data ends before the image does (an interrupted upload or copy).",
    "corrupt": "The decoder recognised the format but failed on the data.",
    "too_many_pixels": "Width x height exceeds the pixel limit (decompression-bomb protection); never decoded.",
    "too_small": "The shorter side is below the minimum size; too small to be useful.",
    "unsafe_path": "The key escapes the landing zone (a symlink pointing outside it, '..' or an absolute key).",
    "unreadable": "Listed, but reading the bytes failed for good (permission denied, ...); failures that may pass "
                  "(S3 down, throttled, 5xx, a file gone for now) defer the object instead.",
    "too_large": "Larger than the byte limit (`max_bytes`); refused from its listed size, never read.",
    "not_a_regular_file": "A FIFO, socket or device: never opened (reading one can block forever or never end).",
    "broken_symlink": "A symlink whose target is missing or that loops back on itself.",
    "undecodable_name": "The file name is not valid UTF-8; recorded percent-escaped, with its raw bytes in hex in "
                        "the detail. Rename the file to ingest it.",
    "unlistable": "A folder or entry the listing could not look into (path longer than PATH_MAX, permission denied "
                  "on a folder, ...); what it holds is listed once it can be.",
    "unreadable_after_retries": "Deferred by as many batches as allowed (`CV_DATAOPS_RETRY_BATCHES`, default 5), "
                                "each failing for a reason that may pass; the detail names the last error. Retried "
                                "no more: land it again (a new version) to ingest it.",
}

# What became of each landed object; every landed object gets exactly one outcome.
OBJECT_OUTCOMES: dict[str, str] = {
    "image": "A new image: its row is in `images`.",
    "duplicate": "The same bytes as an image already in `images` (same `image_id`); this URI is recorded here.",
    "quarantined": "Refused: its row, with the reason, is in `quarantine`.",
    "sidecar": "A metadata file the landing zone carries for us (`labels.csv` with `--labels csv`).",
    "deferred": "Not read for a reason that may pass (S3 down, throttled, 5xx, the file gone for now): neither "
                "refused nor an image; the next planning that still lists it assigns it to a new batch (why: "
                "`batches/_deferred/<batch_id>.json`).",
}


IMAGES = TableDefinition(
    name="images",
    description="One row per distinct image (by content) that decoded safely. Image bytes stay where they landed.",
    partitioned_by_batch=True,
    written_by="raw_images",
    columns=(
        Column("image_id", pa.string(), "Hex SHA-256 of the file's bytes: the same bytes always get the same id.", False),
        Column("uri", pa.string(), "Where the bytes are: an absolute path or s3://bucket/key (first URI seen).", False),
        Column("batch_id", pa.string(), "The landing batch (the Dagster partition) that brought the image.", False),
        Column("relative_path", pa.string(), "Key relative to the landing zone.", False),
        Column("width", pa.int32(), "Width in pixels after applying the EXIF orientation.", False),
        Column("height", pa.int32(), "Height in pixels after applying the EXIF orientation.", False),
        Column("format", pa.string(), "Decoder format name (JPEG, PNG, GIF, WEBP, TIFF, BMP, MPO).", False),
        Column("mode", pa.string(), "Pillow mode of the stored pixels (RGB, L, CMYK, I;16, P, RGBA, ...).", False),
        Column("bytes", pa.int64(), "File size in bytes.", False),
        Column("frames", pa.int32(), "Number of frames (1 unless animated; later stages use the first).", False),
        Column("has_alpha", pa.bool_(), "Whether the image carries transparency.", False),
        Column("exif_orientation", pa.int8(), "EXIF orientation tag (1-8) where present."),
        Column("captured_at", TIMESTAMP, "EXIF DateTimeOriginal (or DateTime) where present and valid."),
        Column("camera_make", pa.string(), "EXIF camera make where present."),
        Column("camera_model", pa.string(), "EXIF camera model where present."),
        Column("label", pa.string(), "Label given at landing (ImageFolder folder name or labels.csv), if any."),
        Column("ingested_at", TIMESTAMP, "When the batch was ingested.", False),
    ),
)

QUARANTINE = TableDefinition(
    name="quarantine",
    description="One row per landed object that was refused, with the reason. The object itself stays in place.",
    partitioned_by_batch=True,
    written_by="raw_images",
    columns=(
        Column("uri", pa.string(), "Where the refused object is.", False),
        Column("batch_id", pa.string(), "The landing batch that brought it.", False),
        Column("relative_path", pa.string(), "Key relative to the landing zone.", False),
        Column("reason", pa.string(), "One of: " + ", ".join(QUARANTINE_REASONS) + ".", False),
        Column("detail", pa.string(), "What exactly went wrong, in words.", False),
        Column("bytes", pa.int64(), "File size in bytes as listed."),
        Column("quarantined_at", TIMESTAMP, "When it was refused.", False),
    ),
)

OBJECTS = TableDefinition(
    name="objects",
    description="The ledger: one row per landed object version, with what became of it. Nothing landed is lost.",
    partitioned_by_batch=True,
    written_by="raw_images",
    columns=(
        Column("uri", pa.string(), "Where the object is.", False),
        Column("batch_id", pa.string(), "The landing batch it was assigned to.", False),
        Column("relative_path", pa.string(), "Key relative to the landing zone.", False),
        Column("version", pa.string(), "S3 ETag, or size and mtime for local files: a replaced file is new.", False),
        Column("bytes", pa.int64(), "Size as listed.", False),
        Column("outcome", pa.string(), "One of: " + ", ".join(OBJECT_OUTCOMES) + ".", False),
        Column("image_id", pa.string(), "The image's id for outcomes image and duplicate."),
    ),
)
