"""The table the quality stage writes: `quality`."""

import pyarrow as pa

from cv_dataops.core.schema import Column, TableDefinition
from cv_dataops.quality.issues import issue_types


def _issue_columns() -> tuple[Column, ...]:
    """A score and a flag per registered issue type, in registration order."""
    columns: list[Column] = []
    for issue in issue_types():
        columns.append(Column(f"{issue.name}_score", pa.float32(), f"0..1, lower is worse: {issue.meaning}.", False))
        columns.append(Column(f"is_{issue.name}", pa.bool_(), f"Flagged (worth a look): {issue.name}_score is below "
                                                             "its threshold.", False))
    return tuple(columns)


_DEFAULT_UNUSABLE = ", ".join(issue.name for issue in issue_types() if issue.unusable)

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
        Column("is_unusable", pa.bool_(), "No model should train on it: the score of an issue type that can make "
                                          f"an image unusable (by default {_DEFAULT_UNUSABLE}) is below that "
                                          "type's unusable threshold, far stricter than its flag (near-black, "
                                          "blown out, blank, blurred beyond recognition). A flagged image (a night "
                                          "scene is dark) is not unusable.", False),
        Column("unusable_reason", pa.string(), "The issue types that make the image unusable, joined by ','; null "
                                               "when it is usable."),
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
