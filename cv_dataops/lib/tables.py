"""The common data model: every catalog table's schema, defined once.

Stages write these tables, external tools read them, the Dagster UI shows them (``dagster/column_schema``), and
``docs/data-model.md`` documents them; all four come from the definitions below. Column names are a public
contract: add columns freely, never rename or remove one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

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
    "unreadable": "Listed, but reading the bytes failed (removed after listing, permission denied, ...).",
}

# What became of each landed object; every landed object gets exactly one outcome.
OBJECT_OUTCOMES: dict[str, str] = {
    "image": "A new image: its row is in `images`.",
    "duplicate": "The same bytes as an image already in `images` (same `image_id`); this URI is recorded here.",
    "quarantined": "Refused: its row, with the reason, is in `quarantine`.",
    "sidecar": "A metadata file the landing zone carries for us (`labels.csv` with `--labels csv`).",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    nullable: bool = True


@dataclass(frozen=True)
class TableDefinition:
    """A named catalog table: its columns and whether it is stored one file per batch."""

    name: str
    description: str
    columns: tuple[Column, ...]
    partitioned_by_batch: bool
    written_by: str

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def empty(self) -> pa.Table:
        return self.arrow_schema.empty_table()

    def from_rows(self, rows: Iterable[Mapping[str, object]]) -> pa.Table:
        """Build a table from dicts; missing nullable columns become nulls, unknown keys are an error."""
        rows = list(rows)
        known = set(self.column_names)
        for row in rows:
            unknown = set(row) - known
            if unknown:
                raise ValueError(f"table {self.name!r} has no column(s) {sorted(unknown)}")
        loose = pa.schema([pa.field(c.name, c.type) for c in self.columns])  # nulls are reported by conform
        return self.conform(pa.Table.from_pylist([{c: row.get(c) for c in self.column_names} for row in rows],
                                                 schema=loose))

    def conform(self, table: pa.Table) -> pa.Table:
        """Cast ``table`` to this schema, in column order; raise if a column is missing or a null is not allowed."""
        missing = [c for c in self.column_names if c not in table.column_names]
        if missing:
            raise ValueError(f"table {self.name!r} is missing column(s) {missing}")
        table = table.select(self.column_names)
        for column in self.columns:
            if not column.nullable and table.column(column.name).null_count:
                raise ValueError(f"table {self.name!r}: column {column.name!r} has nulls")
        return table.cast(self.arrow_schema)

    def schema_problems(self, schema: pa.Schema) -> list[str]:
        """Differences between a stored table's schema and this definition (empty when they agree)."""
        problems = []
        for column in self.columns:
            if column.name not in schema.names:
                problems.append(f"missing column {column.name}")
            elif not schema.field(column.name).type.equals(column.type):
                problems.append(f"{column.name}: {schema.field(column.name).type} instead of {column.type}")
        problems += [f"unexpected column {name}" for name in schema.names if name not in self.column_names]
        return problems


_TIMESTAMP = pa.timestamp("us", tz="UTC")

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
        Column("captured_at", _TIMESTAMP, "EXIF DateTimeOriginal (or DateTime) where present and valid."),
        Column("camera_make", pa.string(), "EXIF camera make where present."),
        Column("camera_model", pa.string(), "EXIF camera model where present."),
        Column("label", pa.string(), "Label given at landing (ImageFolder folder name or labels.csv), if any."),
        Column("ingested_at", _TIMESTAMP, "When the batch was ingested.", False),
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
        Column("quarantined_at", _TIMESTAMP, "When it was refused.", False),
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

_ISSUE_MEANINGS = {
    "dark": "too dark (bright pixels are rare)",
    "light": "too bright (dark pixels are rare)",
    "blurry": "out of focus or motion-blurred (little fine detail at a fixed analysis size)",
    "low_information": "little content (low entropy: blank, flat or nearly constant)",
    "odd_aspect_ratio": "unusually elongated (width/height far from the usual)",
    "odd_size": "area far from the typical area of the whole catalog",
    "grayscale": "no colour: a grayscale mode, or RGB whose three channels are (nearly) equal",
}


def _issue_columns() -> tuple[Column, ...]:
    columns: list[Column] = []
    for issue, meaning in _ISSUE_MEANINGS.items():
        columns.append(Column(f"{issue}_score", pa.float32(), f"0..1, lower is worse: {meaning}.", False))
        columns.append(Column(f"is_{issue}", pa.bool_(), f"{issue}_score is below its threshold.", False))
    return tuple(columns)


QUALITY = TableDefinition(
    name="quality",
    description="One row per image: a score and a flag for each issue type, plain measurements, and the hashes "
                "duplicate detection uses, all from one decode at reduced size.",
    partitioned_by_batch=True,
    written_by="image_quality",
    columns=(
        Column("image_id", pa.string(), "The image (see `images`).", False),
        Column("batch_id", pa.string(), "The batch that brought it.", False),
        *_issue_columns(),
        Column("is_unusable", pa.bool_(), "Has one of the issues configured as unusable (by default dark, light, "
                                          "blurry, low_information).", False),
        Column("width", pa.int32(), "Width in pixels (after EXIF orientation).", False),
        Column("height", pa.int32(), "Height in pixels (after EXIF orientation).", False),
        Column("brightness", pa.float32(), "Mean luma, 0..1.", False),
        Column("dark_clipped_fraction", pa.float32(), "Fraction of pixels crushed to black (exposure clipping).", False),
        Column("light_clipped_fraction", pa.float32(), "Fraction of pixels blown to white (exposure clipping).", False),
        Column("rms_contrast", pa.float32(), "Standard deviation of luma, 0..1.", False),
        Column("colourfulness", pa.float32(), "Hasler and Suesstrunk's colourfulness (0 for gray).", False),
        Column("noise_sigma", pa.float32(), "Estimated noise standard deviation, in 0..255 units.", False),
        Column("sharpness", pa.float32(), "Variance of the Laplacian at the analysis size.", False),
        Column("entropy", pa.float32(), "Shannon entropy of the luma histogram, in bits.", False),
        Column("jpeg_quality", pa.int16(), "Quality (1..100) estimated from the JPEG quantization tables; "
                                           "null for other formats."),
        Column("analysis_width", pa.int32(), "Width of the reduced image the metrics were computed on.", False),
        Column("analysis_height", pa.int32(), "Height of the reduced image the metrics were computed on.", False),
        Column("phash", pa.uint64(), "64-bit perceptual (DCT) hash of the luma.", False),
        Column("dhash", pa.uint64(), "64-bit difference hash of the luma.", False),
        Column("pixel_hash", pa.string(), "SHA-256 of the decoded pixels: equal means identical pixels.", False),
        Column("quality_version", pa.string(), "Version of the metrics and thresholds that produced the row.", False),
    ),
)

DUPLICATES = TableDefinition(
    name="duplicates",
    description="One row per image that belongs to a duplicate group (two or more images showing the same picture), "
                "across all batches.",
    partitioned_by_batch=False,
    written_by="image_duplicates",
    columns=(
        Column("image_id", pa.string(), "The image.", False),
        Column("group_id", pa.string(), "The duplicate group; every member shares it.", False),
        Column("kind", pa.string(), "`exact` (identical pixels to another member) or `near` (the same picture "
                                    "after resize, re-compression, crop, flip, brightness or colour change; found by "
                                    "perceptual hashes or by embedding distance).", False),
        Column("keep", pa.bool_(), "The one member per group to keep (largest, then sharpest).", False),
        Column("nearest_distance", pa.int32(), "Smallest perceptual-hash Hamming distance to another member.", False),
    ),
)

DUPLICATE_PAIRS = TableDefinition(
    name="duplicate_pairs",
    description="Every duplicate pair found so far: the memory that lets a new batch be compared only against the "
                "catalog, never all pairs again.",
    partitioned_by_batch=False,
    written_by="image_duplicates",
    columns=(
        Column("image_id_a", pa.string(), "One image.", False),
        Column("image_id_b", pa.string(), "The other image.", False),
        Column("kind", pa.string(), "`exact` or `near`.", False),
        Column("distance", pa.int32(), "Perceptual-hash (phash) Hamming distance (0 for exact).", False),
        Column("found_by", pa.string(), "`hash` (pixel or perceptual hashes) or `embedding` (embedding distance, "
                                        "for flips and crops the hashes miss).", False),
        Column("embedding_distance", pa.float32(), "Cosine distance of the embeddings, for pairs found by "
                                                   "embedding; empty for pairs found by hash.", True),
    ),
)

EMBEDDINGS = TableDefinition(
    name="embeddings",
    description="One row per image: its position in the embedding space that curation, search and drift use.",
    partitioned_by_batch=True,
    written_by="image_embeddings",
    columns=(
        Column("image_id", pa.string(), "The image.", False),
        Column("batch_id", pa.string(), "The batch that brought it.", False),
        Column("vector", pa.list_(pa.float32()), "The embedding, L2-normalised (cosine similarity = dot product).",
               False),
        Column("embedder", pa.string(), "Which embedder made it (`patch-kmeans` or `onnx:<model>`).", False),
        Column("embedder_version", pa.string(), "Version of the embedder's parameters and preprocessing.", False),
    ),
)

SCENARIOS = TableDefinition(
    name="scenarios",
    description="One row per image: the scenario (cluster in embedding space) it belongs to, and its place on "
                "the 2-D map of the catalog.",
    partitioned_by_batch=False,
    written_by="scenarios",
    columns=(
        Column("image_id", pa.string(), "The image.", False),
        Column("scenario", pa.int32(), "Scenario number (0 is the largest).", False),
        Column("distance", pa.float32(), "Cosine distance to the scenario's centre (0 = most typical).", False),
        Column("map_x", pa.float32(), "First coordinate on the 2-D map of the catalog.", False),
        Column("map_y", pa.float32(), "Second coordinate on the 2-D map of the catalog.", False),
    ),
)

CURATED = TableDefinition(
    name="curated",
    description="The current curated dataset version: which images, in which split, and why each was selected.",
    partitioned_by_batch=False,
    written_by="curated_dataset",
    columns=(
        Column("image_id", pa.string(), "The image (its sha256 is the id).", False),
        Column("uri", pa.string(), "Where its bytes are.", False),
        Column("label", pa.string(), "Its label where known."),
        Column("scenario", pa.int32(), "Its scenario where known."),
        Column("split", pa.string(), "`train`, `val` or `test`; no duplicate group or near-neighbour cluster is "
                                     "spread across splits.", False),
        Column("snapshot_id", pa.string(), "The content-addressed snapshot this version is (same inputs, same id).",
               False),
        Column("selection_reason", pa.string(), "Why the image was selected.", False),
    ),
)

TABLES: dict[str, TableDefinition] = {table.name: table for table in
                                      (IMAGES, QUARANTINE, OBJECTS, QUALITY, DUPLICATES, DUPLICATE_PAIRS,
                                       EMBEDDINGS, SCENARIOS, CURATED)}


def table_definition(name: str) -> TableDefinition:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"no catalog table {name!r}; known tables: {', '.join(sorted(TABLES))}") from None


def render_markdown() -> str:
    """The generated part of docs/data-model.md (a test keeps the file in step with the code)."""
    lines = []
    for table in TABLES.values():
        layout = ("one Parquet file per batch: `catalog/{0}/<batch_id>.parquet`" if table.partitioned_by_batch
                  else "one Parquet file: `catalog/{0}/all.parquet`").format(table.name)
        lines += [f"### `{table.name}`", "", table.description, "",
                  f"Written by `{table.written_by}`; {layout}.", "",
                  "| column | type | nullable | meaning |", "|---|---|---|---|"]
        lines += [f"| `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | {c.description} |" for c in table.columns]
        lines.append("")
    lines += ["### Quarantine reasons", "", "| reason | meaning |", "|---|---|"]
    lines += [f"| `{reason}` | {text} |" for reason, text in QUARANTINE_REASONS.items()]
    lines += ["", "### Object outcomes", "", "| outcome | meaning |", "|---|---|"]
    lines += [f"| `{outcome}` | {text} |" for outcome, text in OBJECT_OUTCOMES.items()]
    return "\n".join(lines) + "\n"
