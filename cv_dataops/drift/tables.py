"""The tables the drift report writes: `drift` (every test), `drift_summary` (one decision per batch) and
`drift_atypicality` (how far each image of the batch is from the reference); and `data_health`, one row per batch
of the rates a team watches over time."""

import pyarrow as pa

from cv_dataops.core.schema import Column, TableDefinition
from cv_dataops.quality.issues import issue_types

# How a batch's drift is graded; the asset check maps small to WARN and large to ERROR.
SEVERITIES: dict[str, str] = {
    "none": "No test drifted at the configured alpha (or there is no reference yet).",
    "small": "At least one test drifted, none with a large effect (asset check WARN).",
    "large": "At least one drifted test has a large effect (asset check ERROR, webhook alert).",
}

DRIFT = TableDefinition(
    name="drift",
    description="One row per drift test of a batch against its reference: the statistic, p-value and effect size, "
                "and whether the test drifted after the batch-wide multiple-testing correction.",
    partitioned_by_batch=True,
    written_by="drift_report",
    columns=(
        Column("batch_id", pa.string(), "The batch tested.", False),
        Column("reference_id", pa.string(), "What it was compared with (a snapshot id, or `batches:<first>..<last>`).",
               False),
        Column("test", pa.string(), "The test: ks, chi_squared, mmd, domain_classifier, fisher (novel share).", False),
        Column("feature", pa.string(), "What was tested: an image property, `embedding`, `scenario_shares`, "
                                       "`novel_share`, `predicted_label` or `confidence`.", False),
        Column("statistic", pa.float64(), "The test's statistic (KS D, chi-squared, MMD^2, AUC, share)."),
        Column("p_value", pa.float64(), "The test's own p-value; null when the test could not run."),
        Column("effect_size", pa.float64(), "KS D, total variation distance, domain-classifier AUC or increase in "
                                            "novel share (see the drift README for the scales)."),
        Column("drifted", pa.bool_(), "Rejected by weighted Holm over every test of the batch at alpha.", False),
    ),
)

DRIFT_SUMMARY = TableDefinition(
    name="drift_summary",
    description="One row per batch: whether it drifted (false alarms kept at alpha across all its tests), how "
                "badly, and why.",
    partitioned_by_batch=True,
    written_by="drift_report",
    columns=(
        Column("batch_id", pa.string(), "The batch tested.", False),
        Column("reference_id", pa.string(), "What it was compared with; null when there was no reference yet."),
        Column("drifted", pa.bool_(), "Whether any test drifted.", False),
        Column("severity", pa.string(), "One of: " + ", ".join(SEVERITIES) + ".", False),
        Column("top_cause", pa.string(), "The first cause in words, `unknown` when the embeddings drifted and no "
                                         "property or scenario explains it; null when nothing drifted."),
        Column("causes", pa.string(), "Every cause in words, most important first, one per line."),
        Column("report_uri", pa.string(), "The self-contained HTML report of the batch."),
        Column("estimated_accuracy", pa.float64(), "The promoted label model's estimated accuracy on the batch "
                                                   "(average thresholded confidence); null without a model."),
        Column("reference_accuracy", pa.float64(), "Its accuracy on the reference images it never trained on "
                                                   "(the frozen holdout), what the estimate is calibrated to."),
    ),
)

DRIFT_ATYPICALITY = TableDefinition(
    name="drift_atypicality",
    description="One row per image of a tested batch: how unlike the reference it is, ranked (1 = most atypical); "
                "the drift sensor puts the first ranks first in the review queue.",
    partitioned_by_batch=True,
    written_by="drift_report",
    columns=(
        Column("batch_id", pa.string(), "The batch.", False),
        Column("image_id", pa.string(), "The image.", False),
        Column("atypicality", pa.float64(), "0..1: the larger of the two parts below that could be measured.", False),
        Column("embedding_atypicality", pa.float64(), "Share of reference images whose own nearest reference "
                                                      "neighbour is closer than this image's (1 = farther than "
                                                      "every reference image is from its neighbours)."),
        Column("property_atypicality", pa.float64(), "1 - the two-sided tail share of its most extreme image "
                                                     "property among the reference's values."),
        Column("nearest_reference_distance", pa.float64(), "Cosine distance to the nearest reference image."),
        Column("rank", pa.int32(), "1 = most atypical; ties by the score's parts, then by image id.", False),
    ),
)


def _issue_rate_columns() -> tuple[Column, ...]:
    return tuple(Column(f"{issue.name}_rate", pa.float64(), f"Share of the batch's measured images flagged "
                                                            f"{issue.name}.") for issue in issue_types())


DATA_HEALTH = TableDefinition(
    name="data_health",
    description="One row per batch, in landing order: quarantine and quality-issue rates, drift, label errors and "
                "the label model's estimated accuracy, so a trend shows where it starts (the asset plots them).",
    partitioned_by_batch=False,
    written_by="data_health",
    columns=(
        Column("batch_id", pa.string(), "The batch.", False),
        Column("position", pa.int32(), "1 = the first batch landed.", False),
        Column("images", pa.int64(), "Images the batch brought into the catalog.", False),
        Column("quarantined", pa.int64(), "Objects of the batch refused at ingestion.", False),
        Column("quarantine_rate", pa.float64(), "quarantined / (images + quarantined); null for an empty batch."),
        Column("measured", pa.int64(), "Images with a quality row.", False),
        Column("unusable_rate", pa.float64(), "Share of measured images no model should train on."),
        Column("flagged_rate", pa.float64(), "Share of measured images with any quality issue flagged."),
        *_issue_rate_columns(),
        Column("drift_severity", pa.string(), "none, small or large; null when no drift report was written."),
        Column("drift_classifier_auc", pa.float64(), "The domain classifier's AUC against the reference (0.5 = "
                                                     "indistinguishable): one scale-free drift score."),
        Column("largest_property_shift", pa.float64(), "The largest KS D among the image properties."),
        Column("largest_property", pa.string(), "Which property that was."),
        Column("label_error_rate", pa.float64(), "Share of the batch's audited labels flagged as probable errors."),
        Column("estimated_accuracy", pa.float64(), "The promoted label model's estimated accuracy on the batch."),
    ),
)
