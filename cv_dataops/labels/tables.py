"""The tables the labels domain writes: `labels` (every label event), `audited_labels` and `label_issues`."""

import pyarrow as pa

from cv_dataops.core.schema import TIMESTAMP, Column, TableDefinition

# Where a label event came from: a closed set, so the audit's precedence and dashboards can rely on it.
LABEL_SOURCES: dict[str, str] = {
    "landing": "Given at landing: the ImageFolder folder name or the landing zone's `labels.csv` (human).",
    "import": "A label file a team already has, imported: CSV, COCO JSON or a Label Studio export (human).",
    "review": "A reviewer's decision: a Label Studio export or CSV dropped into `reviews/` under the data root.",
    "auto": "The promoted label model's prediction, accepted above its threshold (`model_version` says which).",
}

# Why an audited label is what it is; see cv_dataops.labels.audit for the rules.
AUDIT_STATUSES: dict[str, str] = {
    "human": "A human label (landing or import) that every human source agrees on and no review contradicts.",
    "reviewed": "Decided by review: every review vote agrees, either with the human label (confirming it) or, "
                "for an image without a human label, with each other.",
    "auto_accepted": "No human or review label: the label model's accepted prediction.",
    "disputed": "Humans disagree (human sources with each other, reviewers with each other, or a review with the "
                "human label): the label shown is the rule's pick; `reason` and `votes` say who said what.",
}

LABELS = TableDefinition(
    name="labels",
    description="Every label event, append-only: nothing is overwritten in place. Each append is a new version "
                "(`labels_version`); reading as of a version gives the table as it was then.",
    partitioned_by_batch=True,  # one file per appended version, named by the version (see cv_dataops.labels.store)
    written_by="labels",
    columns=(
        Column("event_id", pa.string(), "Digest of the event's source, origin and content: the same event always "
                                        "gets the same id.", False),
        Column("image_id", pa.string(), "The image (its sha256 is the id).", False),
        Column("label", pa.string(), "The class, as the taxonomy spells it (aliases resolved).", False),
        Column("source", pa.string(), "One of: " + ", ".join(LABEL_SOURCES) + ".", False),
        Column("confidence", pa.float64(), "The model's probability for `auto`; the file's own confidence column "
                                           "for imports, where given."),
        Column("model_version", pa.string(), "The label model version that made an `auto` label."),
        Column("annotator", pa.string(), "Who gave the label, where the source says (CSV column, Label Studio "
                                         "`completed_by`)."),
        Column("at", TIMESTAMP, "When the label was given: the source's own time (Label Studio `updated_at`, the "
                                "landing batch's ingestion), else when it was recorded.", False),
        Column("origin", pa.string(), "Where exactly: file and line, or file, task and annotation id.", False),
        Column("origin_file", pa.string(), "The file (or landing zone) the event came from.", False),
        Column("source_digest", pa.string(), "Hex SHA-256 of the source file's bytes: appending the same file "
                                             "again adds nothing.", False),
        Column("labels_version", pa.int64(), "The version of `labels` that appended this event.", False),
        Column("recorded_at", TIMESTAMP, "When the event was appended.", False),
        Column("extra", pa.string(), "JSON carried through unchanged and not interpreted (e.g. COCO boxes)."),
    ),
)

AUDITED_LABELS = TableDefinition(
    name="audited_labels",
    description="The current best label per image and why, from `labels` as of one version: human beats review "
                "beats auto, with deterministic votes for conflicting labels.",
    partitioned_by_batch=False,
    written_by="audited_labels",
    columns=(
        Column("image_id", pa.string(), "The image.", False),
        Column("label", pa.string(), "The audited label.", False),
        Column("status", pa.string(), "One of: " + ", ".join(AUDIT_STATUSES) + ".", False),
        Column("source", pa.string(), "The source of the event that decided the label.", False),
        Column("reason", pa.string(), "Why, in words (who agreed, who disagreed, which rule decided).", False),
        Column("votes", pa.string(), "The deciding tier's votes, e.g. `cat: 2, dog: 1` (one vote per annotator, "
                                     "their latest)."),
        Column("annotators", pa.string(), "Who voted for the label, comma-separated."),
        Column("human_label", pa.string(), "The human sources' pick, where there is one."),
        Column("review_label", pa.string(), "The reviewers' pick, where there is one."),
        Column("confidence", pa.float64(), "The deciding event's confidence, where given (always for `auto`)."),
        Column("model_version", pa.string(), "The label model version, for `auto_accepted`."),
        Column("in_taxonomy", pa.bool_(), "Whether the label is one of the taxonomy's classes (always true for an "
                                          "open taxonomy).", False),
        Column("event_id", pa.string(), "The deciding event in `labels`.", False),
        Column("decided_at", TIMESTAMP, "The deciding event's `at`.", False),
        Column("labels_version", pa.int64(), "The version of `labels` audited.", False),
    ),
)

AUTO_LABEL_DECISIONS = TableDefinition(
    name="auto_label_decisions",
    description="The latest auto_labels run's decision for every curated image without a human or review label: "
                "accepted as an `auto` label at or above the threshold, or sent to review (the review queue's "
                "uncertain auto-labels).",
    partitioned_by_batch=False,
    written_by="auto_labels",
    columns=(
        Column("image_id", pa.string(), "The image.", False),
        Column("label", pa.string(), "The promoted model's label for it.", False),
        Column("confidence", pa.float64(), "The model's probability of that label.", False),
        Column("decision", pa.string(), "`auto` (accepted: a `labels` row with source auto) or `review`.", False),
        Column("reason", pa.string(), "Why, against the acceptance threshold, in words."),
        Column("model_version", pa.string(), "The label model version that decided.", False),
    ),
)

LABEL_ISSUES = TableDefinition(
    name="label_issues",
    description="Audited labels that are probably wrong, ranked: the most likely wrong first.",
    partitioned_by_batch=False,
    written_by="label_issues",
    columns=(
        Column("image_id", pa.string(), "The image.", False),
        Column("given_label", pa.string(), "Its audited label.", False),
        Column("suggested_label", pa.string(), "The label the evidence suggests instead."),
        Column("score", pa.float64(), "Label quality: lower = more likely wrong.", False),
        Column("rank", pa.int64(), "1 = the most likely wrong.", False),
        Column("is_issue", pa.bool_(), "Whether it is flagged as a probable label error.", False),
        Column("method", pa.string(), "How the score was computed."),
        Column("detail", pa.string(), "What the method saw, in words."),
        Column("labels_version", pa.int64(), "The version of `labels` the audited labels came from."),
        Column("model_version", pa.string(), "The label model version whose probabilities were used."),
    ),
)
